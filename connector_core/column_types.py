"""Column types, in one table: the project file's SQL types and how Arrow, DuckDB and Snowflake spell them.

- :data:`COLUMN_TYPES`: each SQL type ``connectors.yaml`` accepts in ``columns`` -> its Arrow type and the type
  written in each sink's ``CREATE TABLE`` (:meth:`Database.declared_type`);
- :meth:`Database.inferred_type`: the column type a sink creates for an Arrow type inferred from the records
  (a table without ``columns``);
- :func:`arrow_type_of_snowflake`: the Arrow type of a Snowflake column as ``information_schema`` describes it;
- :func:`sql_type_of_values`: the SQL type datagen gives a column from the Python values of its plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class ColumnType:
    """One SQL column type of the project file: its Arrow type and its spelling in each sink's DDL."""

    arrow: pa.DataType
    duckdb: str
    snowflake: str


def _spellings(arrow: pa.DataType, *names: str, snowflake: str | None = None) -> dict[str, ColumnType]:
    """SQL types ``names`` of one Arrow type, spelled as written in DuckDB, and in Snowflake too unless
    ``snowflake`` is given."""
    return {name: ColumnType(arrow, name, snowflake or name) for name in names}


#: The SQL types of ``columns`` in ``connectors.yaml`` (upper case): Arrow type, DuckDB and Snowflake spelling.
COLUMN_TYPES: dict[str, ColumnType] = {
    **_spellings(pa.bool_(), "BOOLEAN"),
    **_spellings(pa.int8(), "TINYINT"),
    **_spellings(pa.int16(), "SMALLINT"),
    **_spellings(pa.int32(), "INTEGER", "INT"),
    **_spellings(pa.int64(), "BIGINT"),
    **_spellings(pa.float32(), "FLOAT", "REAL"),
    **_spellings(pa.float64(), "DOUBLE"),
    **_spellings(pa.string(), "VARCHAR"),
    **_spellings(pa.string(), "TEXT", "STRING", snowflake="VARCHAR"),
    **_spellings(pa.date32(), "DATE"),
    **_spellings(pa.timestamp("us"), "TIMESTAMP", snowflake="TIMESTAMP_NTZ"),
}


def column_type(sql_type: str) -> ColumnType:
    """The entry of :data:`COLUMN_TYPES` for ``sql_type`` (any case); :class:`ValueError` names the known ones."""
    try:
        return COLUMN_TYPES[sql_type.upper()]
    except KeyError:
        raise ValueError(f"unknown column type {sql_type!r}; use one of {', '.join(sorted(COLUMN_TYPES))}") from None


def arrow_schema(columns: Mapping[str, str]) -> pa.Schema:
    """The Arrow schema of ``columns`` (column name -> SQL type of :data:`COLUMN_TYPES`)."""
    fields = []
    for name, sql_type in columns.items():
        try:
            fields.append(pa.field(name, column_type(sql_type).arrow))
        except ValueError as exc:
            raise ValueError(f"column {name!r}: {exc}") from None
    return pa.schema(fields)


@dataclass(frozen=True)
class Database:
    """How one sink database spells column types in ``CREATE TABLE``."""

    name: str  #: the :class:`ColumnType` field holding this database's spelling
    integers: Mapping[int, str]  #: integer type by bit width
    float32: str
    float64: str
    timestamp: str
    timestamp_tz: str
    decimal: str  #: a template of ``precision`` and ``scale``

    def declared_type(self, sql_type: str) -> str:
        """The column type for a SQL type of the project file."""
        return str(getattr(column_type(sql_type), self.name))

    def inferred_type(self, data_type: pa.DataType) -> str:
        """The column type for an Arrow type inferred from records (nested and unknown types become VARCHAR)."""
        if pa.types.is_boolean(data_type):
            return "BOOLEAN"
        if pa.types.is_integer(data_type):
            return self.integers[data_type.bit_width]
        if pa.types.is_floating(data_type):
            return self.float64 if pa.types.is_float64(data_type) else self.float32
        if pa.types.is_date(data_type):
            return "DATE"
        if pa.types.is_timestamp(data_type):
            return self.timestamp_tz if data_type.tz else self.timestamp
        if pa.types.is_decimal(data_type):
            return self.decimal.format(precision=data_type.precision, scale=data_type.scale)
        return "VARCHAR"


DUCKDB = Database(
    name="duckdb",
    integers={8: "TINYINT", 16: "SMALLINT", 32: "INTEGER", 64: "BIGINT"},
    float32="FLOAT",
    float64="DOUBLE",
    timestamp="TIMESTAMP",
    timestamp_tz="TIMESTAMPTZ",
    decimal="DECIMAL({precision}, {scale})",
)
SNOWFLAKE = Database(
    name="snowflake",
    integers=dict.fromkeys((8, 16, 32, 64), "NUMBER(38, 0)"),
    float32="DOUBLE",
    float64="DOUBLE",
    timestamp="TIMESTAMP_NTZ",
    timestamp_tz="TIMESTAMP_TZ",
    decimal="NUMBER({precision}, {scale})",
)

_SNOWFLAKE_INTEGERS = {"NUMBER", "DECIMAL", "NUMERIC", "INT", "INTEGER", "BIGINT", "SMALLINT", "TINYINT"}
_SNOWFLAKE_FLOATS = {"FLOAT", "DOUBLE", "REAL", "FLOAT4", "FLOAT8", "DOUBLE PRECISION"}


def arrow_type_of_snowflake(data_type: str, scale: int | None) -> pa.DataType:
    """The Arrow type of a Snowflake column (``information_schema.columns``: ``data_type``, ``numeric_scale``)."""
    name = data_type.upper()
    if name in _SNOWFLAKE_INTEGERS:
        return pa.int64() if not scale else pa.float64()
    if name in _SNOWFLAKE_FLOATS:
        return pa.float64()
    if name == "BOOLEAN":
        return pa.bool_()
    if name == "DATE":
        return pa.date32()
    if name.startswith("TIMESTAMP") or name == "DATETIME":
        return pa.timestamp("us", tz="UTC") if name in ("TIMESTAMP_TZ", "TIMESTAMP_LTZ") else pa.timestamp("us")
    return pa.string()


def sql_type_of_values(data_type: pa.DataType) -> str:
    """The SQL type of a column whose values Arrow read as ``data_type``: BOOLEAN, BIGINT (any integer), DOUBLE
    (any float), else VARCHAR."""
    if pa.types.is_boolean(data_type):
        return "BOOLEAN"
    if pa.types.is_integer(data_type):
        return "BIGINT"
    if pa.types.is_floating(data_type):
        return "DOUBLE"
    return "VARCHAR"
