"""One consecutive-failure rule for every front end: a connector whose reads keep failing is given up after the
third failure in a row, in Dagster runs as in ``connectors run``, and the sensor stops requesting runs for it."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster_helpers import lifecycle, opened_pipeline
from fixtures_services import free_port

from connector_assets import build_definitions
from connector_core.ingest import MAX_CONSECUTIVE_FAILURES

PROJECT = """
pipelines:
  demo:
    sink: {{kind: duckdb, path: demo.duckdb}}
    tables:
      prices:
        columns: {{id: BIGINT}}
        connectors:
          - name: feed
            transport: {{name: url_input, config: {{path: "http://127.0.0.1:{port}/prices.json", timeout_seconds: 2}}}}
            format: {{name: json}}
      numbers:
        columns: {{n: BIGINT}}
        connectors: [{{name: gen, transport: {{name: datagen, config: {{plan: [{{limit: 5}}]}}}}}}]
"""
PRICES = dg.AssetKey(["demo", "prices"])


@pytest.fixture
def project_file(tmp_path: Path) -> Path:
    path = tmp_path / "connectors.yaml"
    path.write_text(PROJECT.format(port=free_port()))  # nothing listens there: every read is refused
    return path


def requested_tables(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, str]:
    """Table -> run key of the orchestration sensor's next tick."""
    tick = defs.resolve_sensor_def("demo__orchestration").evaluate_tick(dg.build_sensor_context(instance=instance))
    return {request.tags["connectors/table"]: request.run_key for request in tick.run_requests or []}


def test_a_failing_connector_is_given_up_by_dagster_runs_and_gets_no_more_runs(
    project_file: Path, instance: dg.DagsterInstance
) -> None:
    lifecycle(project_file, "setup", confirm_prerequisites=True)
    defs = build_definitions(project_file)
    job = defs.resolve_job_def("demo__ingest")
    run_keys = []
    for attempt in range(1, MAX_CONSECUTIVE_FAILURES + 1):
        requested = requested_tables(defs, instance)
        assert "prices" in requested, f"attempt {attempt}: the failing connector still gets a run"
        run_keys.append(requested["prices"])
        assert job.execute_in_process(instance=instance, asset_selection=[PRICES]).success
        with opened_pipeline(project_file) as pipeline:
            metrics = pipeline.connector("prices", "feed").state.metrics()
        assert metrics.num_transport_errors == attempt
        assert (metrics.fatal_error is not None) == (attempt == MAX_CONSECUTIVE_FAILURES)
    assert len(set(run_keys)) == MAX_CONSECUTIVE_FAILURES, "each failed read lets the next run be requested"
    assert "consecutive failed reads" in metrics.fatal_error and "127.0.0.1" in metrics.fatal_error
    assert "prices" not in requested_tables(defs, instance), "a connector given up gets no new run"
    assert "numbers" in requested_tables(defs, instance), "the other tables go on"

    lifecycle(project_file, "start_connector", table="prices", connector="feed")
    with opened_pipeline(project_file) as pipeline:
        metrics = pipeline.connector("prices", "feed").state.metrics()
    assert metrics.fatal_error is None and metrics.consecutive_failures == 0
    assert "prices" in requested_tables(defs, instance), "starting it again retries it"
