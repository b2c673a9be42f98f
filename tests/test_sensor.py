"""The orchestration sensor: which tables it requests runs for, stable run keys, start_after release."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from dagster_helpers import lifecycle, opened_pipeline

from connector_assets import ConnectorsTranslator, TableProps, build_definitions
from connector_core.state import BatchCommit

PROJECT = """
pipelines:
  demo:
    tables:
      price:
        connectors:
          - name: backfill
            labels: [price.backfill]
            transport: {name: datagen, config: {plan: [{limit: 10}]}}
          - name: live
            start_after: price.backfill
            transport: {name: datagen, config: {plan: [{limit: 5}]}}
      vendor:
        connectors:
          - name: seed
            paused: true
            transport: {name: datagen, config: {plan: [{limit: 3}]}}
      archive:
        connectors:
          - name: old
            transport: {name: datagen, config: {plan: [{limit: 2}]}}
"""
SENSOR = "demo__orchestration"

pytestmark = pytest.mark.usefixtures("state_backend")  # every test runs on SQLite state and on PostgreSQL state


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None = None):  # noqa: ANN201
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    return defs.resolve_sensor_def(SENSOR).evaluate_tick(context)


def requested(data) -> dict[str, dg.RunRequest]:  # noqa: ANN001
    """Table -> run request of a tick."""
    return {request.tags["connectors/table"]: request for request in data.run_requests or []}


def skipped(data) -> str:  # noqa: ANN001
    """The skip message of a tick that requested no run."""
    assert not data.run_requests
    return data.skip_message


def finish(project_file: Path, table: str, connector: str, records: int) -> None:
    """Commit a last batch for a connector (end of input, nothing buffered), as an ingest run would."""
    with opened_pipeline(project_file) as pipeline:
        handle = pipeline.connector(table, connector)
        handle.state.commit_batch(
            BatchCommit(
                position={"emitted": records}, batch_seq=1, records=records, bytes=8 * records, end_of_input=True
            )
        )


def running(project_file: Path, table: str, connector: str) -> bool:
    with opened_pipeline(project_file) as pipeline:
        return pipeline.connector(table, connector).state.running


def test_a_pipeline_that_is_not_started_launches_nothing(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    assert "CONFIGURING, not STARTED" in skipped(tick(defs, instance))


def test_runs_are_requested_only_for_tables_with_active_unfinished_connectors(
    defs: dg.Definitions, instance: dg.DagsterInstance, project_file: Path
) -> None:
    lifecycle(project_file, "setup", confirm_prerequisites=True)
    finish(project_file, "archive", "old", 2)

    data = tick(defs, instance)
    runs = requested(data)
    assert set(runs) == {"price"}, "vendor's only connector is paused, archive's is finished"
    assert runs["price"].asset_selection == [dg.AssetKey(["demo", "price"])]
    assert runs["price"].tags["connectors/pipeline"] == "demo"
    cursor = json.loads(data.cursor)
    assert cursor["batch_seq"]["archive.old"] == 1 and cursor["batch_seq"]["price.backfill"] == 0

    again = tick(defs, instance, cursor=data.cursor)
    assert requested(again)["price"].run_key == runs["price"].run_key, "the same positions give the same run key"

    lifecycle(project_file, "start_connector", table="vendor", connector="seed")
    assert set(requested(tick(defs, instance))) == {"price", "vendor"}


def test_start_after_connectors_are_released_once_their_labels_finish(
    defs: dg.Definitions, instance: dg.DagsterInstance, project_file: Path
) -> None:
    lifecycle(project_file, "setup", confirm_prerequisites=True)
    before = requested(tick(defs, instance))["price"].run_key
    assert not running(project_file, "price", "live")

    finish(project_file, "price", "backfill", 10)
    after = requested(tick(defs, instance))
    assert running(project_file, "price", "live"), "the sensor started price.live"
    assert after["price"].run_key != before, "new positions, new work"

    finish(project_file, "price", "live", 5)
    finish(project_file, "archive", "old", 2)
    assert "no active connector has data left" in skipped(tick(defs, instance))


def test_a_paused_pipeline_or_a_table_with_a_run_in_progress_gets_no_new_run(
    defs: dg.Definitions, instance: dg.DagsterInstance, project_file: Path
) -> None:
    lifecycle(project_file, "setup", confirm_prerequisites=True)
    in_progress = instance.create_run_for_job(
        defs.resolve_job_def("demo__ingest"),
        status=dg.DagsterRunStatus.STARTED,
        tags={"connectors/pipeline": "demo", "connectors/table": "archive"},
    )
    try:
        assert set(requested(tick(defs, instance))) == {"price"}
    finally:
        instance.delete_run(in_progress.run_id)
    assert set(requested(tick(defs, instance))) == {"price", "archive"}

    from_the_ui = instance.create_run_for_job(
        defs.resolve_job_def("demo__ingest"),
        status=dg.DagsterRunStatus.STARTING,
        asset_selection={dg.AssetKey(["demo", "price"])},
    )
    try:
        assert set(requested(tick(defs, instance))) == {"archive"}
    finally:
        instance.delete_run(from_the_ui.run_id)

    lifecycle(project_file, "pause")
    assert "PAUSED, not STARTED" in skipped(tick(defs, instance))


class RawTranslator(ConnectorsTranslator):
    """Other keys, and none of the default metadata: the assets still say which table each key stands for."""

    def get_asset_spec(self, props: TableProps) -> dg.AssetSpec:
        spec = super().get_asset_spec(props)
        return spec.replace_attributes(key=spec.key.with_prefix("raw"), metadata={})


def test_the_sensor_requests_the_keys_a_custom_translator_gives(
    instance: dg.DagsterInstance, project_file: Path
) -> None:
    defs = build_definitions(project_file, translator=RawTranslator())
    lifecycle(project_file, "setup", confirm_prerequisites=True)
    runs = requested(tick(defs, instance))
    assert runs["price"].asset_selection == [dg.AssetKey(["raw", "demo", "price"])]


def test_a_run_that_read_nothing_before_a_pause_does_not_block_the_next_run_after_resume(
    defs: dg.Definitions, instance: dg.DagsterInstance, project_file: Path
) -> None:
    """The run key changes with the pipeline's procedures too: a run requested, then the pipeline paused before the
    run read anything, then resumed, gets a new key (Dagster drops a run request whose key it has seen)."""
    lifecycle(project_file, "setup", confirm_prerequisites=True)
    first = requested(tick(defs, instance))["archive"].run_key
    lifecycle(project_file, "pause")
    assert "PAUSED" in skipped(tick(defs, instance))
    lifecycle(project_file, "resume")
    again = requested(tick(defs, instance))["archive"].run_key
    assert again != first, "the same key would be dropped as already requested"
    assert requested(tick(defs, instance))["archive"].run_key == again, "and it stays stable while nothing happens"
