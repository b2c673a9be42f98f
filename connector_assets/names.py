"""Every Dagster name of a pipeline's definitions, made here and nowhere else (DESIGN §5, "Names").

Each name carries the pipeline, so two pipelines (or two component instances) merge without clashes. The stable
ones (users script against them): jobs ``{p}__{procedure}`` with one op ``{p}__{procedure}_op``, the asset job
``{p}__ingest``, the sensor ``{p}__orchestration``, the schedule ``{p}__backups``, resource keys
``{p}__{connection}`` and ``{p}__sink``, run tags ``connectors/pipeline`` and ``connectors/table``.
"""

from __future__ import annotations

import re

#: Run tag naming the pipeline of a run (every run this project launches carries it).
PIPELINE_TAG = "connectors/pipeline"
#: Run tag naming the table a sensor-requested run ingests.
TABLE_TAG = "connectors/table"
#: Run and op tag naming the lifecycle procedure of a job.
PROCEDURE_TAG = "connectors/procedure"
#: Run tag set to ``failed`` when the backup check at the start of an ingest run could not upload (the run goes on).
BACKUP_CHECK_TAG = "connectors/backup_check"
#: Materialization metadata carrying that failed check's message.
BACKUP_WARNING_KEY = "connectors/backup_warning"
#: Asset spec metadata naming the pipeline and the table an asset stands for (the sensor and the execution
#: resource find a table's asset key through them, whatever key the translator chose).
PIPELINE_METADATA_KEY = "connectors/pipeline"
TABLE_METADATA_KEY = "connectors/table"


def dagster_name(name: str) -> str:
    """A pipeline (or table, connection) name as a valid Dagster name (``-`` becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _pipeline_name(pipeline: str, suffix: str) -> str:
    return f"{dagster_name(pipeline)}__{suffix}"


def connection_resource_key(pipeline: str, connection: str) -> str:
    """``{pipeline}__{connection}``: the resource of one connection."""
    return _pipeline_name(pipeline, dagster_name(connection))


def sink_resource_key(pipeline: str) -> str:
    """``{pipeline}__sink``: the DuckDB sink resource."""
    return _pipeline_name(pipeline, "sink")


def connectors_resource_key(pipeline: str) -> str:
    """``{pipeline}__connectors``: the execution resource (``ConnectorsResource``) of a pipeline."""
    return _pipeline_name(pipeline, "connectors")


def tables_asset_name(pipeline: str) -> str:
    """``{pipeline}__tables``: the ``multi_asset`` of a pipeline's tables."""
    return _pipeline_name(pipeline, "tables")


def ingest_job_name(pipeline: str) -> str:
    """``{pipeline}__ingest``: the asset job over every table of a pipeline (the sensor's target)."""
    return _pipeline_name(pipeline, "ingest")


def lifecycle_job_name(pipeline: str, procedure: str) -> str:
    """``{pipeline}__{procedure}``, e.g. ``example__wizard_connect``."""
    return _pipeline_name(pipeline, procedure)


def lifecycle_op_name(pipeline: str, procedure: str) -> str:
    """``{pipeline}__{procedure}_op``: the one op of a lifecycle job (an op may not share its job's name)."""
    return f"{lifecycle_job_name(pipeline, procedure)}_op"


def orchestration_sensor_name(pipeline: str) -> str:
    """``{pipeline}__orchestration``."""
    return _pipeline_name(pipeline, "orchestration")


def backups_schedule_name(pipeline: str) -> str:
    """``{pipeline}__backups``: the schedule backing up the pipeline's state databases (DESIGN §6)."""
    return _pipeline_name(pipeline, "backups")


def group_name(pipeline: str) -> str:
    """The asset group of a pipeline's tables."""
    return dagster_name(pipeline)


def pipeline_tags(pipeline: str, **tags: str) -> dict[str, str]:
    """``{connectors/pipeline: pipeline}`` plus ``connectors/<name>: value`` for each keyword, e.g. ``table=``."""
    return {PIPELINE_TAG: pipeline, **{f"connectors/{name}": value for name, value in tags.items()}}
