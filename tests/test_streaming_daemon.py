"""End to end with the Dagster daemon (DESIGN §10): the orchestration sensor launches a streaming run through the real
run launcher; ``max_run_seconds`` ends it and the sensor launches the next; terminating that one (Dagster interrupts
its step with a signal) commits the batch in progress, materializes what it committed and ends the step cleanly."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster._core.scheduler.instigation import TickStatus
from dagster_helpers import lifecycle, opened_pipeline
from fixtures_services import dagster_storage_url, fresh_database

REPO = Path(__file__).resolve().parent.parent
PROJECT = """
pipelines:
  demo:
    sink: {kind: duckdb, path: demo.duckdb}
    commit_interval: 0.5
    max_run_seconds: 5
    tables:
      ticks:
        columns: {n: BIGINT}
        connectors:
          - name: live
            transport: {name: datagen, config: {plan: [{rate: 500}]}}
"""
TICKS = dg.AssetKey(["demo", "ticks"])


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``condition`` until it gives something true, and return it; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)
    return value


FAST_TICKS = """
import functools

import connector_assets.definitions as definitions

# The daemon evaluates sensors every 5 s at best; the default minimum interval (10 s) would halve that.
definitions.build_orchestration_sensor = functools.partial(
    definitions.build_orchestration_sensor, minimum_interval_seconds=1
)
defs = definitions.build_definitions()
"""


class Daemon:
    """``dagster-daemon run`` on the project's code location (sensor ticks every ~5 s), with an instance in a
    temporary DAGSTER_HOME; it may be killed and started again."""

    def __init__(self, project_file: Path, dagster_yaml: str = "telemetry: {enabled: false}\n") -> None:
        folder = project_file.parent
        self.home = folder / "dagster_home"
        self.home.mkdir()
        (self.home / "dagster.yaml").write_text(dagster_yaml)
        (folder / "fast_ticks.py").write_text(FAST_TICKS)
        self.workspace = folder / "workspace.yaml"
        self.workspace.write_text(
            textwrap.dedent(f"""
            load_from:
              - python_file:
                  relative_path: {folder / "fast_ticks.py"}
                  working_directory: {REPO}
                  location_name: connectors
            """)
        )
        self.folder = folder
        self.env = {**os.environ, "DAGSTER_HOME": str(self.home), "CONNECTORS_PROJECT_FILE": str(project_file)}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start the daemon (its log: ``daemon-N.log`` beside the project file)."""
        assert self.process is None
        self.starts += 1
        with open(self.folder / f"daemon-{self.starts}.log", "wb") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(self.workspace)],
                cwd=self.folder,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its code server and runs are in its process group, stopped with it
            )

    def kill(self) -> None:
        """SIGKILL the daemon's process group: the daemon, its code server and the runs it launched."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after 20 s."""
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


@pytest.fixture
def daemon(project_file: Path, daemon_storage: str) -> Iterator[dg.DagsterInstance]:
    """A started :class:`Daemon` on the module's project, its instance stored in a temporary folder or (with
    ``--dagster-storage`` postgres or both) in a fresh PostgreSQL database; yields its instance."""
    with contextlib.ExitStack() as stack:
        dagster_yaml = "telemetry: {enabled: false}\n"
        if daemon_storage == "postgres":
            url = dagster_storage_url(stack.enter_context(fresh_database("dagster_daemon")))
            dagster_yaml += f"storage:\n  postgres:\n    postgres_url: {url}\n"
        process = Daemon(project_file, dagster_yaml)
        stack.callback(process.stop)
        instance = stack.enter_context(dg.DagsterInstance.from_config(str(process.home)))
        process.start()  # after the instance made its storage: both making it at once fails one of them
        yield instance


def ingest_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """The ingest runs, oldest first."""
    return list(reversed(instance.get_runs(filters=dg.RunsFilter(job_name="demo__ingest"))))


def commits(project_file: Path) -> int:
    with opened_pipeline(project_file) as pipeline:
        return pipeline.connector("ticks", "live").state.position()[1]


def materialization_of(instance: dg.DagsterInstance, run_id: str) -> dict[str, object]:
    (event,) = [
        record.event_log_entry
        for record in instance.fetch_materializations(TICKS, limit=100).records
        if record.run_id == run_id
    ]
    metadata = event.asset_materialization.metadata
    return {key: value.value for key, value in metadata.items()}


