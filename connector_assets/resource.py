"""``ConnectorsResource``: the execution resource of one pipeline (the shape of dagster-dlt's ``DagsterDltResource``).

An asset body built with ``@connector_assets`` runs ``yield from connectors.ingest(context)``; lifecycle ops reach
the pipeline's connections through :meth:`ConnectorsResource.clients`. Its nested resources are the pipeline's
connection and sink resources, so the UI shows which connections it uses.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import dagster as dg
from dagster._utils.interrupts import capture_interrupts, check_captured_interrupt, pop_captured_interrupt
from dagster_duckdb import DuckDBResource
from pydantic import Field, create_model

from connector_assets.checks import table_check_results
from connector_assets.metadata import (
    HourlyObservations,
    materialization_metadata,
    table_materialization_metadata,
    table_metadata,
)
from connector_assets.names import BACKUP_CHECK_TAG, BACKUP_WARNING_KEY
from connector_assets.translator import table_asset_keys
from connector_core.backups import restore_before_write, run_backup_check
from connector_core.ingest import IngestSession, TableReport
from connector_core.pipeline import Pipeline
from connector_core.project import Project, load_project
from connector_core.streaming import StopRequest, StreamTotals, ingest_continuously, table_idle_reason
from resources import PipelineResources, ResourceClients, build_pipeline_resources

__all__ = [
    "ConnectorsResource",
    "connection_field",
    "materialization_metadata",
    "table_metadata",
    "with_signature",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Seconds between the progress observations of a streaming run's tables.
PROGRESS_SECONDS = 30.0
#: The stop reason of a terminated run.
TERMINATED = "the run was terminated"
#: How long the step of a run marked terminated waits for Dagster's interrupt before it yields its results.
TERMINATION_SIGNAL_SECONDS = 3.0


def connection_field(connection: str) -> str:
    """The field of :class:`ConnectorsResource` holding a connection's resource: ``connection_<name>``."""
    return f"connection_{connection}"


