"""Who is active, who is finished, whom ``start_after`` releases: shared by the sensor and ``connectors run``."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from connector_core.backups import restore_before_write, run_backup_check
from connector_core.ingest import BatchReport, IngestSession
from connector_core.pipeline import ConnectorHandle, Pipeline


def finished_labels(pipeline: Pipeline) -> set[str]:
    """Labels all of whose carriers are finished (``end_of_input`` and nothing buffered)."""
    carriers: dict[str, list[bool]] = {}
    for handle in pipeline.connectors():
        finished = handle.state.metrics().finished
        for label in handle.labels:
            carriers.setdefault(label, []).append(finished)
    return {label for label, states in carriers.items() if all(states)}


def label_is_finished(label: str, finished: set[str], carried: set[str]) -> bool:
    """A label no connector carries counts as finished."""
    return label in finished or label not in carried


def release_start_after(pipeline: Pipeline) -> list[str]:
    """Start each paused, never-released ``start_after`` connector whose labels are all finished.

    Returns the endpoints started. A connector that ``start_after`` released once is never auto-started again,
    so a user's later pause sticks. Nothing is released while the pipeline is not STARTED.
    """
    if not pipeline.is_started():
        return []
    finished = finished_labels(pipeline)
    carried = {label for handle in pipeline.connectors() for label in handle.labels}
    started = []
    for handle in pipeline.connectors():
        waits_for = handle.spec.start_after or []
        if not waits_for or handle.state.running or handle.state.start_after_released or handle.spec.paused:
            continue
        if all(label_is_finished(label, finished, carried) for label in waits_for):
            reason = f"start_after {', '.join(waits_for)} finished"
            pipeline.ensure_created()
            handle.state.set_running(True, reason, released_by_start_after=True)
            started.append(handle.endpoint)
    return started


def has_work(pipeline: Pipeline, handle: ConnectorHandle) -> bool:
    """Active, not stopped on a fatal error and not finished: a batch may bring new records."""
    return pipeline.idle_reason(handle) is None


def tables_with_work(pipeline: Pipeline) -> dict[str, list[ConnectorHandle]]:
    """Tables that have active connectors with data left, and those connectors."""
    tables: dict[str, list[ConnectorHandle]] = {}
    for handle in pipeline.connectors():
        if has_work(pipeline, handle):
            tables.setdefault(handle.table, []).append(handle)
    return tables


def work_key(pipeline: Pipeline, table: str, handles: list[ConnectorHandle]) -> str:
    """A run key from the connectors' read counters: the same work is never requested twice, and every read
    (even one that found nothing new) lets the next run be requested."""
    parts = [f"{h.connector_id or h.endpoint}:{h.state.reads()}" for h in handles]
    digest = hashlib.sha256("|".join(sorted(parts)).encode()).hexdigest()[:16]
    return f"{pipeline.name}.{table}.{digest}"


@dataclass
class RunSummary:
    """What ``connectors run`` did."""

    batches: list[BatchReport] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    stopped_reason: str = ""
    #: Connectors this run ingested that ended it on a fatal error: endpoint -> the error.
    fatal_errors: dict[str, str] = field(default_factory=dict)
    #: Connectors that were stopped on a fatal error before this run and that it left alone.
    earlier_fatal_errors: dict[str, str] = field(default_factory=dict)
    #: Why the backup check at the start of the run failed (it never fails the run), else ``None``.
    backup_warning: str | None = None

    @property
    def records(self) -> int:
        """Records ingested by the run."""
        return sum(b.records for b in self.batches)

    @property
    def records_by_connector(self) -> dict[str, int]:
        """Records ingested per connector (``table.connector``)."""
        counts: dict[str, int] = {}
        for batch in self.batches:
            counts[batch.endpoint] = counts.get(batch.endpoint, 0) + batch.records
        return counts


def run_pipeline(
    pipeline: Pipeline,
    session: IngestSession,
    progress: Callable[[str], None] = print,
    max_seconds: float | None = None,
) -> RunSummary:
    """Ingest headless until every connector that can finish has finished, applying ``start_after`` between batches.

    Connectors that never finish (a Kafka topic without partition EOF, a followed file, an endless datagen) are
    ingested while others still have work, and do not hold the run open. ``max_seconds`` bounds the run. A
    connector whose reads keep failing is given up by the batch step itself (``IngestSession``'s consecutive
    failure rule, the same in Dagster runs); the summary names it in ``fatal_errors``.
    """
    summary = RunSummary()
    ingested: set[str] = set()
    restore_before_write(pipeline, session.clients)  # a lost state folder comes back before the run reads it
    backups = run_backup_check(pipeline, session.clients)  # a (re)start checks the 24-hour rule
    summary.backup_warning = None if backups.ok else pipeline.redact(backups.message)
    if summary.backup_warning:
        progress(f"backup check failed (the next check retries it): {summary.backup_warning}")
    if not pipeline.is_started():
        summary.stopped_reason = f"pipeline {pipeline.name} is {pipeline.state.status}, not STARTED: nothing ingested"
        progress(summary.stopped_reason)
        return summary
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    idle_rounds = 0
    while True:
        released = release_start_after(pipeline)
        for endpoint in released:
            progress(f"started {endpoint} (start_after finished)")
        summary.released += released
        work = [h for handles in tables_with_work(pipeline).values() for h in handles]
        finishing = [h for h in work if session.can_finish(h)]
        if not finishing:
            summary.stopped_reason = "every connector that can finish has finished"
            break
        if deadline is not None and time.monotonic() > deadline:
            summary.stopped_reason = f"stopped after {max_seconds}s"
            break
        round_records = 0
        for handle in work:
            report = session.ingest_batch(handle)
            summary.batches.append(report)
            ingested.add(handle.endpoint)
            round_records += report.records
            if report.fatal_error:
                progress(f"{handle.endpoint}: {report.fatal_error} (`connectors connector ... start` retries it)")
            if report.records or report.parse_errors or report.transport_errors:
                progress(
                    f"{handle.endpoint}: +{report.records} records, {report.parse_errors} parse errors, "
                    f"{report.transport_errors} transport errors" + (", end of input" if report.end_of_input else "")
                )
        idle_rounds = idle_rounds + 1 if round_records == 0 else 0
        if idle_rounds:
            time.sleep(min(0.05 * idle_rounds, 1.0))  # back off while sources have nothing new yet
    for handle in pipeline.connectors():
        fatal = handle.state.metrics().fatal_error
        if fatal:
            target = summary.fatal_errors if handle.endpoint in ingested else summary.earlier_fatal_errors
            target[handle.endpoint] = fatal
    progress(f"run finished: {summary.records} records; {summary.stopped_reason}")
    return summary
