"""The production instance of ``deploy/dagster.yaml`` on PostgreSQL: it loads, stores events, launches runs with the
DefaultRunLauncher, and queues a second run of a table while the first is in progress; the orchestration sensor
relies on that queue where the instance has it, and on its own query of unfinished runs otherwise."""

from __future__ import annotations

import runpy
import textwrap
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.run_coordinator import SubmitRunContext
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import PythonFileTarget
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from dagster_helpers import lifecycle
from fixtures_services import fresh_database, wait_for

from connector_assets.names import PIPELINE_TAG, TABLE_TAG
from sensors import queue_limits_one_run_per_table

REPO = Path(__file__).resolve().parent.parent
DEPLOY_YAML = REPO / "deploy" / "dagster.yaml"

PROJECT = """
pipelines:
  demo:
    tables:
      price:
        connectors:
          - name: backfill
            transport: {name: datagen, config: {plan: [{limit: 10}]}}
      archive:
        connectors:
          - name: old
            transport: {name: datagen, config: {plan: [{limit: 2}]}}
"""

#: A code location whose one job waits until its gate file exists (so a run stays in progress as long as needed).
GATED_JOB = """
import time
from pathlib import Path

import dagster as dg


class Gate(dg.Config):
    path: str


@dg.op
def wait_for_gate(config: Gate) -> None:
    deadline = time.monotonic() + 120
    while not Path(config.path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {config.path} never opened")
        time.sleep(0.05)


@dg.job
def gated() -> None:
    wait_for_gate()


defs = dg.Definitions(jobs=[gated])
"""


@pytest.fixture(scope="module")
def production_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dg.DagsterInstance]:
    """``deploy/dagster.yaml`` as ``$DAGSTER_HOME/dagster.yaml``, its ``DAGSTER_PG_*`` variables naming a fresh
    database on the local server (dropped afterwards).

    One test-only line is added: the code servers a test starts are waited for when it ends, so that none is left
    behind (retrying a database that is gone).
    """
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text(
        DEPLOY_YAML.read_text() + "\ncode_servers: {wait_for_local_processes_on_shutdown: true}  # tests only\n"
    )
    with fresh_database("dagster_prod") as params, pytest.MonkeyPatch.context() as env:
        env.setenv("DAGSTER_HOME", str(home))
        env.setenv("DAGSTER_PG_HOST", str(params.get("host", "127.0.0.1")))
        env.setenv("DAGSTER_PG_PORT", str(params.get("port", 5432)))
        env.setenv("DAGSTER_PG_USER", str(params.get("user", "postgres")))
        env.setenv("DAGSTER_PG_PASSWORD", str(params.get("password", "")))
        env.setenv("DAGSTER_PG_DB", str(params["dbname"]))
        with dg.DagsterInstance.get() as instance:
            yield instance


def test_the_deploy_dagster_yaml_is_a_postgres_instance_with_a_run_queue_and_no_telemetry(
    production_instance: dg.DagsterInstance,
) -> None:
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    instance = production_instance
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert instance.run_storage._engine.url.drivername == "postgresql+psycopg2"  # noqa: SLF001
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"
    assert queue_limits_one_run_per_table(instance)
    assert instance.run_monitoring_enabled
    assert not instance.telemetry_enabled


