"""Who is active, who is finished, whom ``start_after`` releases: shared by the sensor and ``connectors run``."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from connector_core.backups import restore_before_write, run_backup_check
from connector_core.ingest import IngestSession
from connector_core.pipeline import ConnectorHandle, Pipeline
from connector_core.project import Project
from connector_core.state import ConnectorSnapshot
from connector_core.streaming import StopRequest, StreamTotals, ingest_continuously


def finished_labels(pipeline: Pipeline) -> set[str]:
    """Labels all of whose carriers are finished (``end_of_input`` and nothing buffered)."""
    return _labels(pipeline)[0]


def _labels(pipeline: Pipeline) -> tuple[set[str], set[str]]:
    """(labels all of whose carriers are finished, every label carried), from one pass over the connectors."""
    unfinished: set[str] = set()
    carried: set[str] = set()
    for handle in pipeline.connectors():
        labels = handle.labels
        carried.update(labels)
        if not handle.state.metrics().finished:
            unfinished.update(labels)
    return carried - unfinished, carried


def label_is_finished(label: str, finished: set[str], carried: set[str]) -> bool:
    """A label no connector carries counts as finished."""
    return label in finished or label not in carried


def releasable(pipeline: Pipeline) -> list[ConnectorHandle]:
    """The paused, never-released ``start_after`` connectors whose labels are all finished (none while the
    pipeline is not STARTED). A connector that ``start_after`` released once is never auto-started again, so a
    user's later pause sticks."""
    if not pipeline.is_started():
        return []
    waiting = [
        handle
        for handle in pipeline.connectors()
        if handle.spec.start_after
        and not handle.spec.paused
        and not handle.state.running
        and not handle.state.start_after_released
    ]
    if not waiting:
        return []
    finished, carried = _labels(pipeline)
    return [
        handle
        for handle in waiting
        if all(label_is_finished(label, finished, carried) for label in handle.spec.start_after or [])
    ]


def release_start_after(pipeline: Pipeline) -> list[str]:
    """Start each connector :func:`releasable` names, in a pipeline opened writable; returns the endpoints
    started."""
    started = []
    for handle in releasable(pipeline):
        pipeline.ensure_created()
        state = handle.state
        assert not isinstance(state, ConnectorSnapshot), "releasing needs a pipeline opened writable"
        reason = f"start_after {', '.join(handle.spec.start_after or [])} finished"
        state.set_running(True, reason, released_by_start_after=True)
        started.append(handle.endpoint)
    return started


def open_for_tick(
    project: Project, pipeline_name: str, state_dir: str | os.PathLike[str] | None = None
) -> tuple[Pipeline, list[str]]:
    """The pipeline as one sensor tick sees it, and the ``start_after`` connectors the tick released.

    The tick reads every database once, read-only (a :class:`Pipeline` opened ``read_only``). Only when a
    connector is to be released does it open the pipeline writable, release (the rule is checked again on what is
    stored then) and read it again: a tick that releases nothing writes nothing.
    """
    pipeline = Pipeline(project, pipeline_name, state_dir, read_only=True)
    if not releasable(pipeline):
        return pipeline, []
    pipeline.close()
    writable = Pipeline(project, pipeline_name, state_dir)
    try:
        started = release_start_after(writable)
    finally:
        writable.close()
    return Pipeline(project, pipeline_name, state_dir, read_only=True), started


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
    """A run key from the connectors' read counters and the pipeline's newest event: the same work is never
    requested twice, and every read (even one that found nothing new) or procedure (a run that read nothing because
    the pipeline was paused before it started, then a resume) lets the next run be requested."""
    parts = [f"{h.connector_id or h.endpoint}:{h.state.reads()}" for h in handles]
    parts.append(f"events:{pipeline.state.last_event_id()}")
    digest = hashlib.sha256("|".join(sorted(parts)).encode()).hexdigest()[:16]
    return f"{pipeline.name}.{table}.{digest}"


