"""Table assets materialized through Dagster: rows land in the DuckDB sink, metadata reports the batch; the same
through ``@connector_assets`` and ``ConnectorsResource`` with a body of one's own."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
from dagster_helpers import lifecycle

import connector_core.state
from connector_assets import ConnectorsResource, build_definitions, connector_assets
from connector_assets import metadata as asset_metadata
from connector_core.pipeline import Pipeline
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


#: The keys of a table's materialization: a few numeric series, standard table metadata, one table value.
MATERIALIZATION_KEYS = {
    "dagster/row_count",
    "dagster/table_name",
    "dagster/column_schema",
    "connectors/records",
    "connectors/records_per_second",
    "connectors/parse_errors",
    "connectors/buffered_records",
    "connectors/commits",
    "connectors/connectors",
    "connectors/stats",
    "connectors/stopped_reason",
}


def connector_rows(metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``connectors/connectors`` table of plain metadata by connector."""
    return {record.data["connector"]: dict(record.data) for record in metadata["connectors/connectors"].records}


def hour_start(hours_ago: int) -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=hours_ago)


def write_hours(
    project_file: Path, table: str, connector: str, rows: dict[dt.datetime, tuple[int, int, int, int]]
) -> None:
    """``hourly_stats`` rows (records, bytes, parse errors, transport errors) of ``table.connector``."""
    pipeline = Pipeline(load_project(project_file), "demo")
    try:
        state = pipeline.connector(table, connector).state
        with state.transaction() as conn:  # type: ignore[union-attr]
            for hour, counts in rows.items():
                conn.execute("INSERT OR REPLACE INTO hourly_stats VALUES (?, ?, ?, ?, ?)", (hour.isoformat(), *counts))
    finally:
        pipeline.close()


def hourly_observations(instance: dg.DagsterInstance, key: dg.AssetKey) -> list[dict[str, Any]]:
    """The plain metadata of the asset's hourly observations, oldest first."""
    records = instance.fetch_observations(key, limit=1000, ascending=True).records
    observed = [{name: value.value for name, value in r.asset_observation.metadata.items()} for r in records]
    return [metadata for metadata in observed if "connectors/hour" in metadata]


@pytest.fixture
def own_instance() -> Iterator[dg.DagsterInstance]:
    """An instance of this test alone (the module's is shared, and hourly observations are recorded once)."""
    with dg.instance_for_test() as instance:
        yield instance


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
    assert set(metadata) == MATERIALIZATION_KEYS, "a few series, no numeric key per connector"
    numeric = {key for key, value in materialization.metadata.items() if isinstance(value.value, (int, float))}
    assert numeric == {
        "dagster/row_count",
        "connectors/records",
        "connectors/records_per_second",
        "connectors/parse_errors",
        "connectors/buffered_records",
        "connectors/commits",
    }
    assert metadata["connectors/records"] == 10
    assert metadata["connectors/parse_errors"] == 0 and metadata["connectors/buffered_records"] == 0
    assert metadata["connectors/records_per_second"] > 0
    assert isinstance(materialization.metadata["connectors/records"], dg.IntMetadataValue)
    assert isinstance(materialization.metadata["connectors/connectors"], dg.TableMetadataValue)
    assert [c.name for c in metadata["connectors/connectors"].schema.columns][:3] == ["connector", "status", "records"]
    rows = connector_rows(metadata)
    assert list(rows) == ["numbers.gen", "numbers.later"], "every connector of the table, in file order"
    gen, later = rows["numbers.gen"], rows["numbers.later"]
    assert (gen["records"], gen["parse_errors"], gen["transport_errors"], gen["total_records"]) == (10, 0, 0, 10)
    assert gen["bytes"] > 0 and gen["end_of_input"] is True and gen["status"] == "finished"
    assert (later["records"], later["bytes"], later["status"]) == (0, 0, "paused"), "a paused connector ingests nothing"
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


def test_each_completed_hour_becomes_one_observation(
    project_file: Path, own_instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Completed hours of the selected tables are observed once each, summed over the table's connectors; the
    current hour only once it has completed."""
    current = hour_start(0)  # the clocks of the batches' statistics and of the observations, fixed
    monkeypatch.setattr(connector_core.state, "current_hour", current.isoformat)
    monkeypatch.setattr(asset_metadata, "now", lambda: current + dt.timedelta(minutes=30))

    def hour(ago: int) -> dt.datetime:
        return current - dt.timedelta(hours=ago)

    lifecycle(project_file, "setup", confirm_prerequisites=True)
    write_hours(project_file, "numbers", "gen", {hour(3): (7, 70, 1, 0), hour(2): (5, 50, 0, 2)})
    write_hours(project_file, "numbers", "later", {hour(2): (1, 10, 0, 0), hour(30): (99, 990, 0, 0)})
    write_hours(project_file, "words", "seed", {hour(2): (4, 40, 0, 0)})

    assert materialize(project_file, own_instance, NUMBERS).success
    observed = hourly_observations(own_instance, NUMBERS)
    assert [o["connectors/hour"] for o in observed] == [hour(3).isoformat(), hour(2).isoformat()], (
        "completed hours of the last day, oldest first; not the current hour"
    )
    counters = ("records", "bytes", "parse_errors", "transport_errors")
    assert [tuple(o[f"connectors/hourly_{c}"] for c in counters) for o in observed] == [(7, 70, 1, 0), (6, 60, 0, 2)]
    table = observed[1]["connectors/hourly_connectors"].records
    assert {r.data["connector"]: r.data["records"] for r in table} == {"numbers.gen": 5, "numbers.later": 1}
    assert hourly_observations(own_instance, WORDS) == [], "only the run's tables"

    assert materialize(project_file, own_instance, NUMBERS).success  # the numbers' connectors have finished
    assert len(hourly_observations(own_instance, NUMBERS)) == 2, "an hour already observed is not observed again"

    # An hour later the first run's hour (its 10 records) has completed: the next run observes it, not its own hour.
    monkeypatch.setattr(connector_core.state, "current_hour", hour(-1).isoformat)
    monkeypatch.setattr(asset_metadata, "now", lambda: current + dt.timedelta(minutes=90))
    assert materialize(project_file, own_instance, NUMBERS, WORDS).success
    observed = hourly_observations(own_instance, NUMBERS)
    assert [(o["connectors/hour"], o["connectors/hourly_records"]) for o in observed[2:]] == [(current.isoformat(), 10)]
    words = hourly_observations(own_instance, WORDS)
    assert [(o["connectors/hour"], o["connectors/hourly_records"]) for o in words] == [(hour(2).isoformat(), 4)]
