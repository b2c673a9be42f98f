"""Continuous ingestion: one long run that keeps committing batches, shared by ``connectors run --follow`` and the
Dagster ingest runs (``ConnectorsResource.ingest``).

Feldera runs its connectors inside the engine; here Dagster runs them, so a stream becomes a sequence of long runs:
a run ingests its connectors batch after batch (a batch is read, written and committed at once, and a read gathers
at most about a second of a live source, so a live connector commits about every ``commit_interval``) until

* the pipeline or every connector is paused, finished or given up (re-read between batches through
  :meth:`Pipeline.idle_reason`, the one rule of who may ingest: a pause from the CLI or the UI stops the run
  within one batch),
* the run is asked to stop (:class:`StopRequest`: Ctrl-C/SIGTERM in the CLI, a terminated Dagster run; the batch
  being committed is finished first),
* or ``max_seconds`` (the pipeline's ``max_run_seconds`` for Dagster runs) has passed; the orchestration sensor
  then starts the next run.

DuckDB lets one process write a database file at a time. Runs therefore open the file for each batch and let go
of it after the commit (``IngestSession(hold_connection=False)``), and a run whose open meets another process's
lock waits with a short backoff (dagster-duckdb's ``DuckDBResource`` retries 10 times, from 0.1 s, doubling) before
the batch fails with a ``SinkError``. Measured (``benchmarks/streaming.py --part duckdb``): a batch that opens the
file twice (to read the connector's mark, then to commit; it is not held while the source is read) costs about
60-65 ms more than with a held connection (an open is ~17-30 ms, a close with its checkpoint ~10 ms), 6 % of a
one-second commit interval; two processes streaming 5,000 records/s each into two tables of one file both sustain
1.00 of their rate, while with the file held the second gets 0.07 (it waits out the first). The alternative, one
run per pipeline holding the file, would lock out the other tables' runs and the CLI (``connectors run``,
``finalize``, ``restore``) for up to ``max_run_seconds``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from connector_core.ingest import BatchReport, IngestSession, TableReport
from connector_core.ingest import _nothing_to_ingest as nothing_to_ingest
from connector_core.pipeline import ConnectorHandle, Pipeline

#: Default seconds between a live connector's commits at most (the project file's ``commit_interval``).
DEFAULT_COMMIT_INTERVAL = 1.0
#: First idle wait after a round that found nothing new; it grows by this much per idle round, up to the
#: commit interval.
IDLE_STEP_SECONDS = 0.05


class StopRequest:
    """Why a continuous run should stop, set from any thread or a signal handler; wakes an idle wait at once."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        """Ask the run to stop after the batch in progress (the first reason given is kept)."""
        if self.reason is None:
            self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, less when a stop is requested meanwhile; whether one was."""
        return self._event.wait(max(0.0, seconds))


@dataclass
class StreamRound:
    """One round: a batch from each connector that may ingest, and the connectors ``start_after`` released."""

    reports: list[BatchReport] = field(default_factory=list)
    released: list[str] = field(default_factory=list)

    @property
    def records(self) -> int:
        """Records committed by the round."""
        return sum(report.records for report in self.reports)


def ingest_continuously(
    pipeline: Pipeline,
    session: IngestSession,
    stop: StopRequest,
    *,
    tables: Iterable[str] | None = None,
    commit_interval: float = DEFAULT_COMMIT_INTERVAL,
    max_seconds: float | None = None,
    between_rounds: Callable[[], list[str]] | None = None,
    retry_failed: bool = True,
    until: Callable[[list[ConnectorHandle]], str | None] | None = None,
    check: Callable[[], str | None] | None = None,
    batch_guard: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    interrupts: tuple[type[BaseException], ...] = (KeyboardInterrupt,),
) -> Iterator[StreamRound]:
    """Ingest the connectors of ``tables`` (default: all) round after round, yielding each round, until a stop
    (its reason is then in ``stop.reason``).

    Each round re-reads who may ingest (:meth:`Pipeline.idle_reason`) and ingests one batch of each such
    connector; a round that found nothing new waits (growing to ``commit_interval``) before the next. It stops
    when no connector may ingest, when ``until(connectors with work)`` or ``check()`` (called at most once per
    ``commit_interval``: e.g. "was the Dagster run terminated?") gives a reason, when ``max_seconds`` passed,
    when ``stop`` is requested, or on one of ``interrupts`` raised between batches. Each batch runs inside
    ``batch_guard()`` (a front end defers interrupts there, so a batch being committed is finished).

    ``between_rounds`` runs before each round and names the connectors it started (``connectors run`` applies
    ``start_after`` there; in Dagster the sensor does it).
    Without ``retry_failed`` a connector whose batch failed is left for the next run (a Dagster run reads a
    failing source once; the failure rule and the sensor decide on the next).
    """
    selected = None if tables is None else set(tables)
    started = time.monotonic()
    checked_at = started
    failed: set[str] = set()
    idle_rounds = 0
    try:
        while not stop.is_set():
            now = time.monotonic()
            if max_seconds is not None and now - started >= max_seconds:
                stop.request(f"stopped after {max_seconds:g} s (the run's time limit)")
                break
            if check is not None and now - checked_at >= commit_interval:
                checked_at = now
                reason = check()
                if reason:
                    stop.request(reason)
                    break
            round_ = StreamRound(released=between_rounds() if between_rounds is not None else [])
            work = [
                handle
                for handle in pipeline.connectors()
                if (selected is None or handle.table in selected)
                and handle.endpoint not in failed
                and pipeline.idle_reason(handle) is None
            ]
            reason = _why_nothing_ingests(pipeline, selected, failed) if not work else until(work) if until else None
            if reason:
                stop.request(reason)
                if round_.released:
                    yield round_  # the connectors it started are reported
                break
            for handle in work:
                if stop.is_set():
                    break
                with batch_guard():
                    report = session.ingest_batch(handle)  # re-checks idle_reason: a pause since is seen here
                if report.skipped_reason is None:
                    round_.reports.append(report)
                if report.error and not retry_failed:
                    failed.add(handle.endpoint)
            yield round_
            idle_rounds = idle_rounds + 1 if round_.records == 0 else 0
            if idle_rounds:  # sources have nothing new yet: back off, but never past one commit interval
                stop.wait(min(IDLE_STEP_SECONDS * idle_rounds, commit_interval))
    except interrupts as exc:
        stop.request(f"interrupted ({type(exc).__name__})")


