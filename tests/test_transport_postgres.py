"""postgres_input against the machine's PostgreSQL: typed Arrow batches, row positions, resume, errors."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from clients_for_tests import RealClients, open_reader, read_until_end
from fixtures_services import free_port

from connector_core.transports.base import ReadResult, TransportError, TransportReader


def pg_reader(dsn: str, **config: Any) -> TransportReader:
    return open_reader("postgres_input", {"connection": "pg", **config}, clients=RealClients(postgres={"pg": dsn}))


def concat(results: list[ReadResult]) -> pa.Table:
    tables = [r.data for r in results]
    assert all(isinstance(t, pa.Table) for t in tables)
    return pa.concat_tables(tables)


@pytest.fixture
def numbers(postgres_dsn: str) -> str:
    """Table ``numbers(id pk, name)`` with 95 rows inserted out of key order."""
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE TABLE numbers (id int PRIMARY KEY, name text NOT NULL)")
        ids = list(range(95))
        ids = ids[50:] + ids[:50]
        conn.cursor().executemany("INSERT INTO numbers VALUES (%s, %s)", [(i, f"n{i}") for i in ids])
    return postgres_dsn


def test_table_in_batches_typed_until_end(numbers: str) -> None:
    reader = pg_reader(numbers, table="numbers", batch_rows=20)
    results = read_until_end(reader, max_records=1000)
    reader.close()
    assert [r.data.num_rows for r in results] == [20, 20, 20, 20, 15]
    assert [r.position for r in results] == [20, 40, 60, 80, 95]
    assert [r.end_of_input for r in results] == [False] * 4 + [True]
    table = concat(results)
    assert table.schema == pa.schema([("id", pa.int32()), ("name", pa.string())])
    assert table.column("id").to_pylist() == list(range(95))  # primary-key order, not insertion order
    assert results[0].starts_object and not results[1].starts_object
    assert all(r.bytes_read > 0 for r in results)


def test_max_records_bounds_the_batch(numbers: str) -> None:
    reader = pg_reader(numbers, table="numbers")
    result = reader.read(None, 7)
    reader.close()
    assert result.data.num_rows == 7 and result.position == 7 and not result.end_of_input


def test_resume_after_restart_skips_rows_done(numbers: str) -> None:
    first_reader = pg_reader(numbers, table="numbers", batch_rows=30)
    first = first_reader.read(None, 1000)
    first_reader.close()
    resumed = pg_reader(numbers, table="numbers", batch_rows=30)
    rest = read_until_end(resumed, first.position)
    resumed.close()
    ids = first.data.column("id").to_pylist() + concat(rest).column("id").to_pylist()
    assert ids == list(range(95))


def test_a_stale_position_rereads_in_the_same_reader(numbers: str) -> None:
    reader = pg_reader(numbers, table="numbers", batch_rows=10)
    first = reader.read(None, 1000)
    second = reader.read(first.position, 1000)
    replay = reader.read(first.position, 1000)
    reader.close()
    assert second.data.column("id").to_pylist() == replay.data.column("id").to_pylist() == list(range(10, 20))


def test_query_with_order_by_resumes(numbers: str) -> None:
    query = "SELECT id * 2 AS double, name FROM numbers WHERE id % 3 = 0 ORDER BY id DESC;"
    reader = pg_reader(numbers, query=query, batch_rows=8)
    first = reader.read(None, 1000)
    reader.close()
    resumed = pg_reader(numbers, query=query, batch_rows=8)
    rest = read_until_end(resumed, first.position)
    resumed.close()
    doubles = first.data.column("double").to_pylist() + concat(rest).column("double").to_pylist()
    assert doubles == [i * 2 for i in range(94, -1, -1) if i % 3 == 0]


def test_resume_at_the_end_is_end_of_input(numbers: str) -> None:
    reader = pg_reader(numbers, table="numbers")
    result = reader.read(95, 1000)
    again = reader.read(95, 1000)
    reader.close()
    assert result.end_of_input and result.data.num_rows == 0 and result.position == 95
    assert again.end_of_input and again.data.num_rows == 0


def test_table_without_primary_key_resumes_in_physical_order(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE SCHEMA raw")
        conn.execute("CREATE TABLE raw.events (v int)")
        conn.execute("INSERT INTO raw.events SELECT (g * 7919) % 1000 FROM generate_series(1, 1000) g")
    reader = pg_reader(postgres_dsn, table="raw.events", batch_rows=300)
    everything = concat(read_until_end(reader)).column("v").to_pylist()
    reader.close()
    first_reader = pg_reader(postgres_dsn, table="raw.events", batch_rows=300)
    first = first_reader.read(None, 1000)
    first_reader.close()
    resumed = pg_reader(postgres_dsn, table="raw.events", batch_rows=300)
    rest = concat(read_until_end(resumed, first.position)).column("v").to_pylist()
    resumed.close()
    assert sorted(everything) == sorted((g * 7919) % 1000 for g in range(1, 1001))
    assert first.data.column("v").to_pylist() + rest == everything


def test_types_map_to_arrow(postgres_dsn: str) -> None:
    row_id = uuid.uuid4()
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute(
            """CREATE TABLE typed (
                id bigint PRIMARY KEY, small smallint, flag boolean, ratio real, score double precision,
                price numeric(10, 2), loose numeric, label varchar(10), code char(3), body bytea,
                day date, at timestamp, at_tz timestamptz, clock time, span interval,
                doc jsonb, ident uuid, tags text[], counts int[], addr inet)"""
        )
        conn.execute("SET TIME ZONE 'Europe/Paris'")
        conn.execute(
            """INSERT INTO typed VALUES (1, 2, true, 1.5, 2.25, 12.34, 0.125, 'x', 'ab', '\\x0102',
               '2024-02-29', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05+01', '10:11:12',
               '1 day 2 hours', '{"k": [1, 2]}', %s, '{a,b}', '{1,NULL,3}', '10.0.0.1'),
               (2, NULL, NULL, NULL, NULL, 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                NULL, NULL, NULL, NULL, NULL)""",
            [row_id],
        )
    reader = pg_reader(postgres_dsn, table="typed")
    result = reader.read(None, 100)
    reader.close()
    table = result.data
    assert isinstance(table, pa.Table) and result.end_of_input
    expected_types = {
        "id": pa.int64(),
        "small": pa.int16(),
        "flag": pa.bool_(),
        "ratio": pa.float32(),
        "score": pa.float64(),
        "price": pa.decimal128(10, 2),
        "loose": pa.float64(),
        "label": pa.string(),
        "code": pa.string(),
        "body": pa.binary(),
        "day": pa.date32(),
        "at": pa.timestamp("us"),
        "at_tz": pa.timestamp("us", tz="UTC"),
        "clock": pa.time64("us"),
        "span": pa.duration("us"),
        "doc": pa.string(),
        "ident": pa.string(),
        "tags": pa.list_(pa.string()),
        "counts": pa.list_(pa.int32()),
        "addr": pa.string(),
    }
    assert {f.name: f.type for f in table.schema} == expected_types
    first, second = table.to_pylist()
    assert first["price"] == Decimal("12.34") and first["loose"] == 0.125
    assert first["code"] == "ab " and first["body"] == b"\x01\x02"
    assert first["day"] == dt.date(2024, 2, 29)
    assert first["at"] == dt.datetime(2024, 1, 2, 3, 4, 5, 123456)
    assert first["at_tz"] == dt.datetime(2024, 1, 2, 2, 4, 5, tzinfo=dt.UTC)
    assert first["clock"] == dt.time(10, 11, 12) and first["span"] == dt.timedelta(days=1, hours=2)
    assert json.loads(first["doc"]) == {"k": [1, 2]} and first["ident"] == str(row_id)
    assert first["tags"] == ["a", "b"] and first["counts"] == [1, None, 3] and first["addr"] == "10.0.0.1"
    assert second["price"] is None  # NaN has no decimal128 value
    assert all(second[name] is None for name in expected_types if name != "id")


def test_empty_result_has_the_schema(numbers: str) -> None:
    reader = pg_reader(numbers, query="SELECT id, name FROM numbers WHERE false")
    result = reader.read(None, 10)
    reader.close()
    assert result.end_of_input and result.data.num_rows == 0
    assert result.data.schema.names == ["id", "name"]


def test_bad_query_is_a_transport_error(numbers: str) -> None:
    reader = pg_reader(numbers, query="SELECT no_such_column FROM numbers")
    with pytest.raises(TransportError, match="connection 'pg'.*query failed.*no_such_column"):
        reader.read(None, 10)
    reader.close()
    writer = pg_reader(numbers, query="DELETE FROM numbers")
    with pytest.raises(TransportError, match="query failed"):
        writer.read(None, 10)
    writer.close()
    with psycopg.connect(numbers) as conn:
        assert conn.execute("SELECT count(*) FROM numbers").fetchone()[0] == 95


def test_missing_table_is_a_transport_error(postgres_dsn: str) -> None:
    reader = pg_reader(postgres_dsn, table="nope")
    with pytest.raises(TransportError, match="table 'nope' failed.*nope"):
        reader.read(None, 10)
    reader.close()


def test_unreachable_server_is_a_transport_error() -> None:
    reader = pg_reader(f"postgresql://postgres@127.0.0.1:{free_port()}/x", query="SELECT 1")
    with pytest.raises(TransportError, match="connection 'pg'.*cannot connect"):
        reader.read(None, 10)
    reader.close()