def test_the_daemon_streams_run_after_run_and_a_terminated_run_ends_cleanly(
    project_file: Path, daemon: dg.DagsterInstance
) -> None:
    instance = daemon
    lifecycle(project_file, "setup", confirm_prerequisites=True)

    first = wait_for(lambda: ingest_runs(instance)[:1], 60, "the sensor's first run")[0]
    wait_for(lambda: instance.get_run_by_id(first.run_id).is_finished, 60, "max_run_seconds to end the first run")
    assert instance.get_run_by_id(first.run_id).status == dg.DagsterRunStatus.SUCCESS
    assert "time limit" in materialization_of(instance, first.run_id)["connectors/stopped_reason"]

    second = wait_for(lambda: ingest_runs(instance)[1:2], 60, "the sensor's next run")[0]
    at_start = commits(project_file)
    wait_for(lambda: commits(project_file) >= at_start + 2, 60, "two commits of the next run")
    assert instance.run_launcher.terminate(second.run_id)
    wait_for(lambda: instance.get_run_by_id(second.run_id).is_finished, 30, "the terminated run to end")
    assert instance.get_run_by_id(second.run_id).status == dg.DagsterRunStatus.CANCELED
    steps = {
        entry.dagster_event.event_type_value
        for entry in instance.all_logs(second.run_id)
        if entry.dagster_event is not None and entry.dagster_event.is_step_event
    }
    assert "STEP_SUCCESS" in steps and "STEP_FAILURE" not in steps, "the interrupt ended the step cleanly"
    metadata = materialization_of(instance, second.run_id)
    assert metadata["connectors/stopped_reason"] == "the run was terminated" and metadata["connectors/records"] > 0

    lifecycle(project_file, "pause")  # no more runs; one that started meanwhile stops within a batch
    wait_for(lambda: all(run.is_finished for run in ingest_runs(instance)), 30, "every run to end")
    with opened_pipeline(project_file) as pipeline:
        connector_id = pipeline.connector("ticks", "live").connector_id
    with duckdb.connect(str(project_file.parent / "demo.duckdb"), read_only=True) as conn:
        rows, distinct = conn.execute("SELECT count(*), count(DISTINCT n) FROM main.ticks").fetchone()
        (marked,) = conn.execute(
            "SELECT total_records FROM main._connector_positions WHERE connector_id = ?", [connector_id]
        ).fetchone()
    assert rows == distinct == marked, "nothing lost, nothing written twice"


BACKFILL_THEN_LIVE = """
pipelines:
  demo:
    sink: {kind: duckdb, path: demo.duckdb}
    commit_interval: 0.3
    max_run_seconds: 3
    tables:
      ticks:
        columns: {n: BIGINT}
        connectors:
          - name: backfill
            labels: [history]
            transport: {name: datagen, config: {plan: [{limit: 5000}]}}
          - name: live
            start_after: history
            transport:
              name: datagen
              config: {plan: [{rate: 300, fields: {n: {range: [1000000, 1000000000]}}}]}
"""
BACKFILL = 5000
LIVE_FROM = 1_000_000
#: Run monitoring (every second) ends a run left STARTED by a killed worker after the job's dagster/max_runtime.
MONITORED = "telemetry: {enabled: false}\nrun_monitoring: {enabled: true, poll_interval_seconds: 1}\n"
CONNECTORS = [sys.executable, "-m", "connector_cli.main"]
STARTED = dg.DagsterRunStatus.STARTED


def cli(project_file: Path, *args: str) -> None:
    """Run a ``connectors`` command on the project file; it must exit 0."""
    done = subprocess.run(
        [*CONNECTORS, "--project-file", str(project_file), *args], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def live_rows(project_file: Path) -> int:
    """Records the live connector committed (its state database mirrors the sink's mark, written in the same
    transaction as the rows; the DuckDB file itself is locked by the writing run)."""
    with opened_pipeline(project_file) as pipeline:
        return pipeline.connector("ticks", "live").state.metrics().total_records


def live_is_running(project_file: Path) -> bool:
    with opened_pipeline(project_file) as pipeline:
        return pipeline.connector("ticks", "live").state.running


def grows(project_file: Path, by: int = 300) -> Callable[[], bool]:
    """A condition: the live rows grew by ``by`` since the condition was made."""
    start = live_rows(project_file)
    return lambda: live_rows(project_file) >= start + by


def sensor_ticks_since(instance: dg.DagsterInstance, timestamp: float) -> list[object]:
    """The orchestration sensor's ticks evaluated after ``timestamp``."""
    states = [s for s in instance.all_instigator_state() if s.name == "demo__orchestration"]
    return [
        tick
        for state in states
        for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=20)
        if tick.timestamp > timestamp and tick.status != TickStatus.STARTED
    ]


