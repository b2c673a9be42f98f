"""``connectors run PIPELINE [--follow]``: ingest headless until every connector that can finish has finished, or
with ``--follow`` continuously (never-ending connectors too) until interrupted, paused or ``--max-seconds``.

Progress goes to stderr, the summary JSON to stdout. The run answers ``OK`` (exit 0) unless a connector it ingested
ended it on a fatal error: then ``CONNECTOR_FATAL_ERROR`` (exit 1) names each one, its cause and the command that
retries it. Connectors stopped on a fatal error before the run are left alone and listed under
``earlier_fatal_errors`` without changing the exit code. A pipeline that is not STARTED ingests nothing and answers
``INVALID_CONNECTOR_STATUS``. Ctrl-C or SIGTERM stops the run after the batch being committed (a second one
abandons that batch, which the next run reads again), and the run still answers its summary (exit 0).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import click

from connector_cli.context import ClientsOnFirstUse, respond
from connector_core.backups import restore_before_write
from connector_core.ingest import IngestSession
from connector_core.lifecycle import Response
from connector_core.orchestration import RunSummary, run_pipeline
from connector_core.pipeline import Pipeline
from connector_core.streaming import StopRequest
from connector_core.vocabulary import ResponseCode, Status


def _progress(line: str) -> None:
    click.echo(line, err=True)


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """SIGINT and SIGTERM request ``stop`` (the batch in progress is committed first); a second one interrupts
    that batch (it is not committed: the next run reads it again)."""

    def handle(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            raise KeyboardInterrupt(f"{name} again: aborted")
        stop.request(f"interrupted by {name}")
        _progress(f"{name}: finishing the batch in progress, then stopping ({name} again abandons it)")

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def ingest_until_finished(pipeline: Pipeline, max_seconds: float | None, follow: bool = False) -> Response:
    """Run the pipeline headless (at most ``max_seconds``; with ``follow`` continuously, until interrupted) and
    answer its summary; a lost state folder is restored from its backups first (a refused backup answers
    ``INTERNAL_ERROR`` naming its key). The sink's database is opened per batch, so Dagster runs writing the same
    DuckDB file go on meanwhile (:mod:`connector_core.streaming`)."""
    clients = ClientsOnFirstUse(pipeline)
    restore_before_write(pipeline, clients)
    if not pipeline.is_started():
        return Response(
            ResponseCode.INVALID_CONNECTOR_STATUS,
            f"Invalid connector status. Expected status: [{Status.STARTED}]. Current status: {pipeline.state.status}. "
            "Nothing was ingested.",
        )
    session = IngestSession(pipeline, clients, _progress, hold_connection=False)
    stop = StopRequest()
    try:
        with stop_on_signals(stop):
            summary = run_pipeline(pipeline, session, _progress, max_seconds, follow=follow, stop=stop)
    finally:
        session.close()
    return summary_response(pipeline, summary)


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
def run(pipeline_name: str, max_seconds: float | None, follow: bool) -> None:
    """Ingest headless until every connector that can finish has finished, or with --follow continuously
    (progress on stderr, the summary JSON on stdout)."""
    respond(pipeline_name, lambda pipeline: ingest_until_finished(pipeline, max_seconds, follow))
