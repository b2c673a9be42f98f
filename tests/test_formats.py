"""formats: bytes -> Arrow of the table's schema; bad records become (index, reason) and never fail the batch."""

from __future__ import annotations

import datetime
import io
import json
import math

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import pytest

from connector_core.column_types import arrow_schema
from connector_core.formats import Format, conform, parse

JSON = Format(name="json")
CSV = Format(name="csv")
SCHEMA = arrow_schema({"id": "BIGINT", "name": "VARCHAR", "price": "DOUBLE", "day": "DATE"})


def json_lines(records: list[object]) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()


def test_arrow_schema_maps_every_sql_type() -> None:
    schema = arrow_schema(
        {
            "b": "BOOLEAN",
            "t": "TINYINT",
            "s": "SMALLINT",
            "i": "integer",
            "n": "INT",
            "g": "BIGINT",
            "f": "FLOAT",
            "r": "REAL",
            "d": "DOUBLE",
            "v": "VARCHAR",
            "x": "TEXT",
            "y": "STRING",
            "dt": "DATE",
            "ts": "TIMESTAMP",
        }
    )
    assert [f.type for f in schema] == [
        pa.bool_(),
        pa.int8(),
        pa.int16(),
        pa.int32(),
        pa.int32(),
        pa.int64(),
        pa.float32(),
        pa.float32(),
        pa.float64(),
        pa.string(),
        pa.string(),
        pa.string(),
        pa.date32(),
        pa.timestamp("us"),
    ]
    with pytest.raises(ValueError, match="'blob'"):
        arrow_schema({"c": "blob"})


def test_json_lines_are_cast_to_the_table_schema() -> None:
    data = json_lines(
        [
            {"id": 1, "name": "a", "price": 2, "day": "2024-03-01", "extra": True},
            {"name": "b", "id": 2},
        ]
    )
    parsed = parse(data, JSON, SCHEMA)
    assert parsed.errors == []
    assert parsed.table.schema == SCHEMA
    assert parsed.table.to_pylist() == [
        {"id": 1, "name": "a", "price": 2.0, "day": datetime.date(2024, 3, 1)},
        {"id": 2, "name": "b", "price": None, "day": None},
    ]


def test_one_bad_line_among_100k_costs_logarithmic_reader_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    records: list[object] = [{"id": i, "name": f"n{i}"} for i in range(100_000)]
    records[61_234] = '{"id": 7, "name": '  # truncated
    calls = []
    real_read_json = pa_json.read_json

    def counting_read_json(*args: object, **kwargs: object) -> pa.Table:
        calls.append(1)
        return real_read_json(*args, **kwargs)

    monkeypatch.setattr(pa_json, "read_json", counting_read_json)
    parsed = parse(json_lines(records), JSON, SCHEMA)
    assert [index for index, _ in parsed.errors] == [61_234]
    assert parsed.table.num_rows == 99_999
    assert 61_234 not in set(parsed.table.column("id").to_pylist())
    assert len(calls) <= 2 * math.ceil(math.log2(100_000)) + 2


def test_incompatible_values_are_errors_with_their_record_index() -> None:
    data = json_lines(
        [
            {"id": 1},
            {"id": "not a number"},
            "[1, 2]",
            {"id": 4, "day": "31/02/2024"},
            "",
            {"id": 5, "price": 1.5},
        ]
    )
    parsed = parse(data, JSON, SCHEMA)
    assert [index for index, _ in parsed.errors] == [1, 2, 3]
    assert "day" in parsed.errors[2][1]
    assert parsed.table.column("id").to_pylist() == [1, 5]


def test_without_schema_types_are_inferred_and_later_misfits_rejected() -> None:
    parsed = parse(json_lines([{"a": 1, "b": "x"}, {"a": 2, "b": "y", "c": 1.5}]), JSON, None)
    assert parsed.errors == []
    assert parsed.table.schema.field("a").type == pa.int64()
    assert parsed.table.column("c").to_pylist() == [None, 1.5]

    mixed = parse(json_lines([{"a": 1}, {"a": 2}, {"a": "three"}, {"a": 4}]), JSON, None)
    assert [index for index, _ in mixed.errors] == [2]
    assert mixed.table.column("a").to_pylist() == [1, 2, 4]


@pytest.mark.parametrize("config", [{}, {"array": True}])
def test_json_arrays(config: dict[str, object]) -> None:
    fmt = Format(name="json", config=config)
    data = json.dumps([{"id": 1, "name": "a"}, {"id": "x"}, 5, {"id": 4}], indent=2).encode()
    parsed = parse(data, fmt, SCHEMA)
    assert [index for index, _ in parsed.errors] == [1, 2]
    assert parsed.table.column("id").to_pylist() == [1, 4]


def test_broken_json_array_keeps_the_elements_around_the_break() -> None:
    parsed = parse(b'[{"id": 1}, {"id": oops}, {"id": 3}]', JSON, SCHEMA)
    assert [index for index, _ in parsed.errors] == [1]
    assert parsed.table.column("id").to_pylist() == [1, 3]


