"""``connectors run PIPELINE``: ingest headless until every connector that can finish has finished.

Progress goes to stderr, the summary JSON to stdout. The run answers ``OK`` (exit 0) unless a connector it ingested
ended it on a fatal error: then ``CONNECTOR_FATAL_ERROR`` (exit 1) names each one, its cause and the command that
retries it. Connectors stopped on a fatal error before the run are left alone and listed under
``earlier_fatal_errors`` without changing the exit code. A pipeline that is not STARTED ingests nothing and answers
``INVALID_CONNECTOR_STATUS``.
"""

from __future__ import annotations

import click

from connector_cli.context import ClientsOnFirstUse, respond
from connector_core.backups import restore_before_write
from connector_core.ingest import IngestSession
from connector_core.lifecycle import Response
from connector_core.orchestration import RunSummary, run_pipeline
from connector_core.pipeline import Pipeline
from connector_core.vocabulary import ResponseCode, Status


def _progress(line: str) -> None:
    click.echo(line, err=True)


def ingest_until_finished(pipeline: Pipeline, max_seconds: float | None) -> Response:
    """Run the pipeline headless (at most ``max_seconds``) and answer its summary; a lost state folder is restored
    from its backups first (a refused backup answers ``INTERNAL_ERROR`` naming its key)."""
    clients = ClientsOnFirstUse(pipeline)
    restore_before_write(pipeline, clients)
    if not pipeline.is_started():
        return Response(
            ResponseCode.INVALID_CONNECTOR_STATUS,
            f"Invalid connector status. Expected status: [{Status.STARTED}]. Current status: {pipeline.state.status}. "
            "Nothing was ingested.",
        )
    session = IngestSession(pipeline, clients, _progress)
    try:
        summary = run_pipeline(pipeline, session, _progress, max_seconds)
    finally:
        session.close()
    return summary_response(pipeline, summary)


def summary_response(pipeline: Pipeline, summary: RunSummary) -> Response:
    """The run's answer: ``CONNECTOR_FATAL_ERROR`` naming the connectors this run ingested that ended it on a fatal
    error, else ``OK`` with why the run stopped."""
    data = {
        "records": summary.records,
        "records_by_connector": summary.records_by_connector,
        "batches": len(summary.batches),
        "started_by_start_after": summary.released,
        "fatal_errors": summary.fatal_errors,
        "earlier_fatal_errors": summary.earlier_fatal_errors,
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
def run(pipeline_name: str, max_seconds: float | None) -> None:
    """Ingest headless until every connector that can finish has finished (progress on stderr)."""
    respond(pipeline_name, lambda pipeline: ingest_until_finished(pipeline, max_seconds))
