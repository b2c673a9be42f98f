"""``postgres_input``: a snapshot of a query result (or a whole table), read in batches of typed Arrow tables.

The rows come through a server-side (named) cursor, so memory stays bounded by ``batch_rows``; the cursor and
its transaction stay open across the batches of one run (one consistent snapshot). End of input after the last
row of the result.

Position: the number of rows done. After a restart the statement runs again and that many rows are skipped on
the server (``MOVE FORWARD n``, the cursor form of ``OFFSET n``), so the order must be deterministic:

- ``query``: give it an ``ORDER BY`` on a unique key, or a resume may skip or repeat rows;
- ``table``: read in primary-key order; a table without a primary key is read in physical order
  (``ORDER BY tableoid, ctid``), exact on resume unless the table was rewritten or updated in between
  (``VACUUM FULL``, ``CLUSTER``, ``UPDATE``); a view without a key is ordered by all its columns.

Types: integers, floats, booleans, text, bytea, date, time, timestamp(tz) (UTC), interval, ``numeric(p, s)``
(decimal128; NaN/±Infinity become null) and one-dimensional arrays of those map to their Arrow types;
unconstrained ``numeric`` becomes float64; json/jsonb become their JSON text; everything else (uuid, inet,
enums, ranges, ...) becomes its text form.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.types.string import TextLoader

from connector_core.transports.base import ReadResult, TransportContext, TransportError
from connector_core.transports.configs import PostgresInputConfig

# Types psycopg turns into Python objects that are not the value we want: load their text instead.
_TEXT_TYPES = (
    "json", "jsonb", "uuid", "inet", "cidr", "timetz", "money",
    "int4range", "int8range", "numrange", "daterange", "tsrange", "tstzrange",
)  # fmt: skip

_SCALARS: dict[int, pa.DataType] = {
    16: pa.bool_(),
    17: pa.binary(),
    20: pa.int64(),
    21: pa.int16(),
    23: pa.int32(),
    26: pa.int64(),
    700: pa.float32(),
    701: pa.float64(),
    1082: pa.date32(),
    1083: pa.time64("us"),
    1114: pa.timestamp("us"),
    1184: pa.timestamp("us", tz="UTC"),
    1186: pa.duration("us"),
}
_ARRAYS: dict[int, int] = {1000: 16, 1005: 21, 1007: 23, 1016: 20, 1021: 700, 1022: 701, 1009: 25, 1015: 1043}
_STRINGS = {18, 19, 25, 1042, 1043}
_NUMERIC = 1700


def _column_type(column: Any) -> tuple[pa.DataType, Callable[[list[Any]], list[Any]] | None]:
    """Arrow type of a result column, and a conversion of its Python values when needed."""
    oid = column.type_code
    if oid in _SCALARS:
        return _SCALARS[oid], None
    if oid in _STRINGS:
        return pa.string(), None
    if oid == _NUMERIC:
        if column.precision is not None and column.scale is not None and column.precision <= 38:
            return pa.decimal128(column.precision, column.scale), _finite_decimals
        return pa.float64(), _floats
    if oid in _ARRAYS:
        inner = _ARRAYS[oid]
        return pa.list_(_SCALARS.get(inner, pa.string())), None
    return pa.string(), _texts


def _finite_decimals(values: list[Any]) -> list[Any]:
    return [v if v is None or v.is_finite() else None for v in values]


def _floats(values: list[Any]) -> list[Any]:
    return [None if v is None else float(v) for v in values]


def _texts(values: list[Any]) -> list[Any]:
    return [v if v is None or isinstance(v, str) else str(v) for v in values]


class PostgresReader:
    """One snapshot: a connection, a transaction and a named cursor, kept open until the result is read."""

    can_finish = True

    def __init__(self, ctx: TransportContext) -> None:
        self._ctx = ctx
        self._config: PostgresInputConfig = ctx.connector.transport.parsed_config()
        self._what = f"postgres_input (connection {self._config.connection!r})"
        self._stack: ExitStack | None = None
        self._conn: Any = None
        self._cursor: Any = None
        self._rows: int | None = None  #: rows done at the cursor's current place
        self._schema: pa.Schema | None = None
        self._converters: list[Callable[[list[Any]], list[Any]] | None] = []
        self._finished_at: int | None = None  #: row count of a result already read to its end

    def read(self, position: Any, max_records: int) -> ReadResult:
        """Return the next at most ``min(max_records, batch_rows)`` rows after ``position`` rows."""
        start = int(position or 0)
        if start < 0:
            raise TransportError(f"{self._what}: invalid position {position!r}")
        if self._finished_at is not None and start >= self._finished_at and self._schema is not None:
            return ReadResult(data=self._schema.empty_table(), position=start, end_of_input=True)
        if self._cursor is None or self._rows != start:
            self._open(start)
        wanted = max(1, min(max_records, self._config.batch_rows))
        try:
            rows = self._cursor.fetchmany(wanted)
        except psycopg.Error as exc:
            self._close_snapshot()
            raise TransportError(f"{self._what}: reading the result failed: {exc}".rstrip()) from None
        try:
            table = self._to_arrow(rows)
        except TransportError:
            self._close_snapshot()
            raise
        done = self._rows = start + len(rows)
        end = len(rows) < wanted
        if end:
            self._finished_at = done
            self._close_snapshot()
        return ReadResult(
            data=table,
            position=done,
            end_of_input=end,
            bytes_read=table.nbytes,
            starts_object=start == 0,
        )

    def close(self) -> None:
        """Close the cursor, end the transaction and close the connection."""
        self._close_snapshot()

    # -------------------------------------------------------------------------------------------- internals
    def _open(self, start: int) -> None:
        self._close_snapshot()
        stack = ExitStack()
        try:
            conn = stack.enter_context(self._ctx.clients.postgres_connection(self._config.connection))
        except Exception as exc:  # psycopg.OperationalError, a missing secret, ...
            stack.close()
            raise TransportError(f"{self._what}: cannot connect: {exc}".rstrip()) from None
        self._stack, self._conn = stack, conn
        try:
            if conn.autocommit:
                conn.autocommit = False  # a named cursor lives in a transaction
            statement = self._statement()
            cursor = conn.cursor(name=f"connectors_{uuid.uuid4().hex[:12]}")
            for name in _TEXT_TYPES:
                cursor.adapters.register_loader(name, TextLoader)
            cursor.execute(statement)
            if start:
                cursor.scroll(start)  # MOVE FORWARD start: the rows are skipped on the server
        except psycopg.Error as exc:
            self._close_snapshot()
            what = f"table {self._config.table!r}" if self._config.table else "query"
            raise TransportError(f"{self._what}: {what} failed: {exc}".rstrip()) from None
        self._cursor = cursor
        self._rows = start
        types = [_column_type(column) for column in cursor.description]
        self._schema = pa.schema([(column.name, t) for column, (t, _) in zip(cursor.description, types, strict=True)])
        self._converters = [convert for _, convert in types]

    def _statement(self) -> sql.Composable:
        if self._config.query:
            return sql.SQL(self._config.query.strip().rstrip(";"))  # type: ignore[arg-type]
        assert self._config.table is not None
        name = sql.Identifier(*self._config.table.split("."))
        relation = name.as_string(self._conn)
        kind = self._conn.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass", [relation]).fetchone()[0]
        keys = [
            row[0]
            for row in self._conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
                " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                " WHERE i.indrelid = %s::regclass AND i.indisprimary"
                " ORDER BY array_position(i.indkey::int2[], a.attnum)",
                [relation],
            )
        ]
        if keys:
            order: sql.Composable = sql.SQL(", ").join(sql.Identifier(k) for k in keys)
        elif kind in ("r", "p", "m"):
            order = sql.SQL("tableoid, ctid")
        else:
            columns = self._conn.execute(
                "SELECT count(*) FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                [relation],
            ).fetchone()[0]
            order = sql.SQL(", ").join(sql.Literal(i) for i in range(1, columns + 1))
        return sql.SQL("SELECT * FROM {} ORDER BY {}").format(name, order)

    def _to_arrow(self, rows: list[tuple[Any, ...]]) -> pa.Table:
        assert self._schema is not None
        if not rows:
            return self._schema.empty_table()
        arrays = []
        for index, (field, values) in enumerate(zip(self._schema, zip(*rows, strict=True), strict=True)):
            convert = self._converters[index]
            column = convert(list(values)) if convert else list(values)
            try:
                arrays.append(pa.array(column, type=field.type))
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                raise TransportError(
                    f"{self._what}: column {field.name!r}: cannot convert values to {field.type}: {exc}"
                ) from None
        return pa.Table.from_arrays(arrays, schema=self._schema)

    def _close_snapshot(self) -> None:
        cursor, stack, conn = self._cursor, self._stack, self._conn
        self._cursor = self._stack = self._conn = None
        self._rows = None
        try:
            if cursor is not None and not cursor.closed and conn is not None and not conn.broken:
                try:
                    cursor.close()
                except psycopg.Error:
                    pass
            if conn is not None and not conn.closed:
                try:
                    conn.rollback()  # read only: nothing to keep
                except psycopg.Error:
                    pass
        finally:
            if stack is not None:
                stack.close()


def open_reader(ctx: TransportContext) -> PostgresReader:
    """Open a ``postgres_input`` reader (it connects on the first read)."""
    return PostgresReader(ctx)
