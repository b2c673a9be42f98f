"""Continuous ingestion (connector_core/streaming.py): one long Dagster run commits a live connector batch after
batch until it is paused, terminated or its time is up; `connectors run --follow` until Ctrl-C/SIGTERM; runs of two
tables write one DuckDB file at once (it is opened per batch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster_helpers import lifecycle, opened_pipeline

import connector_assets.resource
from connector_assets import build_definitions
from connector_core.project import ProjectFileError, load_project

REPO = Path(__file__).resolve().parent.parent
CONNECTORS = [sys.executable, "-m", "connector_cli.main"]
PROJECT = """
pipelines:
  demo:
    sink: {{kind: duckdb, path: demo.duckdb}}
    commit_interval: 0.2
    max_run_seconds: {max_run_seconds}
    tables:
      ticks:
        columns: {{n: BIGINT}}
        connectors:
          - name: live
            transport: {{name: datagen, config: {{plan: [{{rate: 400}}]}}}}
      tocks:
        columns: {{n: BIGINT}}
        connectors:
          - name: live
            transport: {{name: datagen, config: {{plan: [{{rate: 400}}]}}}}
"""
TICKS = dg.AssetKey(["demo", "ticks"])
TOCKS = dg.AssetKey(["demo", "tocks"])


def write_project(folder: Path, max_run_seconds: float = 60) -> Path:
    path = folder / "connectors.yaml"
    path.write_text(PROJECT.format(max_run_seconds=max_run_seconds))
    lifecycle(path, "setup", confirm_prerequisites=True)
    return path


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def commits(project_file: Path, table: str) -> int:
    """The connector's committed batches (its state database's mirror of the sink's mark)."""
    with opened_pipeline(project_file) as pipeline:
        return pipeline.connector(table, "live").state.position()[1]


def rows_and_mark(project_file: Path, table: str) -> tuple[int, int, int]:
    """Rows in the sink table, distinct ``n`` values, and the records the connector's mark says were committed."""
    with duckdb.connect(str(project_file.parent / "demo.duckdb"), read_only=True) as conn:
        rows, distinct = conn.execute(f"SELECT count(*), count(DISTINCT n) FROM main.{table}").fetchone()
        with opened_pipeline(project_file) as pipeline:
            connector_id = pipeline.connector(table, "live").connector_id
        (marked,) = conn.execute(
            "SELECT total_records FROM main._connector_positions WHERE connector_id = ?", [connector_id]
        ).fetchone()
    return rows, distinct, marked


class RunInThread:
    """``execute_in_process`` of the ingest job for some tables, in a thread, on a real instance."""

    def __init__(self, project_file: Path, instance: dg.DagsterInstance, *keys: dg.AssetKey):
        self.job = build_definitions(project_file).resolve_job_def("demo__ingest")
        self.result: dg.ExecuteInProcessResult | None = None
        self.thread = threading.Thread(target=self._run, args=(instance, list(keys)), daemon=True)
        self.thread.start()

    def _run(self, instance: dg.DagsterInstance, keys: list[dg.AssetKey]) -> None:
        self.result = self.job.execute_in_process(instance=instance, asset_selection=keys)

    def join(self, timeout: float) -> dg.ExecuteInProcessResult:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the run did not end within {timeout}s"
        assert self.result is not None and self.result.success
        return self.result


