"""One history: what the command line does is recorded in the Dagster instance when one is configured.

With ``DAGSTER_HOME`` set, ``connectors run`` reports an ``AssetMaterialization`` for each table it ingested, under
the asset key the project's translator gives the table (:func:`connector_assets.build_connector_asset_specs`, the
default ``ConnectorsTranslator``) and with the metadata a Dagster ingest run writes
(:func:`connector_assets.metadata.table_materialization_metadata`: ``dagster/row_count``, ``dagster/table_name``,
``dagster/column_schema``, records, records/s, parse errors, buffered records, a table of the connectors, stats,
commits, why it stopped), plus ``connectors/source: cli``; then each completed UTC hour of every table's statistics
not observed yet becomes an ``AssetObservation`` (:class:`connector_assets.metadata.HourlyObservations`, as in a
Dagster run), and each ingested table's asset checks are reported as ``AssetCheckEvaluation``s
(:func:`connector_assets.checks.table_check_evaluations`). A lifecycle procedure that may change something (``setup``, the wizard steps,
``pipeline pause|resume|recover|update-*``, ``connector ... start|pause``, ``backup``, ``restore``; not ``status``)
records an ``AssetObservation`` on each of the pipeline's tables (only the connector's table for a ``connector``
command) with ``connectors/procedure``, ``connectors/response_code``, ``connectors/message`` and
``connectors/command``: the asset's Events tab in the UI then shows CLI work beside the Dagster runs. Both go
through ``DagsterInstance.report_runless_asset_event``.

Without ``DAGSTER_HOME`` nothing is recorded and Dagster is not imported. A failure to record (an unreadable
instance, a missing folder) is one warning on stderr; the command's answer and exit code stay what they were.

``connectors dagster-home [DIR]`` writes a Dagster home for the demo (``DIR/dagster.yaml``: local SQLite storage
under ``DIR``, telemetry off) when it holds no ``dagster.yaml`` yet; an existing one is kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from connector_core.ingest import IngestSession
    from connector_core.lifecycle import Response
    from connector_core.orchestration import RunSummary
    from connector_core.pipeline import Pipeline
    from connector_core.project import Project

#: The variable naming the Dagster instance's folder.
DAGSTER_HOME_ENV = "DAGSTER_HOME"
#: The demo's Dagster home, relative to the working folder (git-ignored).
DEFAULT_DAGSTER_HOME = ".dagster_home"
#: Metadata naming where an event recorded by the command line comes from.
SOURCE_KEY = "connectors/source"
#: Procedures that only read: they record nothing.
READ_PROCEDURES = frozenset({"status"})

#: The demo's ``dagster.yaml``: local SQLite storage in the home folder (Dagster's default layout) and no telemetry.
DAGSTER_YAML = """\
# Written by `connectors dagster-home`: local storage in this folder, no telemetry.
storage:
  sqlite:
    base_dir:
      env: DAGSTER_HOME
telemetry:
  enabled: false
"""


def recording_enabled() -> bool:
    """Whether a Dagster instance is configured (``DAGSTER_HOME`` set and not empty)."""
    return bool(os.environ.get(DAGSTER_HOME_ENV))


def warn(message: str) -> None:
    """A warning on stderr: recording never fails a command."""
    click.echo(f"warning: not recorded in the Dagster instance: {message}", err=True)


def _asset_keys(project: Project, pipeline_name: str) -> dict[str, Any]:
    """Table -> the translator's ``AssetSpec`` (imports Dagster)."""
    from connector_assets.names import TABLE_METADATA_KEY
    from connector_assets.translator import build_connector_asset_specs

    return {spec.metadata[TABLE_METADATA_KEY]: spec for spec in build_connector_asset_specs(project, pipeline_name)}


