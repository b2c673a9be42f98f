"""The rules a format owns: typed config, framing for the transports, the JSON route; and the column-type table."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pydantic import ValidationError

from connector_core.column_types import COLUMN_TYPES, DUCKDB, SNOWFLAKE, arrow_type_of_snowflake, sql_type_of_values
from connector_core.formats import (
    LINES,
    CsvFormatConfig,
    Format,
    Framing,
    JsonFormatConfig,
    JsonRoute,
    framing_of,
    json_route,
    starts_json_array,
)


def test_config_is_typed_per_format_and_dumps_only_what_was_written() -> None:
    json_format = Format(name="json", config={"array": "true"})
    assert isinstance(json_format.config, JsonFormatConfig) and json_format.config.array is True
    assert json_format.config.reader == "auto"
    assert json_format.model_dump() == {"name": "json", "config": {"array": True}}
    csv = Format(name="csv", config={"delimiter": ";"})
    assert isinstance(csv.config, CsvFormatConfig) and csv.config.header and csv.config.delimiter == ";"
    assert Format(name="parquet").model_dump() == {"name": "parquet", "config": {}}


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ({"name": "csv", "config": {"delimiter": ";;"}}, "csv delimiter must be one character, got ';;'"),
        (
            {"name": "csv", "config": {"array": True}},
            "unknown key 'array'; remove it or check its spelling (allowed: header, delimiter)",
        ),
        ({"name": "parquet", "config": {"header": True}}, "allowed: none"),
        ({"name": "json", "config": {"reader": "fast"}}, "'fast' is not one of auto, arrow"),
    ],
)
def test_bad_config_is_refused_with_the_allowed_values(fmt: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Format.model_validate(fmt)
    assert message in str(raised.value) and raised.value.errors()[0]["loc"][0] == "config"


def test_framing_tells_transports_how_to_cut() -> None:
    assert framing_of(None) == LINES
    assert Format(name="json").framing == Framing(may_be_json_array=True, newlines_are_whitespace=True)
    assert Format(name="json", config={"array": True}).framing.whole_object
    assert Format(name="csv").framing == Framing(header_line=True)
    assert Format(name="csv", config={"header": False}).framing == LINES
    assert Format(name="parquet").framing == Framing(whole_object=True)
    assert [starts_json_array(head) for head in (b"", b" \n\t", b"  [{}]", b'{"a": 1}')] == [None, None, True, False]


def test_json_route_is_decided_in_one_place() -> None:
    lines, array = b'{"a": 1}\n', b' [{"a": 1}]'
    fine = {"sink_reads_json": True, "table_exists": True, "has_processors": False}
    json_format = Format(name="json")

    def route(fmt: Format | None, data: object, **changed: bool) -> JsonRoute:
        return json_route(fmt, data, **{**fine, **changed})  # type: ignore[arg-type]

    assert route(json_format, lines) is JsonRoute.SINK_LOADS
    assert route(json_format, array) is JsonRoute.SINK_PARSES
    assert route(json_format, memoryview(lines), has_processors=True) is JsonRoute.SINK_PARSES
    assert route(Format(name="json", config={"array": True}), lines) is JsonRoute.SINK_PARSES
    assert route(Format(name="json", config={"reader": "arrow"}), lines) is JsonRoute.ARROW
    assert route(json_format, lines, sink_reads_json=False) is JsonRoute.ARROW
    assert route(json_format, lines, table_exists=False) is JsonRoute.ARROW
    assert route(json_format, b"") is JsonRoute.ARROW
    assert route(json_format, pa.table({"a": [1]})) is JsonRoute.ARROW
    assert route(Format(name="csv"), lines) is JsonRoute.ARROW
    assert route(None, lines) is JsonRoute.ARROW


def test_one_table_of_column_types() -> None:
    assert COLUMN_TYPES["TIMESTAMP"].arrow == pa.timestamp("us")
    assert [DUCKDB.declared_type(t) for t in ("text", "TIMESTAMP")] == ["TEXT", "TIMESTAMP"]
    assert [SNOWFLAKE.declared_type(t) for t in ("text", "TIMESTAMP")] == ["VARCHAR", "TIMESTAMP_NTZ"]
    with pytest.raises(ValueError, match="unknown column type 'blob'"):
        DUCKDB.declared_type("blob")

    inferred = [pa.int16(), pa.float32(), pa.timestamp("us", tz="UTC"), pa.decimal128(10, 2), pa.list_(pa.int8())]
    assert [DUCKDB.inferred_type(t) for t in inferred] == [
        "SMALLINT",
        "FLOAT",
        "TIMESTAMPTZ",
        "DECIMAL(10, 2)",
        "VARCHAR",
    ]
    assert [SNOWFLAKE.inferred_type(t) for t in inferred] == [
        "NUMBER(38, 0)",
        "DOUBLE",
        "TIMESTAMP_TZ",
        "NUMBER(10, 2)",
        "VARCHAR",
    ]
    assert arrow_type_of_snowflake("NUMBER", 0) == pa.int64() and arrow_type_of_snowflake("NUMBER", 2) == pa.float64()
    assert arrow_type_of_snowflake("TIMESTAMP_LTZ", None) == pa.timestamp("us", tz="UTC")
    assert [sql_type_of_values(pa.array(v).type) for v in ([True], [1], [1.5], ["x"])] == [
        "BOOLEAN",
        "BIGINT",
        "DOUBLE",
        "VARCHAR",
    ]
