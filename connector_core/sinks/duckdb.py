"""The embedded sink: a DuckDB database reached through a connection factory (dagster-duckdb's
``DuckDBResource.get_connection``).

Rows go in as Arrow (the table is registered with DuckDB and inserted with ``INSERT ... BY NAME SELECT``), and
the connector's :class:`SinkMark` is upserted into ``_connector_positions`` in the same DuckDB transaction.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import duckdb
import pyarrow as pa

from connector_core.sinks.base import SinkError, SinkMark, quote

POSITIONS_TABLE = "_connector_positions"

ConnectionFactory = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]


def duckdb_type(data_type: pa.DataType) -> str:
    """The DuckDB column type for an inferred Arrow type (nested and unknown types become VARCHAR)."""
    if pa.types.is_boolean(data_type):
        return "BOOLEAN"
    if pa.types.is_integer(data_type):
        return {8: "TINYINT", 16: "SMALLINT", 32: "INTEGER", 64: "BIGINT"}[data_type.bit_width]
    if pa.types.is_float32(data_type) or pa.types.is_float16(data_type):
        return "FLOAT"
    if pa.types.is_floating(data_type):
        return "DOUBLE"
    if pa.types.is_date(data_type):
        return "DATE"
    if pa.types.is_timestamp(data_type):
        return "TIMESTAMPTZ" if data_type.tz else "TIMESTAMP"
    if pa.types.is_decimal(data_type):
        return f"DECIMAL({data_type.precision}, {data_type.scale})"
    return "VARCHAR"


class DuckDBSink:
    """Tables in one schema of a DuckDB database; rows and the connector's mark commit together.

    Rows of one batch are inserted with DuckDB's ``preserve_insertion_order`` off unless asked otherwise: the
    insert then runs on every core (a table has no row order; add an ordering column when order matters).

    With ``hold_connection`` the sink keeps one connection from the factory open after its first use until
    :meth:`close`: DuckDB then shares the open database with every later connection of the factory, so a call
    costs no file open and no checkpoint (an ingest session uses this). The database file stays locked by this
    process until :meth:`close` (DuckDB allows one writing process per file).
    """

    kind = "duckdb"

    def __init__(
        self,
        connect: ConnectionFactory,
        schema: str = "main",
        hold_connection: bool = False,
        preserve_insertion_order: bool = False,
    ):
        self._factory = connect
        self.schema = schema
        self.hold_connection = hold_connection
        self.preserve_insertion_order = preserve_insertion_order
        self._held: AbstractContextManager[duckdb.DuckDBPyConnection] | None = None
        self._held_connection: duckdb.DuckDBPyConnection | None = None
        self._positions_ready = False
        #: Marks this sink committed while it holds the file (DuckDB lets one process write it): no re-read.
        self._marks: dict[str, SinkMark] = {}

    def connect(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A connection from the factory; with ``hold_connection``, the one held open (opened on first use)."""
        if not self.hold_connection:
            return self._factory()
        if self._held is None:
            held = self._factory()
            self._held_connection = held.__enter__()
            self._held = held
        return contextlib.nullcontext(self._held_connection)

    def close(self) -> None:
        """Release the held connection (DuckDB checkpoints and unlocks the file when it was the last)."""
        held, self._held = self._held, None
        self._marks.clear()
        if held is not None:
            held.__exit__(None, None, None)

    def _name(self, table: str) -> str:
        return f"{quote(self.schema)}.{quote(table)}"

    def check(self) -> None:
        """Open a connection and run ``SELECT 1``."""
        try:
            with self.connect() as conn:
                conn.execute("SELECT 1").fetchall()
        except duckdb.Error as exc:
            raise SinkError(f"cannot reach the DuckDB sink: {exc}") from exc

    def table_schema(self, table: str) -> pa.Schema | None:
        """The Arrow schema of ``table`` (``None`` when it does not exist)."""
        with self.connect() as conn:
            if not self._exists(conn, table):
                return None
            return conn.sql(f"SELECT * FROM {self._name(table)} LIMIT 0").to_arrow_table().schema

    def _exists(self, conn: duckdb.DuckDBPyConnection, table: str) -> bool:
        rows = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [self.schema, table],
        ).fetchall()
        return bool(rows)

    def ensure_table(self, table: str, columns: dict[str, str] | None, inferred: pa.Schema | None) -> pa.Schema:
        """Create ``table`` from ``columns`` (SQL types) or else from ``inferred``; return its schema."""
        if columns:
            definitions = [f"{quote(name)} {sql_type}" for name, sql_type in columns.items()]
        elif inferred is not None and len(inferred):
            definitions = [f"{quote(f.name)} {duckdb_type(f.type)}" for f in inferred]
        else:
            raise SinkError(f"cannot create table {table!r}: no columns given and none inferred")
        try:
            with self.connect() as conn:
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
                conn.execute(f"CREATE TABLE IF NOT EXISTS {self._name(table)} ({', '.join(definitions)})")
        except duckdb.Error as exc:
            raise SinkError(f"cannot create DuckDB table {self._name(table)}: {exc}") from exc
        schema = self.table_schema(table)
        assert schema is not None
        return schema

    def mark(self, connector_id: str) -> SinkMark | None:
        """The last committed mark of a connector."""
        if connector_id in self._marks:
            return self._marks[connector_id]
        with self.connect() as conn:
            try:
                rows = conn.execute(
                    f"SELECT position, batch_seq, total_records, total_bytes FROM {self._name(POSITIONS_TABLE)} "
                    "WHERE connector_id = ?",
                    [connector_id],
                ).fetchall()
            except duckdb.CatalogException:  # nothing was ever committed here
                return None
        if not rows:
            return None
        row = rows[0]
        return SinkMark(connector_id, json.loads(row[0]) if row[0] else None, row[1], row[2], row[3])

    def write(self, table: str, rows: pa.Table, mark: SinkMark) -> None:
        """Append ``rows`` and upsert ``mark`` in one transaction.

        The mark must follow the stored one (``batch_seq`` one higher), so two writers racing on the same
        connector cannot both commit the same batch: the loser's transaction is rolled back.
        """
        view = f"_batch_{uuid.uuid4().hex}"
        positions = self._name(POSITIONS_TABLE)
        try:
            with self.connect() as conn:
                if not self._positions_ready:
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {positions} (connector_id VARCHAR PRIMARY KEY, "
                        "position VARCHAR, batch_seq BIGINT NOT NULL, total_records BIGINT NOT NULL, "
                        "total_bytes BIGINT NOT NULL, committed_at TIMESTAMPTZ NOT NULL)"
                    )
                    self._positions_ready = True
                conn.execute("BEGIN TRANSACTION")
                try:
                    previous = conn.execute(
                        f"SELECT batch_seq FROM {positions} WHERE connector_id = ?", [mark.connector_id]
                    ).fetchall()
                    stored_seq = previous[0][0] if previous else 0
                    if stored_seq != mark.batch_seq - 1:
                        raise SinkError(
                            f"connector {mark.connector_id}: batch {mark.batch_seq} does not follow the stored "
                            f"batch {stored_seq} (another run is ingesting this connector?); nothing written"
                        )
                    if rows.num_rows:
                        self._insert(conn, table, rows, view)
                    conn.execute(
                        f"INSERT INTO {positions} VALUES (?, ?, ?, ?, ?, now()) ON CONFLICT (connector_id) DO UPDATE "
                        "SET position = excluded.position, batch_seq = excluded.batch_seq, "
                        "total_records = excluded.total_records, total_bytes = excluded.total_bytes, "
                        "committed_at = excluded.committed_at",
                        [
                            mark.connector_id,
                            json.dumps(mark.position),
                            mark.batch_seq,
                            mark.total_records,
                            mark.total_bytes,
                        ],
                    )
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            if self.hold_connection:
                self._marks[mark.connector_id] = mark
        except duckdb.Error as exc:
            raise SinkError(f"cannot write DuckDB table {self._name(table)}: {exc}") from exc

    def _insert(self, conn: duckdb.DuckDBPyConnection, table: str, rows: pa.Table, view: str) -> None:
        conn.register(view, rows)
        unordered = not self.preserve_insertion_order
        try:
            if unordered:
                conn.execute("SET preserve_insertion_order = false")
            conn.execute(f"INSERT INTO {self._name(table)} BY NAME SELECT * FROM {quote(view)}")
        finally:
            if unordered:
                conn.execute("RESET preserve_insertion_order")
            conn.unregister(view)

    def row_count(self, table: str) -> int:
        """Rows in ``table`` (0 when it does not exist)."""
        with self.connect() as conn:
            if not self._exists(conn, table):
                return 0
            return conn.execute(f"SELECT count(*) FROM {self._name(table)}").fetchall()[0][0]

    def read_table(self, table: str) -> Any:
        """The whole table as a pandas DataFrame."""
        with self.connect() as conn:
            return conn.sql(f"SELECT * FROM {self._name(table)}").df()
