"""``connectors connector PIPELINE TABLE CONNECTOR ...``: start, pause or inspect one connector."""

from __future__ import annotations

import click

from connector_cli.context import pipeline_spec, procedure, read_pipeline, unknown_names_are_usage_errors
from connector_cli.output import AUTO_FORMAT_OPTION, chosen_format, echo_stats, format_connector_stats


@click.group("connector")
@click.argument("pipeline_name", metavar="PIPELINE")
@click.argument("table")
@click.argument("connector")
@click.pass_context
def connector_group(ctx: click.Context, pipeline_name: str, table: str, connector: str) -> None:
    """Start, pause or inspect one connector (TABLE CONNECTOR addresses it inside its pipeline)."""
    ctx.meta["pipeline"] = pipeline_name
    ctx.meta["connector"] = (table, connector)


def checked_connector(pipeline_name: str, table: str, name: str) -> None:
    """An unknown pipeline, table or connector is a usage error naming what exists."""
    spec = pipeline_spec(pipeline_name)
    with unknown_names_are_usage_errors():
        spec.connector(table, name)


def addressed_connector() -> tuple[str, str, str]:
    """``(pipeline, table, connector)`` of the running command; an unknown one is a usage error naming what exists."""
    meta = click.get_current_context().meta
    pipeline_name, (table, name) = meta["pipeline"], meta["connector"]
    checked_connector(pipeline_name, table, name)
    return pipeline_name, table, name


@connector_group.command("start")
def connector_start() -> None:
    """Set the connector Running (idempotent; clears a fatal error); it ingests while its pipeline is STARTED."""
    pipeline_name, table, name = addressed_connector()
    procedure(pipeline_name, lambda lc: lc.start_connector(table, name))


@connector_group.command("pause")
def connector_pause() -> None:
    """Set the connector Paused (idempotent)."""
    pipeline_name, table, name = addressed_connector()
    procedure(pipeline_name, lambda lc: lc.pause_connector(table, name))


@connector_group.command("stats")
@AUTO_FORMAT_OPTION
def connector_stats(output_format: str | None) -> None:
    """The connector's stats: metrics, last parse errors, fatal error (secrets masked); a readable summary on a
    terminal, the JSON object when piped or redirected (``--format`` chooses)."""
    pipeline_name, table, name = addressed_connector()
    stats = read_pipeline(pipeline_name, lambda pipeline: pipeline.stats(pipeline.connector(table, name)))
    echo_stats(stats, chosen_format(output_format), format_connector_stats)
