"""``connectors``: the command line of DESIGN §7, a click front end over the same core functions as Dagster.

Every procedure prints its response JSON (``Response.as_dict()``) on stdout and exits 0 when it is OK, 1 otherwise.
Bad input never prints a traceback: a bad project file prints the :class:`ProjectFileError` message, an unknown
pipeline, table, connector or connection prints a usage error naming what exists (both exit 2), and an unexpected
exception inside a procedure answers ``{"response_code": "INTERNAL_ERROR", ...}`` (exit 1).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click

from connector_core.lifecycle import Lifecycle, Response
from connector_core.pipeline import ConnectorHandle, Pipeline
from connector_core.project import (
    DEFAULT_PROJECT_FILE,
    PROJECT_FILE_ENV,
    Project,
    ProjectFileError,
    load_project,
    parse_setting_value,
)
from connector_core.secrets import is_secret_key

INTERNAL_ERROR = "INTERNAL_ERROR"


# --------------------------------------------------------------------------------------------------- errors
class ProjectFileProblem(click.ClickException):
    """A project file that cannot be used: its message, exit code 2, no traceback."""

    exit_code = 2


# ------------------------------------------------------------------------------------------- --set values
def parse_value(text: str) -> Any:
    """A ``--set`` value (see ``connector_core.project.parse_setting_value``)."""
    try:
        return parse_setting_value(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def parse_settings(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``("key=value", ...)`` -> ``{key: value}``; a secret key must be given as ``key=env:NAME``."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--set")
        value = parse_value(text)
        if is_secret_key(key) and not isinstance(value, dict):
            raise click.BadParameter(
                f"{key} is a secret: never give its value on the command line; "
                f"write --set {key}=env:NAME and set the environment variable NAME",
                param_hint="--set",
            )
        values[key] = value
    return values


SET_OPTION = click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="A configuration value (repeatable): true/false, integers and decimals are parsed; "
    "env:NAME is a secret read from the environment variable NAME.",
)
FORMAT_OPTION = click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: a readable summary; json: the stats object.",
)


# ------------------------------------------------------------------------------------------------- context
class LazyClients:
    """The pipeline's ``ConnectionClients``, built from its Dagster resources on first use.

    Only commands that reach connections build them, and only when the procedure really asks for one, so a
    missing secret fails just the step that needs it (and is reported by that step, e.g. ``CONNECTION_FAILED``).
    """

    def __init__(self, pipeline: Pipeline):
        self._pipeline = pipeline
        self._clients: Any = None

    def _get(self) -> Any:
        if self._clients is None:
            from resources import build_clients  # imports Dagster: only when a connection is needed

            self._clients = build_clients(self._pipeline)
        return self._clients

    def kafka_settings(self, connection: str) -> dict[str, Any]:
        """librdkafka settings of a kafka connection."""
        return self._get().kafka_settings(connection)

    def postgres_connection(self, connection: str) -> contextlib.AbstractContextManager[Any]:
        """A psycopg connection of a postgres connection."""
        return self._get().postgres_connection(connection)

    def s3_client(self, connection: str | None) -> Any:
        """A boto3 S3 client of an s3 connection."""
        return self._get().s3_client(connection)

    def snowflake_connection(self, connection: str) -> contextlib.AbstractContextManager[Any]:
        """A snowflake connection of a snowflake connection."""
        return self._get().snowflake_connection(connection)

    def duckdb_connection(self) -> contextlib.AbstractContextManager[Any]:
        """A connection to the DuckDB sink."""
        return self._get().duckdb_connection()

    def test_connection(self, connection: str, settings: dict[str, Any] | None = None) -> None:
        """Reach a connection for real (``settings``: proposed values instead of the stored ones)."""
        if settings is None:
            self._get().test_connection(connection)
        else:
            self._get().test_connection(connection, settings)

    def __getattr__(self, name: str) -> Any:  # anything else ResourceClients offers
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._get(), name)


@dataclass
class CliState:
    """The global options, and the project loaded on first use."""

    project_file: Path | None
    state_dir: Path | None
    _project: Project | None = field(default=None, repr=False)

    def project(self) -> Project:
        """The project file (option, else ``$CONNECTORS_PROJECT_FILE``, else ``./connectors.yaml``)."""
        if self._project is None:
            try:
                self._project = load_project(self.project_file)
            except ProjectFileError as exc:
                raise ProjectFileProblem(str(exc)) from None
        return self._project


@contextlib.contextmanager
def opened(name: str) -> Iterator[Pipeline]:
    """Open a pipeline of the project (unknown name: a usage error naming the pipelines); close it on exit."""
    ctx = click.get_current_context()
    state: CliState = ctx.find_object(CliState)
    project = state.project()
    try:
        pipeline = Pipeline(project, name, state.state_dir)
    except LookupError as exc:
        raise click.UsageError(_lookup_message(exc), ctx) from None
    except Exception as exc:  # a state database that cannot be opened...
        _finish({"response_code": INTERNAL_ERROR, "message": f"cannot open pipeline {name}: {_describe(exc)}"})
    try:
        yield pipeline
    finally:
        pipeline.close()


def _lookup_message(exc: LookupError) -> str:
    return str(exc.args[0]) if exc.args else str(exc)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _dump(payload: Any) -> str:
    return json.dumps(payload, indent=2, default=str)


def _finish(payload: dict[str, Any], ok: bool | None = None) -> NoReturn:
    """Print a response JSON and exit: 0 when it is OK, 1 otherwise."""
    click.echo(_dump(payload))
    ok = payload.get("response_code") == "OK" if ok is None else ok
    raise click.exceptions.Exit(0 if ok else 1)


def respond(call: Callable[[], Response]) -> NoReturn:
    """Run a procedure and print its response; an unexpected exception becomes ``INTERNAL_ERROR``."""
    try:
        response = call()
        payload = response.as_dict()
    except Exception as exc:
        _finish({"response_code": INTERNAL_ERROR, "message": _describe(exc)})
    _finish(payload, response.ok)


def lifecycle(pipeline: Pipeline, needs_connections: bool = False) -> Lifecycle:
    """The pipeline's procedures; clients only for commands that reach connections."""
    return Lifecycle(pipeline, LazyClients(pipeline) if needs_connections else None)