def test_a_record_that_is_not_utf8_is_a_parse_error_of_that_record() -> None:
    """pyarrow's JSON reader takes such bytes (the sink's insert would fail on them)."""
    data = b'{"id": 1, "name": "a"}\n{"id": 2, "name": "b\xffc"}\n{"id": 3, "unused": "\xc3"}\n{"id": 4, "name": "\xc3\xa9"}\n'
    parsed = parse(data, JSON, SCHEMA)
    assert parsed.table.column("id").to_pylist() == [1, 4]
    assert parsed.table.column("name").to_pylist() == ["a", "\u00e9"]
    assert [index for index, _ in parsed.errors] == [1, 2]
    assert all("UTF-8" in reason for _, reason in parsed.errors)


def test_a_null_record_is_a_row_of_nulls_wherever_it_falls() -> None:
    """pyarrow's reader crashes the process on a block that starts with ``null`` (apache/arrow#47409)."""
    parsed = parse(b'null\n{"id": 1}\n  null \n', JSON, SCHEMA)
    assert parsed.errors == [] and parsed.table.column("id").to_pylist() == [None, 1, None]
    record = json.dumps({"id": 1, "name": "x" * 80}).encode() + b"\n"
    big = record * 20_000 + b"null\n" * 50 + record * 20_000  # blocks of 1 MB: one starts among the nulls
    parsed = parse(big, JSON, SCHEMA)
    assert parsed.errors == [] and parsed.table.column("id").null_count == 50
    assert parse(b"null\n" + big + b'{"id": "x"}\n', JSON, SCHEMA).table.num_rows == 40_051


@pytest.mark.parametrize("broken", [False, True], ids=["well-formed", "broken"])
def test_a_bad_byte_in_a_json_array_breaks_only_its_element(broken: bool) -> None:
    elements = [json.dumps({"id": i, "name": f"n{i}"}).encode() for i in range(1_000)]
    elements[500] = b'{"id": 500, "name": "n\xff"}'
    if broken:
        elements[700] = b'{"id": oops}'
    parsed = parse(b"[" + b",\n".join(elements) + b"]", JSON, SCHEMA)
    bad = [500, 700] if broken else [500]
    assert [index for index, _ in parsed.errors] == bad
    assert "UTF-8" in parsed.errors[0][1]
    assert parsed.table.column("id").to_pylist() == [i for i in range(1_000) if i not in bad]


def test_csv_header_and_bad_rows() -> None:
    data = b"name,id,price\nwidget,1,2.5\ngadget,two,3\n\nthing,3\nbolt,4,1\n"
    parsed = parse(data, CSV, SCHEMA, starts_object=True)
    assert [index for index, _ in parsed.errors] == [1, 2]
    assert parsed.table.schema == SCHEMA
    assert parsed.table.to_pydict()["id"] == [1, 4]
    assert parsed.table.to_pydict()["name"] == ["widget", "bolt"]


def test_csv_chunk_after_the_header_uses_the_schema_column_order() -> None:
    parsed = parse(b"7,seven,1.25,2024-01-31\n", CSV, SCHEMA, starts_object=False)
    assert parsed.table.to_pylist()[0]["name"] == "seven"
    assert parsed.table.to_pylist()[0]["price"] == 1.25


def test_csv_without_header_and_with_a_delimiter() -> None:
    fmt = Format(name="csv", config={"header": False, "delimiter": ";"})
    parsed = parse(b"1;a;0.5;2024-01-01\n2;b;x;2024-01-02\n", fmt, SCHEMA, starts_object=True)
    assert parsed.table.column("id").to_pylist() == [1]
    assert [index for index, _ in parsed.errors] == [1]

    inferred = parse(b"a;b\n1;x\n", Format(name="csv", config={"delimiter": ";"}), None, starts_object=True)
    assert inferred.table.to_pylist() == [{"a": 1, "b": "x"}]


def test_parquet_file_is_read_and_cast() -> None:
    source = pa.table({"id": pa.array([1, 2], pa.int32()), "name": ["a", "b"], "day": ["2024-01-01", "bad"]})
    sink = io.BytesIO()
    pq.write_table(source, sink)
    parsed = parse(sink.getvalue(), Format(name="parquet"), SCHEMA)
    assert parsed.table.schema == SCHEMA
    assert parsed.table.column("id").to_pylist() == [1]
    assert [index for index, _ in parsed.errors] == [1]

    broken = parse(b"PAR1 not really", Format(name="parquet"), SCHEMA)
    assert broken.table.num_rows == 0
    assert broken.errors[0][0] == 0 and "parquet" in broken.errors[0][1]


def test_conform_adds_missing_columns_and_matches_names_case_insensitively() -> None:
    table = pa.table({"ID": [1, 2], "Name": ["a", "b"], "unused": [0, 0]})
    result = conform(table, SCHEMA)
    assert result.errors == []
    assert result.table.schema == SCHEMA
    assert result.table.column("price").null_count == 2
    assert result.table.column("name").to_pylist() == ["a", "b"]


def test_empty_input_gives_an_empty_table_of_the_schema() -> None:
    for fmt in (JSON, CSV):
        parsed = parse(b"\n  \n", fmt, SCHEMA, starts_object=True)
        assert parsed.table.num_rows == 0 and parsed.table.schema == SCHEMA and parsed.errors == []