def _report(events: list[Any]) -> None:
    """Report ``events`` to the instance of ``DAGSTER_HOME``."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        for event in events:
            instance.report_runless_asset_event(event)


def run_materializations(pipeline: Pipeline, session: IngestSession, summary: RunSummary) -> list[Any]:
    """One ``AssetMaterialization`` per table ``summary`` ingested, with a Dagster run's metadata; the session's
    sink must still be open (row counts, and the columns of a table the project file declares none of)."""
    import dagster as dg

    from connector_assets.metadata import table_materialization_metadata

    specs = _asset_keys(pipeline.project, pipeline.name)
    events = []
    for table in sorted(summary.totals.tables()):
        spec = specs[table]
        try:
            row_count = session.sink.row_count(table)
            schema = None if "dagster/column_schema" in spec.metadata else session.sink.table_schema(table)
        finally:
            session.release_sink()
        metadata = table_materialization_metadata(
            pipeline,
            summary.totals.table_report(table, row_count),
            spec,
            schema,
            commits=summary.totals.commits.get(table, 0),
            stopped_reason=summary.stopped_reason or "stopped",
            backup_warning=summary.backup_warning,
        )
        metadata[SOURCE_KEY] = "cli"
        events.append(dg.AssetMaterialization(asset_key=spec.key, metadata=metadata))
    return events


def record_run(pipeline: Pipeline, session: IngestSession, summary: RunSummary) -> None:
    """Record what ``connectors run`` ingested (when ``DAGSTER_HOME`` is set): a materialization per table it
    ingested, then the completed hours not observed yet of every table of the pipeline
    (:class:`connector_assets.metadata.HourlyObservations`, the rule of a Dagster run) and the evaluation of each
    ingested table's asset checks; a failure is a warning."""
    if not recording_enabled():
        return
    try:
        import dagster as dg

        from connector_assets.checks import table_check_evaluations
        from connector_assets.metadata import HourlyObservations

        events = run_materializations(pipeline, session, summary) if summary.totals.tables() else []
        keys = {table: spec.key for table, spec in _asset_keys(pipeline.project, pipeline.name).items()}
        for table in sorted(summary.totals.tables()):
            report = summary.totals.table_report(table, 0)
            counts = (report.records, sum(batch.parse_errors for batch in report.batches))
            events += table_check_evaluations(pipeline, session.clients, table, keys[table], counts)
        with dg.DagsterInstance.get() as instance:
            for event in events:
                instance.report_runless_asset_event(event)
            HourlyObservations(instance, pipeline, keys, {SOURCE_KEY: "cli"}).report()
    except Exception as exc:
        warn(pipeline.redact(f"{type(exc).__name__}: {exc}"))


def record_procedure(
    project: Project,
    pipeline_name: str,
    procedure: list[str],
    command: list[str],
    response: Response,
    tables: Iterable[str] | None = None,
    redact: Callable[[str], str] = str,
) -> None:
    """Record a lifecycle procedure run from the command line (``procedure``: its command names, e.g. ``pipeline
    pause``; ``command``: its words after ``connectors``) as an
    ``AssetObservation`` on each of ``tables`` (default: every table of the pipeline), when ``DAGSTER_HOME`` is
    set and the procedure may change something; a failure is a warning."""
    if not recording_enabled() or not procedure or procedure[-1] in READ_PROCEDURES:
        return
    try:
        import dagster as dg

        specs = _asset_keys(project, pipeline_name)
        chosen = list(specs) if tables is None else [table for table in tables if table in specs]
        metadata = {
            "connectors/procedure": " ".join(procedure),
            "connectors/command": "connectors " + " ".join(command),
            "connectors/response_code": str(response.response_code),
            "connectors/message": dg.MetadataValue.text(str(response.message or "")),
            SOURCE_KEY: "cli",
        }
        _report([dg.AssetObservation(asset_key=specs[table].key, metadata=metadata) for table in chosen])
    except Exception as exc:
        warn(redact(f"{type(exc).__name__}: {exc}"))


def ensure_dagster_home(folder: str | os.PathLike[str]) -> tuple[Path, bool]:
    """Create ``folder`` and its ``dagster.yaml`` (:data:`DAGSTER_YAML`) when it has none; the absolute folder, and
    whether the file was written."""
    home = Path(folder).expanduser().absolute()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if config.exists():
        return home, False
    config.write_text(DAGSTER_YAML)
    return home, True


@click.command("dagster-home")
@click.argument("folder", required=False, type=click.Path(file_okay=False, path_type=Path))
def dagster_home(folder: Path | None) -> None:
    """Write a Dagster home for the demo when it has no dagster.yaml (local storage, telemetry off); FOLDER
    defaults to $DAGSTER_HOME, else ./.dagster_home. Prints the folder."""
    chosen = folder or Path(os.environ.get(DAGSTER_HOME_ENV) or DEFAULT_DAGSTER_HOME)
    home, written = ensure_dagster_home(chosen)
    click.echo(f"{'wrote' if written else 'kept'} {home / 'dagster.yaml'}", err=True)
    click.echo(str(home))