def materialized(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict[str, object]:
    (materialization,) = [m for m in result.asset_materializations_for_node("demo__tables") if m.asset_key == key]
    return {name: value.value for name, value in materialization.metadata.items()}


def requested_tables(project_file: Path, instance: dg.DagsterInstance) -> dict[str, str]:
    """Table -> run key of the orchestration sensor's next tick."""
    sensor = build_definitions(project_file).resolve_sensor_def("demo__orchestration")
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    return {request.tags["connectors/table"]: request.run_key for request in tick.run_requests or []}


def connectors_cli(project_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [*CONNECTORS, "--project-file", str(project_file), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=False)


def test_one_dagster_run_streams_until_the_pipeline_is_paused_from_the_cli(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connector_assets.resource, "PROGRESS_SECONDS", 0.5)
    project_file = write_project(tmp_path)
    run = RunInThread(project_file, instance, TICKS)
    wait_for(lambda: commits(project_file, "ticks") >= 3, 30, "three commits of one run")
    assert run.thread.is_alive(), "the run goes on while the connector is live"
    assert "ticks" not in requested_tables(project_file, instance), "no second run for a table being streamed"

    paused = connectors_cli(project_file, "pipeline", "demo", "pause")
    assert paused.returncode == 0, paused.stdout + paused.stderr
    at_pause = time.monotonic()
    result = run.join(timeout=10)
    assert time.monotonic() - at_pause < 5, "a pause stops the run within a few commit intervals"

    metadata = materialized(result, TICKS)
    rows, distinct, marked = rows_and_mark(project_file, "ticks")
    assert rows == distinct == marked == metadata["connectors/records"] == metadata["dagster/row_count"]
    assert metadata["connectors/commits"] >= 3 and "PAUSED" in metadata["connectors/stopped_reason"]
    progress = [o.metadata["connectors/records"].value for o in result.asset_observations_for_node("demo__tables")]
    assert len(progress) >= 2 and progress == sorted(progress), "progress observations while the run streams"


def test_max_run_seconds_ends_a_run_and_the_sensor_requests_the_next(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    project_file = write_project(tmp_path, max_run_seconds=2)
    before = requested_tables(project_file, instance)["ticks"]
    started = time.monotonic()
    first = RunInThread(project_file, instance, TICKS).join(timeout=20)
    assert 2 <= time.monotonic() - started < 15
    metadata = materialized(first, TICKS)
    assert "time limit" in metadata["connectors/stopped_reason"] and metadata["connectors/records"] > 0
    after = requested_tables(project_file, instance)
    assert "ticks" in after and after["ticks"] != before, "the ended run's reads make the next run's key new"

    # A terminated run (its status CANCELING in the instance) commits the batch in progress and ends cleanly.
    project_file.write_text(PROJECT.format(max_run_seconds=60))  # runs read the project file as they start
    second = RunInThread(project_file, instance, TICKS)
    committed = commits(project_file, "ticks")
    wait_for(lambda: commits(project_file, "ticks") > committed, 20, "the second run's first commit")
    (run_record,) = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    instance.report_run_canceling(run_record)
    result = second.join(timeout=10)
    metadata = materialized(result, TICKS)
    assert metadata["connectors/stopped_reason"] == "the run was terminated"
    rows, distinct, marked = rows_and_mark(project_file, "ticks")
    assert rows == distinct == marked == metadata["dagster/row_count"]


CHILD_RUN = """
import sys
import dagster as dg
from connector_assets import build_definitions

job = build_definitions(sys.argv[1]).resolve_job_def("demo__ingest")
with dg.instance_for_test() as instance:
    result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(["demo", "tocks"])])
sys.exit(0 if result.success else 1)
"""


def test_runs_of_two_tables_in_two_processes_write_one_duckdb_file_at_once(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    project_file = write_project(tmp_path, max_run_seconds=8)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_RUN, str(project_file)], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: commits(project_file, "tocks") >= 1, 30, "the other process's first commit")
        here = RunInThread(project_file, instance, TICKS)
        start = {table: commits(project_file, table) for table in ("ticks", "tocks")}
        wait_for(
            lambda: all(commits(project_file, table) >= start[table] + 3 for table in start),
            20,
            "three more commits of each table, from two processes at once",
        )
        here.join(timeout=20)
        _, stderr = child.communicate(timeout=30)
        assert child.returncode == 0, stderr[-3000:]
    finally:
        child.kill()
    for table in ("ticks", "tocks"):
        rows, distinct, marked = rows_and_mark(project_file, table)
        assert rows == distinct == marked > 0


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_follow_ingests_a_live_connector_until_a_signal_and_commits_the_batch_in_progress(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    project_file = write_project(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [*CONNECTORS, "--project-file", str(project_file), "run", "demo", "--follow"]
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: commits(project_file, "ticks") >= 2 and commits(project_file, "tocks") >= 2, 30, "commits")
        process.send_signal(stop_signal)
        stdout, stderr = process.communicate(timeout=15)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["response_code"] == "OK" and f"interrupted by {stop_signal.name}" in summary["message"]
    for table in ("ticks", "tocks"):
        rows, distinct, marked = rows_and_mark(project_file, table)
        assert rows == distinct == marked == summary["records_by_connector"][f"{table}.live"], "nothing lost or twice"


def test_run_without_follow_says_that_nothing_can_finish(tmp_path: Path) -> None:
    project_file = write_project(tmp_path)
    answer = connectors_cli(project_file, "run", "demo")
    assert answer.returncode == 0, answer.stderr
    summary = json.loads(answer.stdout)
    assert summary["records"] == 0 and summary["never_ending"] == ["ticks.live", "tocks.live"]
    assert "nothing can finish" in summary["message"] and "--follow" in summary["message"]


@pytest.mark.parametrize("key", ["commit_interval", "max_run_seconds"])
def test_the_streaming_keys_must_be_positive(tmp_path: Path, key: str) -> None:
    path = tmp_path / "connectors.yaml"
    path.write_text(PROJECT.format(max_run_seconds=60).replace(f"{key}:", f"{key}: 0 #"))
    with pytest.raises(ProjectFileError) as info:
        load_project(path)
    assert f"pipelines.demo.{key}" in str(info.value)
