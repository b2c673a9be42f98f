"""Table assets materialized through Dagster: rows land in the DuckDB sink, metadata reports the batch."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
from dagster_helpers import lifecycle

from connector_assets import build_definitions

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
"""
NUMBERS = dg.AssetKey(["demo", "numbers"])
WORDS = dg.AssetKey(["demo", "words"])


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