def procedure(pipeline_name: str, call: Callable[[Lifecycle], Response], needs_connections: bool = False) -> None:
    """Open a pipeline, run one procedure on it, print the response and exit."""
    with opened(pipeline_name) as pipeline:
        respond(lambda: call(lifecycle(pipeline, needs_connections)))


# ------------------------------------------------------------------------------------------------------ cli
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--project-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"The project file (default: ${PROJECT_FILE_ENV}, else ./{DEFAULT_PROJECT_FILE}).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where state databases live (default: state_dir of the project file, else .connectors beside it).",
)
@click.pass_context
def cli(ctx: click.Context, project_file: Path | None, state_dir: Path | None) -> None:
    """Control connectors declared in connectors.yaml: lifecycle, wizard, stats and headless runs."""
    ctx.obj = CliState(project_file, state_dir)


# ------------------------------------------------------------------------------------------------ pipeline
@cli.group("pipeline")
@click.argument("pipeline_name", metavar="PIPELINE")
@click.pass_context
def pipeline_group(ctx: click.Context, pipeline_name: str) -> None:
    """Status, stats and lifecycle of one pipeline."""
    ctx.meta["pipeline"] = pipeline_name


def _pipeline_name() -> str:
    return click.get_current_context().meta["pipeline"]


@pipeline_group.command("status")
def pipeline_status() -> None:
    """Print status, configurationStatus and every connector's state."""
    procedure(_pipeline_name(), lambda lc: lc.status())