def table_idle_reason(pipeline: Pipeline, table: str) -> str | None:
    """Why no connector of ``table`` may ingest now, or ``None`` when one may."""
    reasons = {handle.endpoint: pipeline.idle_reason(handle) for handle in pipeline.connectors(table)}
    if any(reason is None for reason in reasons.values()):
        return None
    return nothing_to_ingest(pipeline, table, reasons)


def _why_nothing_ingests(pipeline: Pipeline, selected: set[str] | None, failed: set[str]) -> str:
    """The reason a continuous run ends for lack of work: the pipeline's status, else each connector's reason."""
    if not pipeline.is_started():
        return f"pipeline {pipeline.name} is {pipeline.state.status}, not STARTED"
    reasons = []
    for handle in pipeline.connectors():
        if selected is not None and handle.table not in selected:
            continue
        if handle.endpoint in failed:
            reasons.append(f"{handle.endpoint} failed in this run (the next run retries it)")
        else:
            reasons.append(pipeline.idle_reason(handle) or f"{handle.endpoint} may ingest")
    return "no connector may ingest: " + "; ".join(reasons)


@dataclass
class StreamTotals:
    """What a continuous run ingested, per table and connector (one aggregated batch report per connector, so a
    run of thousands of batches reports as briefly as one)."""

    started: float = field(default_factory=time.monotonic)
    rounds: int = 0
    released: list[str] = field(default_factory=list)
    by_endpoint: dict[str, BatchReport] = field(default_factory=dict)
    table_of: dict[str, str] = field(default_factory=dict)
    batches: int = 0
    #: Batches per table (each one sink commit).
    commits: dict[str, int] = field(default_factory=dict)

    def add(self, round_: StreamRound, pipeline: Pipeline) -> None:
        """Count one round."""
        self.rounds += 1
        self.released += round_.released
        tables = {handle.endpoint: handle.table for handle in pipeline.connectors()}
        for report in round_.reports:
            self.batches += 1
            self.table_of[report.endpoint] = tables[report.endpoint]
            self.commits[tables[report.endpoint]] = self.commits.get(tables[report.endpoint], 0) + 1
            total = self.by_endpoint.setdefault(report.endpoint, BatchReport(report.endpoint, report.connector_id))
            total.records += report.records
            total.bytes += report.bytes
            total.parse_errors += report.parse_errors
            total.transport_errors += report.transport_errors
            total.seconds += report.seconds
            total.end_of_input = report.end_of_input
            total.buffered_records = report.buffered_records
            total.error = report.error or total.error
            total.fatal_error = report.fatal_error or total.fatal_error

    @property
    def records(self) -> int:
        """Records committed by the run."""
        return sum(report.records for report in self.by_endpoint.values())

    def tables(self) -> set[str]:
        """Tables that had at least one batch."""
        return set(self.table_of.values())

    def table_report(self, table: str, row_count: int = 0) -> TableReport:
        """The run's batches of ``table`` as one :class:`TableReport` (seconds: since the run started)."""
        batches = [report for endpoint, report in self.by_endpoint.items() if self.table_of[endpoint] == table]
        return TableReport(table=table, batches=batches, row_count=row_count, seconds=time.monotonic() - self.started)
