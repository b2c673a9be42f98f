"""``connectors pipeline PIPELINE ...``: status, stats and the lifecycle of one pipeline."""

from __future__ import annotations

from typing import Any

import click

from connector_cli.context import current_pipeline_name, pipeline_command_group, pipeline_spec, procedure, read_pipeline
from connector_cli.output import FORMAT_OPTION, echo_stats, format_pipeline_stats
from connector_cli.settings import SET_OPTION, parse_settings
from connector_core.pipeline import Pipeline

pipeline_group = pipeline_command_group("pipeline", "Status, stats and lifecycle of one pipeline.")


@pipeline_group.command("status")
def pipeline_status() -> None:
    """Print status, configurationStatus and every connector's state."""
    procedure(current_pipeline_name(), lambda lc: lc.status())


@pipeline_group.command("pause")
def pipeline_pause() -> None:
    """Pause the pipeline: no connector of it ingests until resume."""
    procedure(current_pipeline_name(), lambda lc: lc.pause())


@pipeline_group.command("resume")
def pipeline_resume() -> None:
    """Resume a paused pipeline."""
    procedure(current_pipeline_name(), lambda lc: lc.resume())


@pipeline_group.command("recover")
@click.option("--to", "to", required=True, metavar="STARTED|PAUSED", help="The status to recover to.")
def pipeline_recover(to: str) -> None:
    """Leave ERROR (or a stuck STARTING/PAUSING) for STARTED or PAUSED."""
    procedure(current_pipeline_name(), lambda lc: lc.recover(to.upper()))


@pipeline_group.command("update-connection")
@click.argument("connection")
@SET_OPTION
def pipeline_update_connection(connection: str, settings: tuple[str, ...]) -> None:
    """Store new settings of a connection (the pipeline must be PAUSED); secrets only as env:NAME."""
    values = parse_settings(settings)
    if not values:
        raise click.UsageError("give at least one --set KEY=VALUE")
    pipeline_name = current_pipeline_name()
    connections = pipeline_spec(pipeline_name).connections
    if connection not in connections:
        known = ", ".join(connections) or "none"
        raise click.UsageError(f"no connection {connection!r} in pipeline {pipeline_name}; connections: {known}")
    procedure(pipeline_name, lambda lc: lc.update_connection(connection, values))


@pipeline_group.command("update-warehouse")
@click.argument("warehouse")
def pipeline_update_warehouse(warehouse: str) -> None:
    """Load through another warehouse (the pipeline must be PAUSED)."""
    procedure(current_pipeline_name(), lambda lc: lc.update_warehouse(warehouse))


def pipeline_stats_of(pipeline: Pipeline) -> dict[str, Any]:
    """The pipeline's statuses, every connector's stats and the hourly statistics."""
    return {
        "pipeline": pipeline.name,
        "pipeline_id": pipeline.pipeline_id,
        "status": pipeline.state.status,
        "configurationStatus": pipeline.state.configuration_status,
        "connectors": [pipeline.stats(handle) for handle in pipeline.connectors()],
        "hourly_stats": pipeline.hourly_stats(),
    }


@pipeline_group.command("stats")
@FORMAT_OPTION
def pipeline_stats(output_format: str) -> None:
    """Every connector's stats and the pipeline's hourly statistics."""
    echo_stats(read_pipeline(current_pipeline_name(), pipeline_stats_of), output_format, format_pipeline_stats)
