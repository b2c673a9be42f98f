"""End to end with the Dagster daemon (DESIGN §10): the orchestration sensor launches a streaming run through the real
run launcher; ``max_run_seconds`` ends it and the sensor launches the next; terminating that one (Dagster interrupts
its step with a signal) commits the batch in progress, materializes what it committed and ends the step cleanly."""

from __future__ import annotations

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
from dagster_helpers import lifecycle, opened_pipeline

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


@pytest.fixture
def daemon(project_file: Path) -> Iterator[dg.DagsterInstance]:
    """``dagster-daemon run`` on the project's code location, with an instance in a temporary DAGSTER_HOME."""
    home = project_file.parent / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry: {enabled: false}\n")
    workspace = project_file.parent / "workspace.yaml"
    workspace.write_text(
        textwrap.dedent(f"""
        load_from:
          - python_module:
              module_name: connector_assets.definitions
              working_directory: {REPO}
              location_name: connectors
        """)
    )
    env = {**os.environ, "DAGSTER_HOME": str(home), "CONNECTORS_PROJECT_FILE": str(project_file)}
    log = open(project_file.parent / "daemon.log", "wb")  # noqa: SIM115 - the daemon writes it until it stops
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)],
        cwd=project_file.parent,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its code server and runs are in its process group, stopped with it
    )
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


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
