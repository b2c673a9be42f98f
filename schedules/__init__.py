"""The backup schedule of a pipeline (DESIGN §6, issue 14): ``{pipeline}__backups``, hourly, running by default.

Each tick only requests a run of the job ``{pipeline}__backup``: the tick itself reads and writes nothing (no state
database, no store); the run applies the 24-hour rule (``connector_core.backups.run_backup_check``), so an hourly
schedule uploads each database about once every ``max_age_hours``. Backups never happen while the definitions load
or on a sensor tick.
"""

from __future__ import annotations

import dagster as dg

from connector_assets.names import backups_schedule_name, pipeline_tags

__all__ = ["BACKUP_CRON", "build_backup_schedule"]

#: Every hour, on the hour.
BACKUP_CRON = "0 * * * *"


def build_backup_schedule(pipeline_name: str, backup_job: dg.JobDefinition) -> dg.ScheduleDefinition:
    """``{pipeline}__backups``: launches ``backup_job`` (``{pipeline}__backup``, its default config: the 24-hour
    rule) every hour; running by default."""
    return dg.ScheduleDefinition(
        name=backups_schedule_name(pipeline_name),
        cron_schedule=BACKUP_CRON,
        job=backup_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        tags=pipeline_tags(pipeline_name, procedure="backup"),
        description=f"Back up the state databases of pipeline {pipeline_name} whose backup is missing or older than "
        "max_age_hours (the job checks; an hourly tick uploads each about once a day by default).",
    )