class ConnectorsResource(dg.ConfigurableResource):
    """Runs one pipeline of a connectors project file: streams its tables into the sink and gives the lifecycle
    jobs its connections."""

    # Dagster shows the class docstring as the resource's description: the one above is for users; build the
    # resource with for_pipeline, which names the pipeline in it and nests the pipeline's sink and one
    # connection_<name> resource per connection.

    project_file: str = Field(description="The connectors project file (connectors.yaml), read at run time.")
    pipeline_name: str = Field(description="The pipeline of the project file this resource runs.")
    state_dir: str = Field(description="The folder of the pipeline's state databases.")
    sink: DuckDBResource | None = Field(
        default=None, description="The DuckDB sink; None for a Snowflake sink (reached through its connection)."
    )

    @classmethod
    def for_pipeline(
        cls,
        project: Project,
        pipeline_name: str,
        state_dir: str | os.PathLike[str] | None = None,
        resources: PipelineResources | None = None,
    ) -> ConnectorsResource:
        """The resource of one pipeline of a loaded project file (``state_dir`` overrides the file's).

        ``resources`` are its connection and sink resources (default: built from the project file and the
        stored overrides); give the same objects to ``Definitions`` to show them as resources of their own.
        """
        if project.source_path is None:
            raise ValueError("ConnectorsResource reads its project file at run time: load it with load_project(path)")
        if resources is None:
            pipeline = Pipeline(project, pipeline_name, state_dir)
            try:
                resources = build_pipeline_resources(pipeline)
            finally:
                pipeline.close()
        nested = {connection_field(name): resource for name, resource in resources.connections.items()}
        # One typed field per connection (Dagster nests only resources held in fields), and the description the UI
        # shows, naming the pipeline and its connections.
        fields: dict[str, Any] = {
            connection_field(name): (type(resource), Field(description=f"The connection {name} of the pipeline."))
            for name, resource in resources.connections.items()
        }
        names = ", ".join(resources.connections)
        description = (
            f"Runs pipeline {pipeline_name}: streams its tables into its sink (the ingest job) and reaches its sink"
            f"{f' and connections ({names})' if names else ''} for the lifecycle jobs."
        )
        resource_cls = create_model(
            cls.__name__, __base__=cls, __module__=cls.__module__, __doc__=description, **fields
        )
        return resource_cls(
            project_file=str(project.source_path),
            pipeline_name=pipeline_name,
            state_dir=str(project.resolve_state_dir(state_dir)),
            sink=resources.sink,
            **nested,
        )

    def open_pipeline(self) -> Pipeline:
        """The pipeline, its project file read now (close it after use)."""
        return Pipeline(load_project(self.project_file), self.pipeline_name, self.state_dir)

    def clients(self, pipeline: Pipeline) -> ResourceClients:
        """The clients ``connector_core`` reaches the pipeline's connections and sink through."""
        connections = {}
        for name in pipeline.spec.connections:
            resource = getattr(self, connection_field(name), None)
            if resource is None:
                raise LookupError(
                    f"ConnectorsResource of pipeline {self.pipeline_name} has no connection {name!r}; "
                    "build it with ConnectorsResource.for_pipeline"
                )
            connections[name] = resource
        return ResourceClients(pipeline, connections, self.sink)

    def ingest(
        self, context: dg.AssetExecutionContext
    ) -> Iterator[dg.MaterializeResult | dg.AssetObservation | dg.AssetCheckResult]:
        """Ingest the tables the run selected continuously, then materialize what was committed.

        The run streams (:func:`connector_core.streaming.ingest_continuously`): batch after batch from each active
        connector of the selected tables, each committed as it is read, until no connector may ingest (paused,
        finished, given up; re-read between batches), the run is terminated (the batch being committed is
        finished first) or the pipeline's ``max_run_seconds`` passed; the sensor then requests the next run.
        Every ``PROGRESS_SECONDS`` each table gets an ``AssetObservation`` of its progress; at the end a
        ``MaterializeResult`` per table that ingested (:mod:`connector_assets.metadata`: ``dagster/row_count``,
        ``dagster/table_name``, ``dagster/column_schema``, records, records/s, parse errors, buffered records,
        commits, a table of its connectors, their stats). Each completed UTC hour of a selected table's statistics
        is recorded in the instance as one ``AssetObservation`` (as the run starts, when the hour changes while it
        streams, and at its end; :class:`connector_assets.metadata.HourlyObservations`).
        A table with no active connector yields an ``AssetObservation`` saying why
        (``connectors/skipped_reason``) and a warning in the run log. Each table's result is followed by its
        selected asset checks (``hourly_volume``, ``parse_error_rate``, ``backup_age``; WARN, never failing the run).
        """
        keys = table_asset_keys(context.assets_def, self.pipeline_name)
        if not keys:
            raise dg.DagsterInvariantViolationError(
                f"assets {context.assets_def.node_def.name} hold no table of pipeline {self.pipeline_name}: "
                "build them with @connector_assets for that pipeline"
            )
        pipeline = self.open_pipeline()
        try:
            clients = self.clients(pipeline)
            restore_before_write(pipeline, clients)  # a lost state folder comes back before the run reads it
            backup_warning = self._check_backups(context, pipeline, clients)
            selected = {table: key for table, key in keys.items() if key in context.selected_asset_keys}
            # The DuckDB file is opened per batch: runs of other tables and the CLI write it meanwhile.
            with IngestSession(pipeline, clients, log=context.log.info, hold_connection=False) as session:
                yield from self._stream(context, pipeline, session, selected, backup_warning)
        except Exception as exc:  # the run's error holds no secret, and not its driver's text with one
            raise dg.Failure(
                description=pipeline.redact(f"{self.pipeline_name}: {type(exc).__name__}: {exc}"), allow_retries=False
            ) from None
        finally:
            pipeline.close()

    def _stream(
        self,
        context: dg.AssetExecutionContext,
        pipeline: Pipeline,
        session: IngestSession,
        selected: dict[str, dg.AssetKey],
        backup_warning: str | None,
    ) -> Iterator[dg.MaterializeResult | dg.AssetObservation | dg.AssetCheckResult]:
        """The continuous loop over ``selected`` tables, its progress observations and final results, each table's
        followed by its selected asset checks (:func:`connector_assets.checks.table_check_results`); the selected
        tables' completed hours are recorded before, during and after it (:meth:`_report_hours`)."""
        warning = {BACKUP_WARNING_KEY: dg.MetadataValue.text(backup_warning)} if backup_warning else {}
        hours = HourlyObservations(context.instance, pipeline, selected)
        self._report_hours(context, hours)
        checked = {check.asset_key for check in context.selected_asset_check_keys}
        for table, key in table_asset_keys(context.assets_def, self.pipeline_name).items():
            if key in checked and key not in selected.values():  # the checks were selected without their table
                yield from table_check_results(context, pipeline, session.clients, table, key, None)
        active = []
        for table, key in selected.items():
            reason = table_idle_reason(pipeline, table)
            if reason is None:
                active.append(table)
                continue
            context.log.warning(f"{self.pipeline_name}.{table}: nothing ingested: {reason}")
            yield dg.AssetObservation(asset_key=key, metadata={"connectors/skipped_reason": reason, **warning})
            yield from table_check_results(context, pipeline, session.clients, table, key)
        if not active:
            return
        spec = pipeline.spec
        stop, totals = StopRequest(), StreamTotals()
        interrupts = _Interrupts(stop)
        context.log.info(
            f"{self.pipeline_name}: streaming {', '.join(active)} (commit interval {spec.commit_interval:g} s, "
            f"at most {spec.max_run_seconds:g} s)"
        )
        rounds = ingest_continuously(
            pipeline,
            session,
            stop,
            tables=active,
            commit_interval=spec.commit_interval,
            max_seconds=spec.max_run_seconds,
            retry_failed=False,  # a failing source is read once per run; the failure rule and the sensor decide
            check=lambda: _terminated(context),
            batch_guard=interrupts.deferred,
            interrupts=(KeyboardInterrupt, dg.DagsterExecutionInterruptedError),
        )
        reported = time.monotonic()
        try:
            for round_ in rounds:
                totals.add(round_, pipeline)
                self._report_hours(context, hours)  # nothing to do until the UTC hour changes
                if time.monotonic() - reported >= PROGRESS_SECONDS:
                    reported = time.monotonic()
                    yield from self._progress(context, totals, selected, active)
        except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError):  # terminated while Dagster held the step
            interrupts.received = True
            stop.request(TERMINATED)
        if (stop.reason or "").startswith("interrupted"):  # raised between batches; the loop stopped on it
            interrupts.received = True
            stop.reason = TERMINATED
        context.log.info(f"{self.pipeline_name}: {totals.records} records in {totals.batches} batches; {stop.reason}")
        results: list[dg.MaterializeResult | dg.AssetObservation | dg.AssetCheckResult] = []
        with interrupts.deferred():  # the results are computed whole, then yielded (see _Interrupts)
            if stop.reason == TERMINATED and not interrupts.received:
                interrupts.await_signal(TERMINATION_SIGNAL_SECONDS)
            self._report_hours(context, hours)
            for table in active:
                key = selected[table]
                if table not in totals.tables():
                    metadata = {"connectors/skipped_reason": stop.reason or "stopped", **warning}
                    results.append(dg.AssetObservation(asset_key=key, metadata=metadata))
                    results.extend(table_check_results(context, pipeline, session.clients, table, key))
                    continue
                report = totals.table_report(table, _row_count(session, table, context))
                spec = context.assets_def.specs_by_key[key]
                commits = totals.commits.get(table, 0)
                results.append(self._materialize(pipeline, session, report, spec, commits, stop.reason, backup_warning))
                parse_errors = sum(batch.parse_errors for batch in report.batches)
                results.extend(
                    table_check_results(context, pipeline, session.clients, table, key, (report.records, parse_errors))
                )
                context.log.info(
                    f"{self.pipeline_name}.{table}: {report.records} records in {report.seconds:.3f}s, "
                    f"{report.row_count} rows in the table"
                )
        yield from results

    def _progress(
        self,
        context: dg.AssetExecutionContext,
        totals: StreamTotals,
        selected: dict[str, dg.AssetKey],
        active: list[str],
    ) -> Iterator[dg.AssetObservation]:
        """One observation per streaming table: records committed so far in this run and their rate."""
        for table in active:
            report = totals.table_report(table)
            context.log.info(f"{self.pipeline_name}.{table}: {report.records} records so far")
            yield dg.AssetObservation(
                asset_key=selected[table],
                metadata={
                    "connectors/records": dg.MetadataValue.int(report.records),
                    "connectors/records_per_second": dg.MetadataValue.float(
                        round(report.records / report.seconds, 3) if report.seconds else 0.0
                    ),
                    "connectors/commits": dg.MetadataValue.int(totals.commits.get(table, 0)),
                },
            )

    def _report_hours(self, context: dg.AssetExecutionContext, hours: HourlyObservations) -> None:
        """Record the completed hours not observed yet (a failure to record is a warning: the run goes on)."""
        try:
            for observation in hours.report():
                context.log.info(
                    f"{self.pipeline_name}: hour {observation.metadata['connectors/hour'].value} of "
                    f"{observation.asset_key.to_user_string()} recorded"
                )
        except Exception as exc:
            message = hours.pipeline.redact(f"{type(exc).__name__}: {exc}")
            context.log.warning(f"{self.pipeline_name}: hourly statistics not recorded: {message}")

    def _check_backups(
        self, context: dg.AssetExecutionContext, pipeline: Pipeline, clients: ResourceClients
    ) -> str | None:
        """The 24-hour rule as a run (re)starts its connectors. A failed upload does not fail the run: it is an event
        in the pipeline's state, a warning in the run log, the run tag ``connectors/backup_check=failed`` and
        ``connectors/backup_warning`` on each table's result (returned here); the next check retries it."""
        backups = run_backup_check(pipeline, clients)
        if backups.ok:
            return None
        warning = f"backup check failed (the next check retries it): {backups.message}"
        context.log.warning(warning)
        context.instance.add_run_tags(context.run_id, {BACKUP_CHECK_TAG: "failed"})
        return warning

    def _materialize(
        self,
        pipeline: Pipeline,
        session: IngestSession,
        report: TableReport,
        spec: dg.AssetSpec,
        commits: int,
        stopped_reason: str | None,
        backup_warning: str | None,
    ) -> dg.MaterializeResult:
        """The result of one table's run (:func:`connector_assets.metadata.table_materialization_metadata`, the
        metadata ``connectors run`` records too)."""
        metadata = table_materialization_metadata(
            pipeline,
            report,
            spec,
            sink_table_schema(session, report.table, spec),
            commits=commits,
            stopped_reason=stopped_reason or "stopped",
            backup_warning=backup_warning,
        )
        return dg.MaterializeResult(asset_key=spec.key, metadata=metadata)


