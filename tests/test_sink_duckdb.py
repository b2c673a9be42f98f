"""DuckDB sink through dagster-duckdb's DuckDBResource: tables, marks, and rows + mark in one transaction."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from clients_for_tests import keeps_only_the_first_batch
from dagster_duckdb import DuckDBResource

from connector_core.formats import arrow_schema_for_columns
from connector_core.sinks import SinkError, SinkMark
from connector_core.sinks.duckdb import DuckDBSink

COLUMNS = {"id": "BIGINT", "Name With Space": "VARCHAR", "price": "DOUBLE"}


@pytest.fixture
def resource(tmp_path: Path) -> DuckDBResource:
    return DuckDBResource(database=str(tmp_path / "w.duckdb"))


@pytest.fixture
def sink(resource: DuckDBResource) -> DuckDBSink:
    sink = DuckDBSink(resource.get_connection, schema="Raw Data", hold_connection=True)
    yield sink
    sink.close()


def rows(ids: list[int]) -> pa.Table:
    return pa.table(
        {"id": ids, "Name With Space": [f"n{i}" for i in ids], "price": [i / 2 for i in ids]},
        schema=arrow_schema_for_columns(COLUMNS),
    )


def test_tables_are_created_from_columns_or_from_an_inferred_schema(sink: DuckDBSink) -> None:
    sink.check()
    assert sink.table_schema("Price Table") is None
    schema = sink.ensure_table("Price Table", COLUMNS, None)
    assert schema == arrow_schema_for_columns(COLUMNS)
    assert sink.ensure_table("Price Table", {"other": "INTEGER"}, None) == schema  # existing table kept

    inferred = pa.schema([("a", pa.int32()), ("b", pa.string()), ("c", pa.timestamp("us")), ("d", pa.bool_())])
    assert sink.ensure_table("inferred", None, inferred) == inferred
    with pytest.raises(SinkError, match="no columns"):
        sink.ensure_table("nothing", None, None)


def test_rows_and_mark_commit_together(sink: DuckDBSink) -> None:
    sink.ensure_table("t", COLUMNS, None)
    assert sink.mark("c1") is None
    sink.write("t", rows([1, 2, 3]), SinkMark("c1", {"offset": 30}, 1, 3, 30))
    sink.write("t", rows([4]), SinkMark("c1", {"offset": 40}, 2, 4, 40))
    sink.write("t", rows([]), SinkMark("c2", 7, 1, 0, 5))
    assert sink.mark("c1") == SinkMark("c1", {"offset": 40}, 2, 4, 40)
    assert sink.mark("c2") == SinkMark("c2", 7, 1, 0, 5)
    assert sink.row_count("t") == 4
    assert sorted(sink.read_table("t")["id"]) == [1, 2, 3, 4]
    assert sink.row_count("missing") == 0


def test_a_failed_insert_stores_neither_rows_nor_mark(sink: DuckDBSink) -> None:
    bad = pa.table({"id": [2], "no_such_column": ["x"]})
    with keeps_only_the_first_batch(sink, "t", COLUMNS, rows([1])), pytest.raises(SinkError):
        sink.write("t", bad, SinkMark("c1", 2, 2, 2, 20))


def test_rows_already_inserted_are_rolled_back_when_the_mark_cannot_be_written(sink: DuckDBSink) -> None:
    with keeps_only_the_first_batch(sink, "t", COLUMNS, rows([1])), pytest.raises(TypeError):
        sink.write("t", rows([2, 3]), SinkMark("c1", object(), 2, 3, 30))  # position is not JSON


def test_a_mark_that_does_not_follow_the_stored_one_is_refused(sink: DuckDBSink) -> None:
    with keeps_only_the_first_batch(sink, "t", COLUMNS, rows([1]), check_mark=False):
        with pytest.raises(SinkError, match="does not follow"):
            sink.write("t", rows([2]), SinkMark("c1", 2, 1, 2, 20))  # a second writer replaying batch 1
        with pytest.raises(SinkError, match="does not follow"):
            sink.write("t", rows([3]), SinkMark("c9", 5, 3, 1, 10))  # first batch must be 1


def test_data_is_durable_after_close_and_visible_to_other_connections(resource: DuckDBResource) -> None:
    sink = DuckDBSink(resource.get_connection)
    sink.ensure_table("t", COLUMNS, None)
    sink.write("t", rows(list(range(1000))), SinkMark("c1", 1000, 1, 1000, 1))
    sink.close()
    with duckdb.connect(resource.database, read_only=True) as conn:
        assert conn.execute('SELECT count(*), sum(id) FROM main."t"').fetchall() == [(1000, 499500)]
        assert conn.execute("SELECT position, batch_seq FROM main._connector_positions").fetchall() == [("1000", 1)]


def test_an_unreachable_database_is_a_sink_error(tmp_path: Path) -> None:
    directory = tmp_path / "a directory"
    directory.mkdir()
    sink = DuckDBSink(lambda: duckdb.connect(str(directory)))  # no retry backoff
    with pytest.raises(SinkError, match="cannot reach"):
        sink.check()


def test_a_held_connection_keeps_the_database_open_until_close(resource: DuckDBResource) -> None:
    held = DuckDBSink(resource.get_connection, hold_connection=True)
    held.ensure_table("t", COLUMNS, None)
    with pytest.raises(duckdb.Error):  # still open in this process, with another configuration
        duckdb.connect(resource.database, read_only=True)
    held.close()
    with duckdb.connect(resource.database, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM main.t").fetchall() == [(0,)]

    released = DuckDBSink(resource.get_connection)
    released.write("t", rows([1]), SinkMark("c1", 1, 1, 1, 1))
    with duckdb.connect(resource.database, read_only=True) as conn:  # closed after every call
        assert conn.execute("SELECT count(*) FROM main.t").fetchall() == [(1,)]
