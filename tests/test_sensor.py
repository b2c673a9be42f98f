"""The orchestration sensor: which tables it requests runs for, stable run keys, start_after release."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from connector_assets import ConnectorsTranslator, TableProps, build_definitions
from connector_core.lifecycle import Lifecycle
from connector_core.pipeline import Pipeline
from connector_core.project import load_project
from connector_core.state import BatchCommit
from resources import build_clients

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


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def project_file(tmp_path: Path) -> Path:
    path = tmp_path / "connectors.yaml"
    path.write_text(textwrap.dedent(PROJECT))
    return path


@pytest.fixture
def defs(project_file: Path) -> dg.Definitions:
    return build_definitions(project_file)


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None = None):  # noqa: ANN201
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    return defs.resolve_sensor_def(SENSOR).evaluate_tick(context)


def requested(data) -> dict[str, dg.RunRequest]:  # noqa: ANN001
    """Table -> run request of a tick."""
    return {request.tags["connectors/table"]: request for request in data.run_requests or []}


def open_pipeline(project_file: Path) -> Pipeline:
    return Pipeline(load_project(project_file), "demo")


def procedure(project_file: Path, name: str, **kwargs: object) -> None:
    pipeline = open_pipeline(project_file)
    try:
        answer = getattr(Lifecycle(pipeline, build_clients(pipeline)), name)(**kwargs)
        assert answer.ok, answer.as_dict()
    finally:
        pipeline.close()


def finish(project_file: Path, table: str, connector: str, records: int) -> None:
    """Commit a last batch for a connector (end of input, nothing buffered), as an ingest run would."""
    pipeline = open_pipeline(project_file)
    try:
        handle = pipeline.connector(table, connector)
        handle.state.commit_batch(
            BatchCommit(
                position={"emitted": records}, batch_seq=1, records=records, bytes=8 * records, end_of_input=True
            )
        )
    finally:
        pipeline.close()


def running(project_file: Path, table: str, connector: str) -> bool:
    pipeline = open_pipeline(project_file)
    try:
        return pipeline.connector(table, connector).state.running
    finally:
        pipeline.close()


def test_a_pipeline_that_is_not_started_launches_nothing(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    data = tick(defs, instance)
    assert not data.run_requests
    assert "CONFIGURING, not STARTED" in data.skip_message


def test_runs_are_requested_only_for_tables_with_active_unfinished_connectors(
    defs: dg.Definitions, instance: dg.DagsterInstance, project_file: Path
) -> None:
    procedure(project_file, "setup", confirm_prerequisites=True)
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

    procedure(project_file, "start_connector", table="vendor", connector="seed")
    assert set(requested(tick(defs, instance))) == {"price", "vendor"}


def test_start_after_connectors_are_released_once_their_labels_finish(
    defs: dg.Definitions, instance: dg.DagsterInstance, project_file: Path
) -> None:
    procedure(project_file, "setup", confirm_prerequisites=True)
    before = requested(tick(defs, instance))["price"].run_key
    assert not running(project_file, "price", "live")

    finish(project_file, "price", "backfill", 10)
    after = requested(tick(defs, instance))
    assert running(project_file, "price", "live"), "the sensor started price.live"
    assert after["price"].run_key != before, "new positions, new work"

    finish(project_file, "price", "live", 5)
    finish(project_file, "archive", "old", 2)
    data = tick(defs, instance)
    assert not data.run_requests
    assert "no active connector has data left" in data.skip_message


def test_a_paused_pipeline_or_a_table_with_a_run_in_progress_gets_no_new_run(
    defs: dg.Definitions, instance: dg.DagsterInstance, project_file: Path
) -> None:
    procedure(project_file, "setup", confirm_prerequisites=True)
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

    procedure(project_file, "pause")
    data = tick(defs, instance)
    assert not data.run_requests
    assert "PAUSED, not STARTED" in data.skip_message


class RawTranslator(ConnectorsTranslator):
    def get_asset_spec(self, props: TableProps) -> dg.AssetSpec:
        spec = super().get_asset_spec(props)
        return spec.replace_attributes(key=spec.key.with_prefix("raw"))


def test_the_sensor_requests_the_keys_a_custom_translator_gives(
    instance: dg.DagsterInstance, project_file: Path
) -> None:
    defs = build_definitions(project_file, translator=RawTranslator())
    procedure(project_file, "setup", confirm_prerequisites=True)
    runs = requested(tick(defs, instance))
    assert runs["price"].asset_selection == [dg.AssetKey(["raw", "demo", "price"])]