@pipeline_group.command("pause")
def pipeline_pause() -> None:
    """Pause the pipeline: no connector of it ingests until resume."""
    procedure(_pipeline_name(), lambda lc: lc.pause())


@pipeline_group.command("resume")
def pipeline_resume() -> None:
    """Resume a paused pipeline."""
    procedure(_pipeline_name(), lambda lc: lc.resume())


@pipeline_group.command("recover")
@click.option("--to", "to", required=True, metavar="STARTED|PAUSED", help="The status to recover to.")
def pipeline_recover(to: str) -> None:
    """Leave ERROR (or a stuck STARTING/PAUSING) for STARTED or PAUSED."""
    procedure(_pipeline_name(), lambda lc: lc.recover(to.upper()))


@pipeline_group.command("update-connection")
@click.argument("connection")
@SET_OPTION
def pipeline_update_connection(connection: str, settings: tuple[str, ...]) -> None:
    """Store new settings of a connection (the pipeline must be PAUSED); secrets as env:NAME."""
    values = parse_settings(settings)
    if not values:
        raise click.UsageError("give at least one --set KEY=VALUE")
    with opened(_pipeline_name()) as pipeline:
        if connection not in pipeline.spec.connections:
            known = ", ".join(pipeline.spec.connections) or "none"
            raise click.UsageError(f"no connection {connection!r} in pipeline {pipeline.name}; connections: {known}")
        respond(lambda: lifecycle(pipeline, needs_connections=True).update_connection(connection, values))


@pipeline_group.command("update-warehouse")
@click.argument("warehouse")
def pipeline_update_warehouse(warehouse: str) -> None:
    """Load through another warehouse (the pipeline must be PAUSED)."""
    procedure(_pipeline_name(), lambda lc: lc.update_warehouse(warehouse), needs_connections=True)


@pipeline_group.command("stats")
@FORMAT_OPTION
def pipeline_stats(output_format: str) -> None:
    """Every connector's stats and the pipeline's hourly statistics."""
    with opened(_pipeline_name()) as pipeline:
        stats = {
            "pipeline": pipeline.name,
            "pipeline_id": pipeline.pipeline_id,
            "status": pipeline.state.status,
            "configurationStatus": pipeline.state.configuration_status,
            "connectors": [pipeline.stats(handle) for handle in pipeline.connectors()],
            "hourly_stats": pipeline.hourly_stats(),
        }
    click.echo(_dump(stats) if output_format == "json" else format_pipeline_stats(stats))


# ----------------------------------------------------------------------------------------------- connector
@cli.group("connector")
@click.argument("pipeline_name", metavar="PIPELINE")
@click.argument("table")
@click.argument("connector")
@click.pass_context
def connector_group(ctx: click.Context, pipeline_name: str, table: str, connector: str) -> None:
    """Start, pause or inspect one connector (TABLE CONNECTOR addresses it inside its pipeline)."""
    ctx.meta["pipeline"] = pipeline_name
    ctx.meta["connector"] = (table, connector)


@contextlib.contextmanager
def opened_connector() -> Iterator[tuple[Pipeline, ConnectorHandle]]:
    """The addressed connector; an unknown table or connector is a usage error naming what exists."""
    ctx = click.get_current_context()
    table, name = ctx.meta["connector"]
    with opened(ctx.meta["pipeline"]) as pipeline:
        try:
            handle = pipeline.connector(table, name)
        except LookupError as exc:
            raise click.UsageError(_lookup_message(exc), ctx) from None
        yield pipeline, handle


@connector_group.command("start")
def connector_start() -> None:
    """Set the connector Running (idempotent); it ingests while its pipeline is STARTED."""
    with opened_connector() as (pipeline, handle):
        respond(lambda: lifecycle(pipeline).start_connector(handle.table, handle.spec.name))


