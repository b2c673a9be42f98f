"""DuckDB sink through dagster-duckdb's DuckDBResource: tables, marks, and rows + mark in one transaction."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from clients_for_tests import keeps_only_the_first_batch
from dagster_duckdb import DuckDBResource

from connector_core.column_types import arrow_schema
from connector_core.formats import Format, parse
from connector_core.project import parse_project
from connector_core.sinks import SinkError, SinkMark, prepare_tables
from connector_core.sinks import duckdb as duckdb_sink
from connector_core.sinks.duckdb import SCRATCH_DIRS, SCRATCH_PREFIX, DuckDBSink, sweep_scratch_files

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
        schema=arrow_schema(COLUMNS),
    )


def test_tables_are_created_from_columns_or_from_an_inferred_schema(sink: DuckDBSink) -> None:
    sink.check()
    assert sink.table_schema("Price Table") is None
    schema = sink.ensure_table("Price Table", COLUMNS, None)
    assert schema == arrow_schema(COLUMNS)
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


def test_a_failed_insert_reports_duckdb_s_first_error_and_leaves_the_sink_usable(sink: DuckDBSink) -> None:
    """Not "transaction is aborted": unregistering the batch's view in the aborted transaction used to hide it."""
    names = pa.array([b"n2", b"n\xff"], pa.binary()).cast(pa.string(), safe=False)  # as pyarrow's JSON reader gave
    bad = pa.table({"id": [2, 3], "Name With Space": names, "price": [1.0, 2.0]}, schema=arrow_schema(COLUMNS))
    with keeps_only_the_first_batch(sink, "t", COLUMNS, rows([1])):
        with pytest.raises(SinkError, match="Invalid unicode") as raised:
            sink.write("t", bad, SinkMark("c1", 2, 2, 3, 20))
        assert "aborted" not in str(raised.value)
    sink.write("t", rows([4]), SinkMark("c1", 2, 2, 2, 20))
    assert sorted(sink.read_table("t")["id"]) == [1, 4]


def test_every_failure_of_the_database_is_a_sink_error() -> None:
    connection = {"now": duckdb.connect()}
    sink = DuckDBSink(lambda: contextlib.nullcontext(connection["now"]))
    sink.ensure_table("t", COLUMNS, None)
    reader = sink.json_reader("t")
    assert sink.reads_json() and reader.screen is not None
    connection["now"].close()  # every call now fails in DuckDB
    line = b'{"id": 1}\n'
    for call in (
        lambda: sink.mark("c9"),
        lambda: sink.table_schema("t"),
        lambda: sink.row_count("t"),
        lambda: sink.write("t", rows([1]), SinkMark("c9", 1, 1, 1, 1)),
        lambda: sink.write_json_lines("t", line, lambda n: SinkMark("c9", 1, 1, n, 1)),
        lambda: reader.read(pa.py_buffer(line), None),
        lambda: reader.screen(pa.array([line], pa.large_binary()), None),  # type: ignore[misc]
    ):
        with pytest.raises(SinkError, match="closed"):
            call()


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


def test_drop_table_and_prepare_tables_reports_only_the_tables_it_created(sink: DuckDBSink) -> None:
    pipeline = SimpleNamespace(
        spec=parse_project(
            {
                "pipelines": {
                    "p": {
                        "tables": {
                            name: {"columns": COLUMNS, "connectors": [{"name": "g", "transport": {"name": "datagen"}}]}
                            for name in ("old", "new")
                        }
                    }
                }
            }
        ).pipelines["p"]
    )
    sink.ensure_table("old", COLUMNS, None)
    assert prepare_tables(sink, pipeline) == ["new"]  # type: ignore[arg-type]
    assert prepare_tables(sink, pipeline) == []  # type: ignore[arg-type]

    sink.write("new", rows([1, 2]), SinkMark("c1", 2, 1, 2, 20))
    assert sink.json_reader("new") is not None  # the reader's column list of the table is cached ...
    sink.drop_table("new")
    assert sink.table_schema("new") is None and sink.row_count("new") == 0
    sink.drop_table("new")  # gone already: nothing to do
    sink.ensure_table("new", {"other": "VARCHAR"}, None)  # ... and forgotten with the table
    assert sink.write_json_lines("new", b'{"other": "x"}\n', lambda n: SinkMark("c2", 1, 1, n, 1)) == 1
    assert sink.read_table("new")["other"].tolist() == ["x"]


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


def scratch_files() -> set[str]:
    return {p.name for directory in SCRATCH_DIRS for p in directory.glob(f"{SCRATCH_PREFIX}*")}


