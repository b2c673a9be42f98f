"""``connectors backup | backups | restore``: the state databases' backups (issue 14, DESIGN §6).

``backup PIPELINE [--force]`` runs the 24-hour check (``--force`` uploads every database) and prints its report,
exit 1 when an upload failed; ``backups PIPELINE`` lists the pipeline's backups (keys, sizes, ages); ``restore
PIPELINE TABLE CONNECTOR --from-pipeline ID --from-connector ID`` restores a connector from the backup of another
pipeline's connector onto its own ids, moving the sink's mark with it, under the pipeline's procedure lock.

The answers come from the procedures ``Lifecycle.backup`` and ``Lifecycle.restore``, which the Dagster jobs
``{p}__backup`` and ``{p}__restore`` call too.
"""

from __future__ import annotations

from typing import Any

import click

from connector_cli.connector import checked_connector
from connector_cli.context import ClientsOnFirstUse, procedure, read_pipeline
from connector_cli.output import FORMAT_OPTION, echo_stats, format_table
from connector_core.backups import list_backups, open_store
from connector_core.lifecycle import RestoreSource
from connector_core.pipeline import Pipeline


@click.command("backup")
@click.argument("pipeline_name", metavar="PIPELINE")
@click.option("--force", is_flag=True, help="Upload every state database, however fresh its backup.")
def backup(pipeline_name: str, force: bool) -> None:
    """Back up the state databases whose backup is missing or older than max_age_hours (24); exit 1 on a failure."""
    procedure(pipeline_name, lambda lc: lc.backup(force))


def _backups_of(pipeline: Pipeline) -> dict[str, Any]:
    store = open_store(pipeline, ClientsOnFirstUse(pipeline))
    return {"pipeline": pipeline.name, "store": store.description, "backups": list_backups(pipeline, store)}


def _backups_text(listing: dict[str, Any]) -> str:
    rows = [[b["key"], b["database"], b["bytes"], f"{b['age_hours']:.1f}", b["taken_at"]] for b in listing["backups"]]
    table = format_table(["KEY", "DATABASE", "BYTES", "AGE_HOURS", "TAKEN_AT"], rows) if rows else "no backups"
    return f"backups of {listing['pipeline']} in {listing['store']}:\n{table}"


@click.command("backups")
@click.argument("pipeline_name", metavar="PIPELINE")
@FORMAT_OPTION
def backups(pipeline_name: str, output_format: str) -> None:
    """List the pipeline's backups: keys, databases, sizes, ages (one listing of its prefix)."""
    echo_stats(read_pipeline(pipeline_name, _backups_of), output_format, _backups_text)


@click.command("restore")
@click.argument("pipeline_name", metavar="PIPELINE")
@click.argument("table")
@click.argument("connector")
@click.option("--from-pipeline", "from_pipeline", required=True, metavar="ID", help="The old pipeline id.")
@click.option("--from-connector", "from_connector", required=True, metavar="ID", help="The old connector id.")
@click.option("--from-org", "from_org", default=None, metavar="ORG", help="The old org_slug (default: the pipeline's).")
@click.option("--force", is_flag=True, help="Replace the sink mark the connector already has of its own.")
def restore(
    pipeline_name: str,
    table: str,
    connector: str,
    from_pipeline: str,
    from_connector: str,
    from_org: str | None,
    force: bool,
) -> None:
    """Restore a Paused connector from another pipeline's/connector's backup onto its own ids; it stays Paused."""
    checked_connector(pipeline_name, table, connector)

    source = RestoreSource(from_pipeline, from_connector, from_org)
    procedure(pipeline_name, lambda lc: lc.restore(table, connector, source, force))