@connector_group.command("pause")
def connector_pause() -> None:
    """Set the connector Paused (idempotent)."""
    with opened_connector() as (pipeline, handle):
        respond(lambda: lifecycle(pipeline).pause_connector(handle.table, handle.spec.name))


@connector_group.command("stats")
@FORMAT_OPTION
def connector_stats(output_format: str) -> None:
    """The connector's stats: metrics, last parse errors, fatal error (secrets masked)."""
    with opened_connector() as (pipeline, handle):
        stats = pipeline.stats(handle)
    click.echo(_dump(stats) if output_format == "json" else format_connector_stats(stats))


# -------------------------------------------------------------------------------------------------- wizard
@cli.group("wizard")
@click.argument("pipeline_name", metavar="PIPELINE")
@click.pass_context
def wizard_group(ctx: click.Context, pipeline_name: str) -> None:
    """The configuration wizard, one step at a time."""
    ctx.meta["pipeline"] = pipeline_name


@wizard_group.command("prerequisites")
@click.option("--done", "done", multiple=True, metavar="ID", help="Mark a prerequisite done (repeatable).")
@click.option("--all", "all_done", is_flag=True, help="Mark every prerequisite done.")
@click.option("--complete", is_flag=True, help="Complete the step (every prerequisite must be done).")
def wizard_prerequisites(done: tuple[str, ...], all_done: bool, complete: bool) -> None:
    """Show the prerequisite checklist, mark items done, or complete the step."""
    procedure(_pipeline_name(), lambda lc: lc.prerequisites(list(done) or None, all_done, complete))


@wizard_group.command("configure")
@SET_OPTION
def wizard_configure(settings: tuple[str, ...]) -> None:
    """Store the sink configuration (from the project file, overridden by --set: warehouse, database, schema)."""
    values = parse_settings(settings)
    procedure(_pipeline_name(), lambda lc: lc.configure(values or None))


@wizard_group.command("connect")
def wizard_connect() -> None:
    """Test every connection and the sink for real."""
    procedure(_pipeline_name(), lambda lc: lc.connect(), needs_connections=True)


@wizard_group.command("finalize")
def wizard_finalize() -> None:
    """Create the sink tables and start the pipeline."""
    procedure(_pipeline_name(), lambda lc: lc.finalize(), needs_connections=True)


@wizard_group.command("reset")
def wizard_reset() -> None:
    """Clear the stored configuration and undo the prerequisites."""
    procedure(_pipeline_name(), lambda lc: lc.reset())


# ------------------------------------------------------------------------------------------- setup and run
@cli.command("setup")
@click.argument("pipeline_name", metavar="PIPELINE")
@click.option("--confirm-prerequisites", is_flag=True, help="Mark every prerequisite done (you confirm they are met).")
def setup(pipeline_name: str, confirm_prerequisites: bool) -> None:
    """Run the whole wizard from the project file, non-interactively."""
    procedure(pipeline_name, lambda lc: lc.setup(confirm_prerequisites), needs_connections=True)


@cli.command("run")
@click.argument("pipeline_name", metavar="PIPELINE")
@click.option("--max-seconds", type=click.FloatRange(min=0), default=None, help="Stop after this many seconds.")
def run(pipeline_name: str, max_seconds: float | None) -> None:
    """Ingest headless until every connector that can finish has finished (progress on stderr)."""
    from connector_core.ingest import IngestSession
    from connector_core.orchestration import run_pipeline

    with opened(pipeline_name) as pipeline:
        status = pipeline.state.status
        if not pipeline.is_started():
            _finish(
                {
                    "response_code": "INVALID_CONNECTOR_STATUS",
                    "message": f"Invalid connector status. Expected status: [STARTED]. Current status: {status}. "
                    "Nothing was ingested.",
                }
            )

        def progress(line: str) -> None:
            click.echo(line, err=True)

        try:
            session = IngestSession(pipeline, LazyClients(pipeline), progress)
            try:
                summary = run_pipeline(pipeline, session, progress, max_seconds)
            finally:
                session.close()
        except Exception as exc:
            _finish({"response_code": INTERNAL_ERROR, "message": _describe(exc)})
        per_connector: dict[str, int] = {}
        for batch in summary.batches:
            per_connector[batch.endpoint] = per_connector.get(batch.endpoint, 0) + batch.records
        fatal = {
            handle.endpoint: handle.state.metrics().fatal_error
            for handle in pipeline.connectors()
            if handle.state.metrics().fatal_error
        }
        _finish(
            {
                "response_code": "OK",
                "message": summary.stopped_reason,
                "records": summary.records,
                "records_by_connector": per_connector,
                "batches": len(summary.batches),
                "started_by_start_after": summary.released,
                "fatal_errors": fatal,
            }
        )