def test_json_lines_are_loaded_by_duckdb_with_the_mark_in_one_transaction(sink: DuckDBSink) -> None:
    sink.ensure_table("t", COLUMNS, None)
    before = scratch_files()
    lines = b'{"id": 1, "Name With Space": "a", "price": 1.5}\n{"id": "12", "Name With Space": 7}\n\n{"id": 3}\n'

    def mark(seq: int, total: int) -> Any:
        return lambda records: SinkMark("c1", {"offset": seq}, seq, total + records, seq * 10)

    assert sink.write_json_lines("t", lines, mark(1, 0)) == 3
    frame = sink.read_table("t").sort_values("id")
    assert frame["id"].tolist() == [1, 3, 12]  # DuckDB casts the string "12" into BIGINT
    assert frame["Name With Space"].fillna("-").tolist() == ["a", "-", "7"]
    assert sink.mark("c1") == SinkMark("c1", {"offset": 1}, 1, 3, 10)

    # One record DuckDB cannot cast: nothing of the piece is written, the mark stays.
    assert sink.write_json_lines("t", b'{"id": 4}\n{"id": 5, "price": "x"}\n', mark(2, 3)) is None
    assert sink.row_count("t") == 3 and sink.mark("c1").batch_seq == 1
    with pytest.raises(SinkError, match="does not follow"):
        sink.write_json_lines("t", b'{"id": 6}\n', mark(3, 3))
    assert sink.row_count("t") == 3
    assert scratch_files() == before  # every scratch file is removed


def test_duckdb_json_reader_finds_each_rejected_record_with_duckdb_s_reason(sink: DuckDBSink) -> None:
    sink.ensure_table("t", COLUMNS, None)
    schema = sink.table_schema("t")
    lines = [
        '{"id": 0, "price": 1}',
        '{"id": 1, "price": "x"}',  # not castable
        "[1, 2]",  # not an object
        '{"id": 3',  # malformed
        '{"id": 4, "extra": true, "Name With Space": {"nested": 1}}',  # extra key ignored, object kept as JSON text
    ]
    parsed = parse("\n".join(lines).encode(), Format(name="json"), schema, json_reader=sink.json_reader("t"))
    assert parsed.table.schema == schema
    assert parsed.table.column("id").to_pylist() == [0, 4]
    assert parsed.table.column("Name With Space").to_pylist() == [None, '{"nested":1}']
    assert [index for index, _ in parsed.errors] == [1, 2, 3]
    reasons = [reason for _, reason in parsed.errors]
    assert '"x"' in reasons[0] and "ARRAY" in reasons[1] and "Malformed JSON" in reasons[2]
    assert not any("connector-batch" in reason or "line" in reason for reason in reasons)


def test_duckdb_json_reader_takes_a_record_larger_than_duckdb_s_default_limit(sink: DuckDBSink) -> None:
    sink.ensure_table("t", COLUMNS, None)
    big = "x" * (17 << 20)
    lines = f'{{"id": 1, "Name With Space": "{big}"}}\n{{"id": 2}}\n'.encode()
    parsed = parse(lines, Format(name="json"), sink.table_schema("t"), json_reader=sink.json_reader("t"))
    assert parsed.errors == [] and parsed.table.column("id").to_pylist() == [1, 2]
    assert len(parsed.table.column("Name With Space")[0].as_py()) == len(big)
    # The one-pass load takes it too, or (DuckDB versions with a 16 MB limit) declines it without writing.
    loaded = sink.write_json_lines("t", lines, lambda n: SinkMark("c1", 1, 1, n, len(lines)))
    assert (loaded, sink.row_count("t")) in {(2, 2), (None, 0)}


def test_scratch_files_of_dead_processes_are_swept_and_live_ones_kept() -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left_by_dead = SCRATCH_DIRS[0] / f"{SCRATCH_PREFIX}{dead.stdout.strip()}-abc.jsonl"
    in_use = SCRATCH_DIRS[0] / f"{SCRATCH_PREFIX}{os.getpid()}-abc.jsonl"
    for path in (left_by_dead, in_use):
        path.write_bytes(b'{"id": 1}\n')
    try:
        assert left_by_dead in sweep_scratch_files()
        assert not left_by_dead.exists() and in_use.exists()
    finally:
        in_use.unlink(missing_ok=True)
        left_by_dead.unlink(missing_ok=True)


def test_a_scratch_folder_that_cannot_take_the_piece_falls_back_to_the_next(
    sink: DuckDBSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink.ensure_table("t", COLUMNS, None)
    fallback = tmp_path / "fallback"
    fallback.mkdir()
    monkeypatch.setattr(duckdb_sink, "SCRATCH_DIRS", [tmp_path / "gone", fallback])
    assert sink.write_json_lines("t", b'{"id": 1}\n', lambda n: SinkMark("c1", 1, 1, n, 10)) == 1
    assert list(fallback.iterdir()) == []

    monkeypatch.setattr(duckdb_sink, "SCRATCH_DIRS", [tmp_path / "gone"])
    with pytest.raises(SinkError, match="cannot write a scratch file.*gone"):
        sink.write_json_lines("t", b'{"id": 2}\n', lambda n: SinkMark("c1", 2, 2, 1 + n, 20))
    assert sink.row_count("t") == 1
