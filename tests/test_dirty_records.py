"""Dirty input: many bad records cost a linear pass, not a reader call per bad record; every good record lands and
every bad one is one parse error with its index, whichever reader reads; a screen never rejects what its reader
takes."""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json
import pytest
from clients_for_tests import open_pipeline, run_to_end

from connector_core.column_types import arrow_schema
from connector_core.formats import RECORD_ERRORS, Format, RecordReader, _json_reader, _Lines, _screen_json_lines, parse
from connector_core.sinks.duckdb import DuckDBSink

COLUMNS = {"id": "BIGINT", "price": "DOUBLE", "name": "VARCHAR"}
SCHEMA = arrow_schema(COLUMNS)

#: Ways to spoil the line of record ``n``; each reader rejects every one of them.
SPOILERS: list[Callable[[int], bytes]] = [
    lambda n: b'{"id": %d, "price": ' % n,  # cut short
    lambda n: b'{"id": %d, "price": "x"}' % n,  # no number
    lambda n: b'{"id": %d, "name": "it\xffem"}' % n,  # not UTF-8
    lambda n: b"[%d]" % n,  # not an object
    lambda n: b'{"id": %d, "price": [1]}' % n,  # an array for a number
]


def dirty_lines(count: int, bad_share: float, seed: int = 7) -> tuple[bytes, list[int], list[int]]:
    """``count`` JSON lines, about ``bad_share`` of them spoiled: the bytes, the good ids and the bad indices."""
    chance = random.Random(seed)
    lines, good, bad = [], [], []
    for n in range(count):
        if chance.random() < bad_share:
            lines.append(SPOILERS[n % len(SPOILERS)](n))
            bad.append(n)
        else:
            lines.append(json.dumps({"id": n, "price": n / 4, "name": f"item {n}"}).encode())
            good.append(n)
    return b"\n".join(lines) + b"\n", good, bad


@pytest.fixture
def duckdb_sink() -> Iterator[DuckDBSink]:
    conn = duckdb.connect()
    sink = DuckDBSink(lambda: contextlib.nullcontext(conn))
    sink.ensure_table("t", COLUMNS, None)
    yield sink
    conn.close()


def arrow_reader(_sink: DuckDBSink) -> RecordReader | None:
    return None  # parse's own: pyarrow's JSON reader and its screen


def duckdb_reader(sink: DuckDBSink) -> RecordReader | None:
    return sink.json_reader("t")


READERS = pytest.mark.parametrize("reader_of", [arrow_reader, duckdb_reader], ids=["pyarrow", "duckdb"])


@READERS
@pytest.mark.parametrize("bad_share", [0.1, 0.5])
def test_every_good_record_lands_and_each_bad_one_is_one_error_with_its_index(
    duckdb_sink: DuckDBSink, reader_of: Callable[[DuckDBSink], RecordReader | None], bad_share: float
) -> None:
    data, good, bad = dirty_lines(3_000, bad_share)
    parsed = parse(data, Format(name="json"), SCHEMA, json_reader=reader_of(duckdb_sink))
    assert parsed.table.column("id").to_pylist() == good
    assert [index for index, _ in parsed.errors] == bad


@pytest.mark.parametrize("bad_share", [0.1, 0.5])
def test_dirty_input_costs_a_few_pyarrow_calls_not_one_per_bad_record(
    monkeypatch: pytest.MonkeyPatch, bad_share: float
) -> None:
    calls: list[int] = []
    real_read_json = pa_json.read_json

    def counting_read_json(*args: Any, **kwargs: Any) -> pa.Table:
        calls.append(1)
        return real_read_json(*args, **kwargs)

    monkeypatch.setattr(pa_json, "read_json", counting_read_json)
    data, good, bad = dirty_lines(20_000, bad_share)
    parsed = parse(data, Format(name="json", config={"reader": "arrow"}), SCHEMA)
    assert parsed.table.num_rows == len(good) and len(parsed.errors) == len(bad)
    # The whole input, its two halves, the lines the screen lets through (bisection: thousands of calls).
    assert len(calls) <= 4


@pytest.mark.parametrize("bad_share", [0.1, 0.5])
def test_dirty_input_costs_a_few_duckdb_reads_not_one_per_bad_record(duckdb_sink: DuckDBSink, bad_share: float) -> None:
    reader = duckdb_sink.json_reader("t")
    assert reader.screen is not None
    calls = {"read": 0, "screen": 0}

    def read(buffer: pa.Buffer, schema: pa.Schema | None) -> pa.Table:
        calls["read"] += 1
        return reader.read(buffer, schema)

    def screen(records: pa.LargeBinaryArray, schema: pa.Schema | None) -> list[tuple[int, str]]:
        calls["screen"] += 1
        return reader.screen(records, schema)  # type: ignore[misc]

    data, good, bad = dirty_lines(20_000, bad_share)
    parsed = parse(data, Format(name="json"), SCHEMA, json_reader=RecordReader(read, screen))
    assert parsed.table.num_rows == len(good) and len(parsed.errors) == len(bad)
    assert calls == {"read": 4, "screen": 1}