# ----------------------------------------------------------------------------------------------- text output
def _yes(value: Any) -> str:
    return "yes" if value else "no"


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """Left-aligned columns separated by two spaces."""
    cells = [headers] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def format_connector_stats(stats: dict[str, Any]) -> str:
    """A readable summary of one connector's stats."""
    m = stats["metrics"]
    lines = [
        f"connector {stats['endpoint_name']}" + (f" ({stats['connector_id']})" if stats.get("connector_id") else ""),
        f"  paused: {_yes(stats['paused'])}   active: {_yes(stats['active'])}",
        f"  records: {m['total_records']}   bytes: {m['total_bytes']}   buffered: {m['buffered_records']}   "
        f"end of input: {_yes(m['end_of_input'])}",
        f"  parse errors: {m['num_parse_errors']}   transport errors: {m['num_transport_errors']}",
        f"  fatal error: {stats['fatal_error'] or '-'}",
        f"  config: {json.dumps(stats['config'], default=str)}",
    ]
    if stats["parse_errors"]:
        lines.append("  last parse errors:")
        for error in stats["parse_errors"][-10:]:
            lines.append(f"    {error['timestamp']}  #{error['index']}  {error['message']}")
    return "\n".join(lines)


def format_pipeline_stats(stats: dict[str, Any]) -> str:
    """A readable summary of every connector of a pipeline and its hourly statistics."""
    lines = [
        f"pipeline {stats['pipeline']} ({stats['pipeline_id']}): status {stats['status']}, "
        f"configurationStatus {stats['configurationStatus']}",
        "",
    ]
    rows = []
    for s in stats["connectors"]:
        m = s["metrics"]
        rows.append(
            [
                s["endpoint_name"],
                _yes(s["paused"]),
                _yes(s["active"]),
                m["total_records"],
                m["total_bytes"],
                m["buffered_records"],
                _yes(m["end_of_input"]),
                m["num_parse_errors"],
                m["num_transport_errors"],
                s["fatal_error"],
            ]
        )
    headers = [
        "CONNECTOR",
        "PAUSED",
        "ACTIVE",
        "RECORDS",
        "BYTES",
        "BUFFERED",
        "END_OF_INPUT",
        "PARSE_ERRORS",
        "TRANSPORT_ERRORS",
        "FATAL_ERROR",
    ]
    lines.append(format_table(headers, rows))
    lines += ["", "hourly statistics:"]
    if stats["hourly_stats"]:
        hourly = [
            [h["hour"], h["connector"], h["records"], h["bytes"], h["parse_errors"], h["transport_errors"]]
            for h in stats["hourly_stats"]
        ]
        lines.append(
            format_table(["HOUR", "CONNECTOR", "RECORDS", "BYTES", "PARSE_ERRORS", "TRANSPORT_ERRORS"], hourly)
        )
    else:
        lines.append("  (none yet)")
    return "\n".join(lines)


def main() -> None:
    """Entry point for ``python -m connector_cli.main``."""
    cli(prog_name="connectors")


if __name__ == "__main__":
    sys.exit(main())