@dataclass
class RunSummary:
    """What ``connectors run`` did."""

    totals: StreamTotals = field(default_factory=StreamTotals)
    stopped_reason: str = ""
    #: Connectors this run ingested that ended it on a fatal error: endpoint -> the error.
    fatal_errors: dict[str, str] = field(default_factory=dict)
    #: Connectors that were stopped on a fatal error before this run and that it left alone.
    earlier_fatal_errors: dict[str, str] = field(default_factory=dict)
    #: Why the backup check at the start of the run failed (it never fails the run), else ``None``.
    backup_warning: str | None = None
    #: Connectors that never end (live) and were left alone because the run was not asked to ``follow``.
    never_ending: list[str] = field(default_factory=list)

    @property
    def records(self) -> int:
        """Records ingested by the run."""
        return self.totals.records

    @property
    def batches(self) -> int:
        """Batches the run ingested."""
        return self.totals.batches

    @property
    def released(self) -> list[str]:
        """Connectors ``start_after`` started during the run."""
        return self.totals.released

    @property
    def records_by_connector(self) -> dict[str, int]:
        """Records ingested per connector (``table.connector``)."""
        return {endpoint: report.records for endpoint, report in self.totals.by_endpoint.items()}


def run_pipeline(
    pipeline: Pipeline,
    session: IngestSession,
    progress: Callable[[str], None] = print,
    max_seconds: float | None = None,
    follow: bool = False,
    stop: StopRequest | None = None,
    on_round: Callable[[StreamTotals], None] | None = None,
) -> RunSummary:
    """Ingest headless, applying ``start_after`` between batches (:func:`ingest_continuously`).

    Without ``follow``: until every connector that can finish has finished. Connectors that never finish (a Kafka
    topic without partition EOF, a followed file, an endless datagen) are ingested while others still have work,
    and do not hold the run open; when only such connectors have work, nothing is ingested and the reason says so
    and suggests ``follow``. With ``follow``: until no connector may ingest (paused, finished, given up) or
    ``stop`` is requested (Ctrl-C / SIGTERM: the batch in progress is committed first). ``max_seconds`` bounds
    both. A connector whose reads keep failing is given up by the batch step itself (``IngestSession``'s
    consecutive failure rule, the same in Dagster runs); the summary names it in ``fatal_errors``.

    ``progress`` gets a line per batch that committed something, or, when ``on_round`` is given (a terminal's
    status line), ``on_round`` gets the run's totals after each round instead; other lines go to ``progress``.
    """
    summary = RunSummary()
    stop = stop or StopRequest()
    restore_before_write(pipeline, session.clients)  # a lost state folder comes back before the run reads it
    backups = run_backup_check(pipeline, session.clients)  # a (re)start checks the 24-hour rule
    summary.backup_warning = None if backups.ok else pipeline.redact(backups.message)
    if summary.backup_warning:
        progress(f"backup check failed (the next check retries it): {summary.backup_warning}")
    if not pipeline.is_started():
        summary.stopped_reason = f"pipeline {pipeline.name} is {pipeline.state.status}, not STARTED: nothing ingested"
        progress(summary.stopped_reason)
        return summary

    def until_finishing_connectors_finish(work: list[ConnectorHandle]) -> str | None:
        if any(session.can_finish(handle) for handle in work):
            return None
        summary.never_ending = [handle.endpoint for handle in work]
        if summary.totals.rounds:
            return "every connector that can finish has finished"
        return (
            f"nothing can finish: {', '.join(summary.never_ending)} "
            f"{'never ends' if len(summary.never_ending) == 1 else 'never end'} (no end of input), so nothing was "
            f"ingested; `connectors run {pipeline.name} --follow` ingests continuously"
        )

    def released() -> list[str]:
        started = release_start_after(pipeline)
        for endpoint in started:
            progress(f"started {endpoint} (start_after finished)")
        return started

    ingested: set[str] = set()
    rounds = ingest_continuously(
        pipeline,
        session,
        stop,
        commit_interval=pipeline.spec.commit_interval,
        max_seconds=max_seconds,
        between_rounds=released,
        until=None if follow else until_finishing_connectors_finish,
    )
    for round_ in rounds:
        summary.totals.add(round_, pipeline)
        for report in round_.reports:
            ingested.add(report.endpoint)
            if report.fatal_error:
                progress(f"{report.endpoint}: {report.fatal_error} (`connectors connector ... start` retries it)")
            if on_round is None and (report.records or report.parse_errors or report.transport_errors):
                progress(
                    f"{report.endpoint}: +{report.records} records, {report.parse_errors} parse errors, "
                    f"{report.transport_errors} transport errors" + (", end of input" if report.end_of_input else "")
                )
        if on_round is not None:
            on_round(summary.totals)
    summary.stopped_reason = stop.reason or "stopped"
    for handle in pipeline.connectors():
        fatal = handle.state.metrics().fatal_error
        if fatal:
            target = summary.fatal_errors if handle.endpoint in ingested else summary.earlier_fatal_errors
            target[handle.endpoint] = fatal
    progress(f"run finished: {summary.records} records; {summary.stopped_reason}")
    return summary