@pytest.mark.parametrize("bad_share", [0.1, 0.5])
def test_the_duckdb_sink_loads_the_good_lines_of_a_dirty_batch_in_one_more_pass(
    tmp_path: Path, session_factory: Any, monkeypatch: pytest.MonkeyPatch, bad_share: float
) -> None:
    data, good, bad = dirty_lines(20_000, bad_share)
    (tmp_path / "in.json").write_bytes(data)
    pipeline = open_pipeline(
        tmp_path,
        {
            "t": {
                "columns": COLUMNS,
                "connectors": [
                    {
                        "name": "f",
                        "transport": {"name": "file_input", "config": {"path": "in.json"}},
                        "format": {"name": "json"},
                    }
                ],
            }
        },
    )
    loads: list[int] = []
    real_load = DuckDBSink.write_json_lines

    def counting_load(self: DuckDBSink, *args: Any) -> int | None:
        loads.append(1)
        return real_load(self, *args)

    monkeypatch.setattr(DuckDBSink, "write_json_lines", counting_load)
    session = session_factory(pipeline)
    reports = run_to_end(session, "t")
    assert loads == [1, 1]  # the batch, then the lines the screen let through
    assert [b.records for r in reports for b in r.batches] == [len(good)]
    assert sorted(session.sink.read_table("t")["id"]) == good
    handle = pipeline.connector("t", "f")
    metrics = handle.state.metrics()
    assert metrics.num_parse_errors == len(bad) and metrics.end_of_input
    assert [e["index"] for e in pipeline.stats(handle)["parse_errors"]] == bad[-100:]
    pipeline.close()


#: Records around the rules' edges (columns: COLUMNS plus a timestamp, a date, a boolean and an integer).
EDGES = [
    b'{"id": 1}',
    b'{"id": "1"}',
    b'{"id": 1.5}',
    b'{"id": 1e3}',
    b'{"id": true}',
    b'{"id": [1]}',
    b'{"id": {"a": 1}}',
    b'{"id": 99999999999999999999}',
    b'{"id": NaN}',
    b'{"price": "1.5"}',
    b'{"price": Inf}',
    b'{"price": -NaN}',
    b'{"price": 1.5e999}',
    b'{"name": 1}',
    b'{"name": {"a": [1]}}',
    b'{"name": "a\tb"}',
    b'{"name": "\\ud800"}',
    b'{"name": "\xff"}',
    b'{"other": "\xc3"}',
    b'{"ok": 1}',
    b'{"ok": "x"}',
    b'{"at": "2024-01-01T00:00:00Z"}',
    b'{"at": "x"}',
    b'{"at": 5}',
    b'{"day": "2024-02-30"}',
    b'{"small": 3000000000}',
    b"[1, 2]",
    b"5",
    b"null",
    b"{}",
    b'{"id": 1,}',
    b'{"id": 1} x',
    b'{"id": 1} {"id": 2}',
    b'{"id": 1} 5',
    b'{"id": 1, "id": 2}',
    b'\xef\xbb\xbf{"id": 1}',
    b'{"name": "a\x00b"}',
    b'{"id": 1 /* c */}',
    b"nullx",
    b'{"a": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
]
EDGE_COLUMNS = {**COLUMNS, "ok": "BOOLEAN", "at": "TIMESTAMP", "day": "DATE", "small": "INTEGER"}


@READERS
def test_a_screen_never_rejects_a_record_its_reader_takes(
    duckdb_sink: DuckDBSink, reader_of: Callable[[DuckDBSink], RecordReader | None]
) -> None:
    duckdb_sink.drop_table("t")
    schema = duckdb_sink.ensure_table("t", EDGE_COLUMNS, None)
    reader = reader_of(duckdb_sink) or RecordReader(_json_reader(schema), _screen_json_lines)
    assert reader.screen is not None
    lines = _Lines(pa.py_buffer(b"\n".join(EDGES) + b"\n"))
    assert len(lines) == len(EDGES)
    rejected = dict(reader.screen(lines.records(np.arange(len(lines))), schema))

    def reader_rejects(line: bytes) -> bool:
        try:
            reader.read(pa.py_buffer(line + b"\n"), schema)
        except RECORD_ERRORS:
            return True
        return False

    wrongly = [EDGES[at] for at in rejected if not reader_rejects(EDGES[at])]
    assert wrongly == []
    assert len(rejected) >= 15  # and it does its job