def sink_table_schema(session: IngestSession, table: str, spec: dg.AssetSpec) -> Any:
    """The sink table's Arrow schema when the spec declares no ``dagster/column_schema``, else ``None``; the
    database is let go afterwards."""
    if "dagster/column_schema" in spec.metadata:
        return None
    try:
        return session.sink.table_schema(table)
    finally:
        session.release_sink()


def _row_count(session: IngestSession, table: str, context: dg.AssetExecutionContext) -> int:
    """Rows in the sink table (0, logged, when the sink cannot say); the database is let go afterwards."""
    try:
        return session.sink.row_count(table)
    except Exception as exc:  # an unreachable sink must not hide what the run committed
        context.log.warning(f"cannot count rows of {table}: {exc}")
        return 0
    finally:
        session.release_sink()


def _terminated(context: dg.AssetExecutionContext) -> str | None:
    """Why the run should stop when it was terminated (asked to cancel) in the instance, else ``None``."""
    run = context.instance.get_run_by_id(context.run_id)
    if run is not None and run.status in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED):
        return TERMINATED
    return None


class _Interrupts:
    """The interrupt Dagster sends the step of a terminated run (SIGINT/SIGTERM, raised as
    ``DagsterExecutionInterruptedError`` while user code runs; captured and raised at the step's next resume while
    Dagster handles an event), deferred where it would cost committed work.

    :meth:`deferred` wraps each batch (the batch being committed is finished, then the loop stops) and the
    computing of the final results; they are yielded only after that, so an interrupt cannot cut a table's
    results off halfway. A run marked terminated before its interrupt came (the loop saw the status first) waits
    up to ``TERMINATION_SIGNAL_SECONDS`` for it, so that it does not land between the results. Off the main thread
    (``execute_in_process`` in a thread) no signal is delivered: the run's status stops the loop.
    """

    def __init__(self, stop: StopRequest):
        self.stop = stop
        self.received = False

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Capture interrupts inside the block; one that came makes the loop stop (``received``)."""
        with capture_interrupts():
            try:
                yield
            finally:
                if pop_captured_interrupt():
                    self.received = True
                    self.stop.request(TERMINATED)

    def await_signal(self, seconds: float) -> None:
        """Inside :meth:`deferred` on the main thread: wait up to ``seconds`` for the interrupt."""
        if threading.current_thread() is not threading.main_thread():
            return
        deadline = time.monotonic() + seconds
        while not check_captured_interrupt() and time.monotonic() < deadline:
            time.sleep(0.02)


def with_signature(body: F, **parameters: Any) -> F:
    """``body(context, **kwargs)`` shown to Dagster with the typed parameters ``parameters`` (name -> type).

    Dagster gives a resource to the parameter named by its key; these keys carry the pipeline name
    (``{pipeline}__connectors``), so a factory names the parameter here. Dagster reads an explicit
    ``__signature__`` for parameters and their types alike.
    """
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    body.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, kind, annotation=annotation) for name, annotation in parameters.items()]
    )
    return body
