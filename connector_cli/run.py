"""``connectors run PIPELINE [--follow]``: ingest headless until every connector that can finish has finished, or
with ``--follow`` continuously (never-ending connectors too) until interrupted, paused or ``--max-seconds``.

Progress goes to stderr, the summary JSON to stdout. The run answers ``OK`` (exit 0) unless a connector it ingested
ended it on a fatal error: then ``CONNECTOR_FATAL_ERROR`` (exit 1) names each one, its cause and the command that
retries it. Connectors stopped on a fatal error before the run are left alone and listed under
``earlier_fatal_errors`` without changing the exit code. A pipeline that is not STARTED ingests nothing and answers
``INVALID_CONNECTOR_STATUS``. Ctrl-C or SIGTERM stops the run after the batch being committed (a second one
abandons that batch, which the next run reads again), and the run still answers its summary (exit 0).
``--resume`` first brings a set-up pipeline back to STARTED, whatever status it was left in, so the README's demo
command runs again: it resumes one PAUSED (or stuck STARTING) and recovers one stuck PAUSING or in ERROR to STARTED
(``connectors pipeline P recover --to STARTED``). Recovering from ERROR is not silent: the procedure, its answer and
the cause recorded when the pipeline went to ERROR are printed on stderr, recorded like the command's, and the answer
names the status it resumed from (``resumed_from``, ``error_cause``); a refused resume or recover is the answer.

On a terminal (stderr is a TTY) progress is one status line rewritten in place (records, records/s, records per
table); other messages print above it. In a pipe or a file it is plain lines, one per batch that committed
something. With ``DAGSTER_HOME`` set, each table the run ingested gets an ``AssetMaterialization`` in the Dagster
instance, with a Dagster run's metadata (:mod:`connector_cli.history`).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import click

from connector_cli import history
from connector_cli.context import ClientsOnFirstUse, respond
from connector_core.backups import restore_before_write
from connector_core.hints import status_way_out
from connector_core.ingest import IngestSession
from connector_core.lifecycle import Lifecycle, Response
from connector_core.orchestration import RunSummary, run_pipeline
from connector_core.pipeline import Pipeline
from connector_core.streaming import StopRequest, StreamTotals
from connector_core.vocabulary import ConfigurationStatus, ResponseCode, Status


def _progress(line: str) -> None:
    click.echo(line, err=True)


class StatusLine:
    """Progress on a terminal: one line rewritten in place (``\\r``) after each round, at most every
    ``interval`` seconds: records, records/s since the start, records per table. A message (:meth:`echo`) first
    leaves the status line as it is, then prints below it."""

    def __init__(self, pipeline_name: str, stream: TextIO, interval: float = 0.2):
        self.pipeline_name = pipeline_name
        self.stream = stream
        self.interval = interval
        self.text = ""
        self.shown = False
        self.drawn_at = 0.0

    def update(self, totals: StreamTotals, force: bool = False) -> None:
        """Rewrite the line from the run's totals."""
        now = time.monotonic()
        if not force and now - self.drawn_at < self.interval:
            return
        self.drawn_at = now
        elapsed = now - totals.started
        tables: dict[str, int] = {}
        for endpoint, report in totals.by_endpoint.items():
            table = totals.table_of[endpoint]
            tables[table] = tables.get(table, 0) + report.records
        rate = totals.records / elapsed if elapsed > 0 else 0.0
        per_table = ", ".join(f"{table} {records:,}" for table, records in tables.items())
        text = f"{self.pipeline_name}: {totals.records:,} records, {rate:,.0f} records/s" + (
            f" | {per_table}" if per_table else ""
        )
        width = max(20, shutil.get_terminal_size().columns - 1)
        self.text = text if len(text) <= width else text[: width - 1] + "…"
        self.stream.write(f"\r\x1b[K{self.text}")
        self.stream.flush()
        self.shown = True

    def echo(self, line: str) -> None:
        """Print a message: the status line stays above it as it was."""
        if self.shown:
            self.stream.write("\n")
            self.shown = False
        self.stream.write(f"{line}\n")
        self.stream.flush()

    def close(self) -> None:
        """End the status line."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


def progress_output(
    pipeline_name: str,
) -> tuple[Callable[[str], None], Callable[[StreamTotals], None] | None, Callable[[], None]]:
    """``(message printer, round callback or None, close)``: a :class:`StatusLine` when stderr is a terminal,
    else plain lines."""
    stream = click.get_text_stream("stderr")
    if not stream.isatty():
        return _progress, None, lambda: None
    line = StatusLine(pipeline_name, stream)
    return line.echo, line.update, line.close


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest, echo: Callable[[str], None] = _progress) -> Iterator[None]:
    """SIGINT and SIGTERM request ``stop`` (the batch in progress is committed first); a second one interrupts
    that batch (it is not committed: the next run reads it again)."""

    def handle(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            raise KeyboardInterrupt(f"{name} again: aborted")
        stop.request(f"interrupted by {name}")
        echo(f"{name}: finishing the batch in progress, then stopping ({name} again abandons it)")

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def ingest_until_finished(
    pipeline: Pipeline, max_seconds: float | None, follow: bool = False, resume: bool = False
) -> Response:
    """Run the pipeline headless (at most ``max_seconds``; with ``follow`` continuously, until interrupted) and
    answer its summary; a lost state folder is restored from its backups first (a refused backup answers
    ``INTERNAL_ERROR`` naming its key). With ``resume``, a set-up pipeline is brought back to STARTED first
    (:func:`resume_pipeline`; a refused resume or recover is the answer). The sink's database is opened per batch, so
    Dagster runs writing the same DuckDB file go on meanwhile (:mod:`connector_core.streaming`). With ``DAGSTER_HOME`` set, what the run
    ingested is recorded in the Dagster instance (:func:`connector_cli.history.record_run`)."""
    clients = ClientsOnFirstUse(pipeline)
    restore_before_write(pipeline, clients)
    resumed_from: dict[str, Any] = {}
    if resume and _resume_procedure(pipeline) is not None:
        resumed = resume_pipeline(pipeline, clients)
        if not resumed.ok:
            return resumed
        resumed_from = {key: resumed.data[key] for key in ("resumed_from", "error_cause") if key in resumed.data}
    if not pipeline.is_started():
        return Response(
            ResponseCode.INVALID_CONNECTOR_STATUS,
            f"Invalid connector status. Expected status: [{Status.STARTED}]. Current status: {pipeline.state.status}. "
            f"Nothing was ingested.{_not_started_hint(pipeline, resume)}",
        )
    echo, on_round, close = progress_output(pipeline.name)
    session = IngestSession(pipeline, clients, echo, hold_connection=False)
    stop = StopRequest()
    try:
        try:
            with stop_on_signals(stop, echo):
                summary = run_pipeline(
                    pipeline, session, echo, max_seconds, follow=follow, stop=stop, on_round=on_round
                )
        finally:
            close()
        history.record_run(pipeline, session, summary)
    finally:
        session.close()
    response = summary_response(pipeline, summary)
    response.data.update(resumed_from)
    return response


def _not_started_hint(pipeline: Pipeline, resume: bool) -> str:
    """The command that brings a pipeline that is not STARTED back, for the answer of ``run`` (a sentence after a
    space)."""
    status, name = pipeline.state.status, pipeline.name
    if not resume and status in (Status.PAUSED, Status.STARTING, Status.PAUSING, Status.ERROR):
        how = f" (it recovers it: `connectors pipeline {name} recover --to STARTED`)" if status == Status.ERROR else ""
        return f" `connectors run {name} --resume` brings it back to STARTED first{how}."
    prerequisites_open = (
        status == Status.CONFIGURING
        and pipeline.state.configuration_status == ConfigurationStatus.INSTALLED
        and any(not item["done"] for item in pipeline.state.prerequisites())
    )
    way_out = status_way_out(name, status, [Status.STARTED], prerequisites_open)
    return f" {way_out}" if way_out else f" `connectors pipeline {name} status` shows it."


def _resume_procedure(pipeline: Pipeline) -> tuple[str, Callable[[Lifecycle], Response]] | None:
    """The procedure ``run --resume`` runs first (``None``: none): ``resume`` when PAUSED or stuck STARTING,
    ``recover --to STARTED`` when stuck PAUSING or in ERROR after the wizard finished (an ERROR before that is
    not this command's to leave: ``setup`` names the way)."""
    status = pipeline.state.status
    if status in (Status.PAUSED, Status.STARTING):
        return "resume", lambda lifecycle: lifecycle.resume()
    finalized = pipeline.state.configuration_status == ConfigurationStatus.FINALIZED
    if status == Status.PAUSING or (status == Status.ERROR and finalized):
        return "recover", lambda lifecycle: lifecycle.recover(Status.STARTED)
    return None


def _error_cause(pipeline: Pipeline) -> str | None:
    """What put the pipeline in ERROR, from its newest event that did (``None`` when no event did)."""
    for event in pipeline.state.events(100):
        if event.get("to_status") == Status.ERROR:
            return f"{event.get('procedure')}: {event.get('response_code')}: {event.get('message')}"
    return None


def resume_pipeline(pipeline: Pipeline, clients: ClientsOnFirstUse) -> Response:
    """``run --resume``: resume a PAUSED pipeline (or one stuck STARTING); recover one stuck PAUSING, or in ERROR
    once set up, to STARTED. The procedure is printed on stderr, with the recorded cause of an ERROR it leaves, and
    recorded like the command's (:mod:`connector_cli.history`); an OK answer names the status it left
    (``resumed_from``) and the ERROR's cause (``error_cause``)."""
    chosen = _resume_procedure(pipeline)
    if chosen is None:
        return Response(ResponseCode.OK, "nothing to resume")
    name, call = chosen
    status = pipeline.state.status
    error_cause = _error_cause(pipeline) if status == Status.ERROR else None
    response = call(Lifecycle(pipeline, clients)).redacted(pipeline.redact)
    left = f" (it was {status}" + (f" after {error_cause}" if error_cause else "") + ")"
    _progress(f"{name}: {response.response_code}: {response.message}{left if response.ok else ''}")
    history.record_procedure(
        pipeline.project,
        pipeline.name,
        ["pipeline", name],
        ["run", pipeline.name, "--resume"],
        response,
        redact=pipeline.redact,
    )
    if response.ok:
        response.data["resumed_from"] = status
        if error_cause:
            response.data["error_cause"] = pipeline.redact(error_cause)
    return response


def summary_response(pipeline: Pipeline, summary: RunSummary) -> Response:
    """The run's answer: ``CONNECTOR_FATAL_ERROR`` naming the connectors this run ingested that ended it on a fatal
    error, else ``OK`` with why the run stopped."""
    data = {
        "records": summary.records,
        "records_by_connector": summary.records_by_connector,
        "batches": summary.batches,
        "started_by_start_after": summary.released,
        "fatal_errors": summary.fatal_errors,
        "earlier_fatal_errors": summary.earlier_fatal_errors,
        **({"never_ending": summary.never_ending} if summary.never_ending else {}),
        **({"backup_warning": summary.backup_warning} if summary.backup_warning else {}),
    }
    if not summary.fatal_errors:
        return Response(ResponseCode.OK, summary.stopped_reason, data)
    handles = {handle.endpoint: handle for handle in pipeline.connectors()}
    causes = "; ".join(
        f"{endpoint}: {error} (`connectors connector {pipeline.name} {handles[endpoint].table} "
        f"{handles[endpoint].spec.name} start` retries it)"
        for endpoint, error in summary.fatal_errors.items()
    )
    return Response(ResponseCode.CONNECTOR_FATAL_ERROR, f"Connectors stopped on a fatal error: {causes}", data)


@click.command("run")
@click.argument("pipeline_name", metavar="PIPELINE")
@click.option("--max-seconds", type=click.FloatRange(min=0), default=None, help="Stop after this many seconds.")
@click.option(
    "--follow",
    is_flag=True,
    help="Ingest continuously, never-ending connectors too (Kafka, followed files, endless datagen), until "
    "Ctrl-C/SIGTERM, a pause or --max-seconds.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="First bring a set-up pipeline back to STARTED: resume it when PAUSED (or stuck STARTING), recover it "
    "to STARTED (as `connectors pipeline P recover --to STARTED`) when stuck PAUSING or in ERROR, printing what "
    "put it in ERROR.",
)
def run(pipeline_name: str, max_seconds: float | None, follow: bool, resume: bool) -> None:
    """Ingest headless until every connector that can finish has finished, or with --follow continuously
    (progress on stderr: a status line on a terminal; the summary JSON on stdout)."""
    respond(pipeline_name, lambda pipeline: ingest_until_finished(pipeline, max_seconds, follow, resume))