def test_backfill_then_live_through_pause_resume_and_a_killed_daemon(tmp_path: Path) -> None:
    """The backfill finishes, the sensor releases the start_after connector, live rows flow; a pause from the CLI
    stops ingestion and a resume continues it; the daemon's process group is killed with SIGKILL during a run and
    started again. Every record lands once, no run key is launched twice and no two runs of the table overlap."""
    project_file = tmp_path / "connectors.yaml"
    project_file.write_text(textwrap.dedent(BACKFILL_THEN_LIVE))
    cli(project_file, "setup", "demo", "--confirm-prerequisites")
    daemon = Daemon(project_file, MONITORED)
    try:
        with dg.DagsterInstance.from_config(str(daemon.home)) as instance:
            daemon.start()  # after the instance made its storage: both making it at once fails one of them
            wait_for(lambda: live_is_running(project_file), 40, "the sensor to release the live connector")
            wait_for(grows(project_file), 20, "live rows")

            paused_at = time.time()
            cli(project_file, "pipeline", "demo", "pause")
            wait_for(
                lambda: (
                    sensor_ticks_since(instance, paused_at) and all(run.is_finished for run in ingest_runs(instance))
                ),
                20,
                "a tick after the pause and the run to stop on it",
            )
            settled, rows, runs = time.time(), live_rows(project_file), len(ingest_runs(instance))
            wait_for(lambda: len(sensor_ticks_since(instance, settled)) >= 2, 20, "two more sensor ticks while paused")
            assert live_rows(project_file) == rows, "nothing is ingested while paused"
            assert len(ingest_runs(instance)) == runs, "no run starts while paused"

            cli(project_file, "pipeline", "demo", "resume")
            wait_for(grows(project_file), 20, "live rows after the resume")

            def young_run() -> list[dg.DagsterRun]:
                """A STARTED run less than 2 s old: far from its end (3 s of streaming after its start-up)."""
                records = instance.get_run_records(dg.RunsFilter(job_name="demo__ingest", statuses=[STARTED]))
                return [r.dagster_run for r in records if r.start_time and time.time() - r.start_time < 2]

            in_progress = wait_for(young_run, 20, "a run to start")[0]
            wait_for(grows(project_file, 30), 10, "the run to commit live rows")
            assert instance.get_run_by_id(in_progress.run_id).status == STARTED, "it is still streaming"
            assert in_progress.tags["dagster/max_runtime"] == "16", "2 * max_run_seconds + 10"
            daemon.kill()  # the run worker dies with it, its run left STARTED
            assert not instance.get_run_by_id(in_progress.run_id).is_finished
            daemon.start()
            wait_for(
                lambda: instance.get_run_by_id(in_progress.run_id).is_finished, 40, "run monitoring to end the orphan"
            )
            wait_for(grows(project_file), 30, "live rows after the restart")

            cli(project_file, "pipeline", "demo", "pause")
            wait_for(lambda: all(run.is_finished for run in ingest_runs(instance)), 15, "every run to end")
            daemon.stop()
            records = [instance.get_run_record_by_id(run.run_id) for run in ingest_runs(instance)]
    finally:
        daemon.stop()

    assert instance.get_run_by_id(in_progress.run_id).status == dg.DagsterRunStatus.FAILURE
    with opened_pipeline(project_file) as pipeline:
        ids = {name: pipeline.connector("ticks", name).connector_id for name in ("backfill", "live")}
        committed = pipeline.connector("ticks", "live").state.metrics().total_records
    with duckdb.connect(str(project_file.parent / "demo.duckdb"), read_only=True) as conn:
        backfill = conn.execute(
            "SELECT count(*), count(DISTINCT n), min(n), max(n) FROM main.ticks WHERE n < ?", [LIVE_FROM]
        ).fetchone()
        live = conn.execute(
            "SELECT count(*), count(DISTINCT n), min(n), max(n) FROM main.ticks WHERE n >= ?", [LIVE_FROM]
        ).fetchone()
        marks = dict(conn.execute("SELECT connector_id, total_records FROM main._connector_positions").fetchall())
    assert backfill == (BACKFILL, BACKFILL, 0, BACKFILL - 1), "every backfill record exactly once"
    assert marks[ids["backfill"]] == BACKFILL
    count, distinct, first, last = live
    assert count == distinct == marks[ids["live"]] == committed, "no live record lost or written twice"
    assert (first, last) == (LIVE_FROM, LIVE_FROM + count - 1), "the live records are the contiguous prefix"

    keys = [record.dagster_run.tags.get("dagster/run_key") for record in records]
    assert None not in keys and len(set(keys)) == len(keys), "no run key was launched twice"
    spans = sorted((record.start_time, record.end_time) for record in records if record.start_time is not None)
    assert all(end is not None for _, end in spans)
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans)), "runs never overlap"
