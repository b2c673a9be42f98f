"""Table assets materialized through Dagster: rows land in the DuckDB sink, metadata reports the batch; the same
through ``@connector_assets`` and ``ConnectorsResource`` with a body of one's own."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
from dagster_helpers import lifecycle

from connector_assets import ConnectorsResource, build_definitions, connector_assets
from connector_core.project import load_project

PROJECT = """
pipelines:
  demo:
    org_slug: acme
    sink: {kind: duckdb, path: demo.duckdb}
    tables:
      numbers:
        columns: {n: BIGINT}
        connectors:
          - name: gen
            transport: {name: datagen, config: {plan: [{limit: 10}]}}
          - name: later
            paused: true
            transport: {name: datagen, config: {plan: [{limit: 5}]}}
      words:
        columns: {id: BIGINT, word: VARCHAR}
        connectors:
          - name: seed
            transport:
              name: datagen
              config: {plan: [{limit: 4, fields: {word: {values: [a, b, c]}}}]}
      events:
        connectors:
          - name: gen
            transport: {name: datagen, config: {plan: [{limit: 3, fields: {id: {}, kind: {values: [x, y]}}}]}}
"""
NUMBERS = dg.AssetKey(["demo", "numbers"])
WORDS = dg.AssetKey(["demo", "words"])
EVENTS = dg.AssetKey(["demo", "events"])


def materialize(project_file: Path, instance: dg.DagsterInstance, *keys: dg.AssetKey) -> dg.ExecuteInProcessResult:
    defs = build_definitions(project_file)
    return dg.materialize(
        [defs.get_assets_def(NUMBERS)], resources=defs.resources, instance=instance, selection=list(keys)
    )


def sink_rows(project_file: Path, table: str) -> int:
    with duckdb.connect(str(project_file.parent / "demo.duckdb"), read_only=True) as conn:
        return conn.execute(f"SELECT count(*) FROM main.{table}").fetchone()[0]


def test_materializing_a_table_ingests_its_active_connectors_and_reports_metadata(
    project_file: Path, instance: dg.DagsterInstance
) -> None:
    lifecycle(project_file, "setup", confirm_prerequisites=True)
    result = materialize(project_file, instance, NUMBERS)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("demo__tables")
    assert materialization.asset_key == NUMBERS, "only the selected table is materialized"
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["dagster/row_count"] == 10
    assert metadata["dagster/table_name"] == "main.numbers"
    assert metadata["dagster/column_schema"] == dg.TableSchema(columns=[dg.TableColumn("n", "BIGINT")])
    assert metadata["connectors/records"] == 10
    assert metadata["connectors/numbers.gen/records"] == 10
    assert "connectors/numbers.later/records" not in metadata, "a paused connector ingests nothing"
    assert metadata["connectors/bytes"] > 0
    assert metadata["connectors/parse_errors"] == 0
    assert metadata["connectors/seconds"] > 0 and metadata["connectors/records_per_second"] > 0
    assert isinstance(materialization.metadata["connectors/records"], dg.IntMetadataValue)
    stats = metadata["connectors/stats"]
    assert set(stats) == {"numbers.gen", "numbers.later"}, "every connector of the table has its stats"
    assert stats["numbers.gen"]["metrics"]["total_records"] == 10
    assert stats["numbers.later"]["paused"] is True
    assert sink_rows(project_file, "numbers") == 10
    assert sink_rows(project_file, "words") == 0


def test_a_paused_pipeline_materializes_nothing_and_says_why(project_file: Path, instance: dg.DagsterInstance) -> None:
    lifecycle(project_file, "setup", confirm_prerequisites=True)
    lifecycle(project_file, "pause")
    result = materialize(project_file, instance, NUMBERS, WORDS)
    assert result.success
    assert result.asset_materializations_for_node("demo__tables") == []
    observations = result.asset_observations_for_node("demo__tables")
    assert {o.asset_key for o in observations} == {NUMBERS, WORDS}
    reason = observations[0].metadata["connectors/skipped_reason"].value
    assert "PAUSED" in reason or "paused" in reason
    messages = [entry.user_message for entry in instance.all_logs(result.run_id) if entry.dagster_event is None]
    assert any("demo.numbers: nothing ingested" in m and reason in m for m in messages)
    assert sink_rows(project_file, "numbers") == 0


def test_a_table_without_declared_columns_reports_the_sink_columns(
    project_file: Path, instance: dg.DagsterInstance
) -> None:
    lifecycle(project_file, "setup", confirm_prerequisites=True)
    (materialization,) = materialize(project_file, instance, EVENTS).asset_materializations_for_node("demo__tables")
    schema = materialization.metadata["dagster/column_schema"].value
    assert [(column.name, column.type) for column in schema.columns] == [("id", "int64"), ("kind", "string")]
    assert materialization.metadata["dagster/row_count"].value == 3


def test_connector_assets_with_a_body_of_ones_own(project_file: Path, instance: dg.DagsterInstance) -> None:
    """The dagster-dlt shape: the decorator makes the specs, the resource (under any key) ingests."""
    lifecycle(project_file, "setup", confirm_prerequisites=True)
    project = load_project(project_file)

    @connector_assets(project=project, pipeline_name="demo", name="my_tables", group_name="raw")
    def my_tables(context, connectors: ConnectorsResource):  # noqa: ANN001, ANN202 - a string annotation of context is refused
        context.log.info("my own body")
        yield from connectors.ingest(context)

    assert {spec.group_name for spec in my_tables.specs} == {"raw"}
    assert all(spec.skippable for spec in my_tables.specs)
    result = dg.materialize(
        [my_tables],
        resources={"connectors": ConnectorsResource.for_pipeline(project, "demo")},
        instance=instance,
        selection=[WORDS],
    )
    (materialization,) = result.asset_materializations_for_node("my_tables")
    assert materialization.asset_key == WORDS
    assert materialization.metadata["connectors/records"].value == 4
    assert sink_rows(project_file, "words") == 4