def test_a_run_in_process_stores_its_events_in_postgres(production_instance: dg.DagsterInstance) -> None:
    @dg.asset
    def tiny() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"rows": 3})

    result = dg.materialize([tiny], instance=production_instance, tags={TABLE_TAG: "tiny"})
    assert result.success
    run = production_instance.get_run_by_id(result.run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
    events = [e.dagster_event.event_type for e in production_instance.all_logs(result.run_id) if e.dagster_event]
    assert {dg.DagsterEventType.RUN_START, dg.DagsterEventType.ASSET_MATERIALIZATION} <= set(events)
    assert events[-1] == dg.DagsterEventType.RUN_SUCCESS
    latest = production_instance.get_latest_materialization_event(dg.AssetKey("tiny"))
    assert latest is not None and latest.run_id == result.run_id
    assert latest.asset_materialization.metadata["rows"].value == 3


@pytest.fixture
def gated_workspace(production_instance: dg.DagsterInstance, tmp_path: Path) -> Iterator[WorkspaceProcessContext]:
    """A code location (its own gRPC server, as the daemon runs it) holding the job ``gated``."""
    code = tmp_path / "gated.py"
    code.write_text(textwrap.dedent(GATED_JOB))
    target = PythonFileTarget(
        python_file=str(code), attribute="defs", working_directory=str(tmp_path), location_name="gated"
    )
    with create_test_daemon_workspace_context(target, production_instance) as context:
        yield context


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Gate files of the runs ``first``, ``second`` and ``other``; all opened at the end, so that a failed test
    leaves no run worker waiting."""
    files = {name: tmp_path / f"gate-{name}" for name in ("first", "second", "other")}
    yield files
    for file in files.values():
        file.touch()


def test_a_second_run_of_a_table_waits_in_the_queue_until_the_first_ends(
    production_instance: dg.DagsterInstance,
    gated_workspace: WorkspaceProcessContext,
    gates: dict[str, Path],
    tmp_path: Path,
) -> None:
    instance = production_instance
    request_context = gated_workspace.create_request_context()
    location = request_context.get_code_location("gated")
    remote_job = location.get_repository("__repository__").get_full_job("gated")
    job_def = runpy.run_path(str(tmp_path / "gated.py"))["gated"]

    def submit(table: str, gate: Path) -> str:
        run = instance.create_run_for_job(
            job_def=job_def,
            run_config={"ops": {"wait_for_gate": {"config": {"path": str(gate)}}}},
            tags={PIPELINE_TAG: "gated", TABLE_TAG: table},
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
        )
        instance.submit_run(run.run_id, request_context)
        return run.run_id

    first, second, other = (
        submit("price", gates["first"]),
        submit("price", gates["second"]),
        submit("archive", gates["other"]),
    )

    def status(run_id: str) -> dg.DagsterRunStatus:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        return run.status

    assert {status(run_id) for run_id in (first, second, other)} == {dg.DagsterRunStatus.QUEUED}

    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)

    def dequeue() -> None:
        list(daemon.run_iteration(gated_workspace))

    in_progress = {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED}
    dequeue()
    assert status(first) in in_progress, "the first run of price is launched"
    assert status(other) in in_progress, "a run of another table goes on in parallel"
    assert status(second) == dg.DagsterRunStatus.QUEUED, "the second run of price waits"
    wait_for(lambda: status(first) == dg.DagsterRunStatus.STARTED, 60, "the first run to start")
    dequeue()
    assert status(second) == dg.DagsterRunStatus.QUEUED, "it still waits while the first is in progress"

    gates["first"].touch()
    wait_for(lambda: status(first) == dg.DagsterRunStatus.SUCCESS, 60, "the first run to succeed")
    dequeue()
    assert status(second) in in_progress | {dg.DagsterRunStatus.SUCCESS}, "the queue launches it once the first ended"
    gates["second"].touch()
    gates["other"].touch()
    for run_id in (second, other):
        wait_for(lambda run_id=run_id: status(run_id) == dg.DagsterRunStatus.SUCCESS, 60, f"run {run_id} to succeed")
    events = {e.dagster_event.event_type for e in instance.all_logs(second) if e.dagster_event is not None}
    assert {
        dg.DagsterEventType.RUN_ENQUEUED,
        dg.DagsterEventType.RUN_START,
        dg.DagsterEventType.STEP_SUCCESS,
        dg.DagsterEventType.RUN_SUCCESS,
    } <= events, "the run worker (a subprocess of the code server) wrote its events to PostgreSQL"
    started = {run_id: instance.get_run_record_by_id(run_id) for run_id in (first, second)}
    assert started[second].start_time >= started[first].end_time, "the two runs of price never overlapped"


def requested_tables(defs: dg.Definitions, instance: dg.DagsterInstance) -> set[str]:
    """Tables the orchestration sensor requests a run for on one tick."""
    tick = defs.resolve_sensor_def("demo__orchestration").evaluate_tick(dg.build_sensor_context(instance=instance))
    return {request.tags[TABLE_TAG] for request in tick.run_requests or []}


def run_of(
    defs: dg.Definitions, instance: dg.DagsterInstance, table: str, status: dg.DagsterRunStatus
) -> dg.DagsterRun:
    """A run of ``demo__ingest`` for ``table`` in ``status`` (QUEUED: submitted to the run queue), as the sensor
    would have requested it."""
    job = defs.resolve_job_def("demo__ingest")
    tags = {PIPELINE_TAG: "demo", TABLE_TAG: table}
    if status != dg.DagsterRunStatus.QUEUED:
        return instance.create_run_for_job(job, status=status, tags=tags)
    # A queued run names the code location the daemon will load it from; no daemon runs here, any will do.
    location = InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="connector_assets.definitions"), "here")
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), job.name)
    run = instance.create_run_for_job(job, status=dg.DagsterRunStatus.NOT_STARTED, tags=tags, remote_job_origin=origin)
    return instance.run_coordinator.submit_run(SubmitRunContext(run, workspace=None))  # type: ignore[arg-type]


def test_with_the_queue_limit_the_sensor_leaves_a_table_in_progress_to_the_queue(
    defs: dg.Definitions, production_instance: dg.DagsterInstance, project_file: Path
) -> None:
    instance = production_instance
    lifecycle(project_file, "setup", confirm_prerequisites=True)
    in_progress = run_of(defs, instance, "archive", dg.DagsterRunStatus.STARTED)
    try:
        assert requested_tables(defs, instance) == {"price", "archive"}, "the queue holds the next run of archive"
        waiting = run_of(defs, instance, "archive", dg.DagsterRunStatus.QUEUED)
        try:
            assert requested_tables(defs, instance) == {"price"}, "one run of archive already waits in the queue"
        finally:
            instance.delete_run(waiting.run_id)
    finally:
        instance.delete_run(in_progress.run_id)


def test_without_the_queue_limit_the_sensor_skips_a_table_in_progress(
    defs: dg.Definitions, instance: dg.DagsterInstance, project_file: Path
) -> None:
    assert not queue_limits_one_run_per_table(instance)
    lifecycle(project_file, "setup", confirm_prerequisites=True)
    in_progress = run_of(defs, instance, "archive", dg.DagsterRunStatus.STARTED)
    try:
        assert requested_tables(defs, instance) == {"price"}
    finally:
        instance.delete_run(in_progress.run_id)


@pytest.mark.parametrize(
    ("limits", "one_per_table"),
    [
        ([{"key": TABLE_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}], True),
        ([{"key": TABLE_TAG, "limit": 1}], True),  # one table run at a time overall: stricter, still enough
        ([{"key": TABLE_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 2}], False),
        ([{"key": TABLE_TAG, "value": "price", "limit": 1}], False),  # one table only
        ([{"key": PIPELINE_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}], False),
        ([], False),
    ],
)
def test_which_tag_limits_the_sensor_relies_on(limits: list[dict[str, object]], one_per_table: bool) -> None:
    overrides = {"concurrency": {"runs": {"tag_concurrency_limits": limits}}}
    with dg.instance_for_test(overrides=overrides) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert queue_limits_one_run_per_table(instance) is one_per_table
