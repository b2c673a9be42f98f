"""The production sink: tables in one Snowflake database and schema, reached through a connection factory
(dagster-snowflake's ``SnowflakeResource.get_connection``).

Rows load in bulk, as Snowflake loads files: the batch's Arrow table is written to a Parquet file and ``PUT`` to the
schema's internal stage ``_connector_stage`` (under a name of its own), then one transaction runs ``COPY INTO`` the
table from that file (``PURGE``: the staged file goes once loaded), updates the connector's mark in
``_connector_positions`` (the protocol of :mod:`connector_core.sinks.marks`, in Snowflake's words:
:data:`MARK_DIALECT`) and commits. ``COPY INTO`` must report every row of the batch loaded or the transaction is
rolled back. No row ever becomes a Python object. Identifiers are always double-quoted, so table and column names
keep the case written in ``connectors.yaml`` (columns are matched by name without regard to case, so a table must
not hold two columns whose names differ only in case). Column types come from :mod:`connector_core.column_types`.

Every failure leaves as a :class:`SinkError` carrying the first error. Records that are not UTF-8 never get here:
the formats make them parse errors (a Parquet file would take them, and ``COPY INTO`` fail on them).
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from connector_core.column_types import SNOWFLAKE, arrow_type_of_snowflake
from connector_core.sinks.base import SinkError, SinkMark, column_definitions, quote
from connector_core.sinks.marks import POSITIONS_TABLE, MarkDialect, MarkTable

#: The internal stage (one per schema) that batches are loaded from.
STAGE = "_connector_stage"

ConnectionFactory = Callable[[], AbstractContextManager[Any]]

#: The mark statements in Snowflake's words (``placeholder`` follows the connection's paramstyle).
MARK_DIALECT = MarkDialect("%s", "VARCHAR", "NUMBER(38, 0)", timestamp_type="TIMESTAMP_NTZ", now="CURRENT_TIMESTAMP()")


class SnowflakeSink:
    """Tables in ``database.schema``; rows and the connector's mark commit in one Snowflake transaction."""

    kind = "snowflake"

    def __init__(self, connect: ConnectionFactory, database: str, schema: str, warehouse: str | None = None):
        self.connect = connect
        self.database = database
        self.schema = schema
        self.warehouse = warehouse
        self._prepared = False

    def _name(self, table: str) -> str:
        return f"{quote(self.database)}.{quote(self.schema)}.{quote(table)}"

    def close(self) -> None:
        """Nothing stays open between calls (each call uses a connection of its own)."""

    @contextmanager
    def _cursor(self, action: str) -> Iterator[Any]:
        """A cursor on a fresh connection (warehouse selected). Any failure (the connector's, the batch's Parquet
        file's) becomes a :class:`SinkError` carrying the first error: closing the cursor after it never hides it."""
        import snowflake.connector.errors as sf_errors

        try:
            with self.connect() as conn:
                cursor = conn.cursor()
                try:
                    if self.warehouse:
                        cursor.execute(f"USE WAREHOUSE {quote(self.warehouse)}")
                    yield cursor
                except BaseException:
                    with contextlib.suppress(Exception):
                        cursor.close()
                    raise
                cursor.close()
        except (sf_errors.Error, OSError, pa.ArrowException) as exc:
            raise SinkError(f"Snowflake sink {self.database}.{self.schema}: cannot {action}: {exc}") from exc

    def check(self) -> None:
        """Open a connection and run ``SELECT 1``."""
        with self._cursor("connect") as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchall()

    def _columns(self, cursor: Any, table: str) -> list[tuple[str, str, int | None]]:
        cursor.execute(
            f"SELECT column_name, data_type, numeric_scale FROM {quote(self.database)}.information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (self.schema, table),
        )
        return list(cursor.fetchall())

    def table_schema(self, table: str) -> pa.Schema | None:
        """The Arrow schema of ``table`` (``None`` when it does not exist)."""
        with self._cursor(f"describe {table}") as cursor:
            columns = self._columns(cursor, table)
        if not columns:
            return None
        return pa.schema(
            [pa.field(name, arrow_type_of_snowflake(data_type, scale)) for name, data_type, scale in columns]
        )

    def _ensure_schema(self, cursor: Any) -> None:
        cursor.execute(
            f"SELECT count(*) FROM {quote(self.database)}.information_schema.schemata WHERE schema_name = %s",
            (self.schema,),
        )
        if not cursor.fetchone()[0]:
            cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.database)}.{quote(self.schema)}")

    def ensure_table(self, table: str, columns: dict[str, str] | None, inferred: pa.Schema | None) -> pa.Schema:
        """Create ``table`` from ``columns`` (SQL types) or else from ``inferred``; return its schema."""
        definitions = column_definitions(table, columns, inferred, SNOWFLAKE)
        with self._cursor(f"create table {table}") as cursor:
            self._ensure_schema(cursor)
            cursor.execute(f"CREATE TABLE IF NOT EXISTS {self._name(table)} ({definitions})")
        schema = self.table_schema(table)
        assert schema is not None
        return schema

    def drop_table(self, table: str) -> None:
        """``DROP TABLE IF EXISTS``."""
        with self._cursor(f"drop table {table}") as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {self._name(table)}")

    def _marks(self, cursor: Any) -> MarkTable:
        """The mark statements for ``cursor``'s connection (its paramstyle picks the placeholder)."""
        qmark = getattr(cursor.connection, "_paramstyle", "pyformat") == "qmark"
        dialect = replace(MARK_DIALECT, placeholder="?") if qmark else MARK_DIALECT
        return MarkTable(self._name(POSITIONS_TABLE), dialect)

    def mark(self, connector_id: str) -> SinkMark | None:
        """The last committed mark of a connector."""
        with self._cursor("read the connector position") as cursor:
            if not self._columns(cursor, POSITIONS_TABLE):
                return None
            return self._marks(cursor).read(cursor, connector_id)

    def move_mark(self, old_connector_id: str, new_connector_id: str, replace: bool = False) -> SinkMark | None:
        """Move a connector's mark to a new id in one Snowflake transaction (:meth:`MarkTable.move`); ``None``
        when the old id has none or the positions table does not exist."""
        with self._cursor("move a connector position") as cursor:
            if not self._columns(cursor, POSITIONS_TABLE):
                return None
            return self._marks(cursor).move(cursor, old_connector_id, new_connector_id, replace)

    def write(self, table: str, rows: pa.Table, mark: SinkMark) -> None:
        """Append ``rows`` and store ``mark`` in one transaction (``BEGIN`` ... ``COMMIT``, :meth:`MarkTable.commit`).

        The mark must follow the stored one (``batch_seq`` one higher): the position row is updated with
        ``WHERE batch_seq = previous``, so of two writers racing on one connector only one commits.
        """
        with self._cursor(f"write {table}") as cursor, self._staged(cursor, rows) as staged:

            def copy_rows() -> int:
                if staged is not None:
                    self._copy_into(cursor, table, staged, rows.num_rows)
                return rows.num_rows

            self._marks(cursor).commit(cursor, lambda _: mark, copy_rows)

    def _prepare(self, cursor: Any) -> None:
        """The schema, the positions table and the stage (DDL commits by itself in Snowflake: before BEGIN, once)."""
        if self._prepared:
            return
        self._ensure_schema(cursor)
        cursor.execute(self._marks(cursor).create_sql())
        cursor.execute(f"CREATE STAGE IF NOT EXISTS {self._name(STAGE)}")
        self._prepared = True

    @contextmanager
    def _staged(self, cursor: Any, rows: pa.Table) -> Iterator[str | None]:
        """``rows`` as a Parquet file PUT to the stage (before the transaction: PUT is not transactional); the
        staged folder, ``None`` for no rows. The local file is removed afterwards, the staged one when the load did
        not purge it."""
        self._prepare(cursor)
        if not rows.num_rows:
            yield None
            return
        cursor.execute(f"USE DATABASE {quote(self.database)}")  # COPY's load history lives in the current one
        folder = f"@{self._name(STAGE)}/{uuid.uuid4().hex}"
        with tempfile.TemporaryDirectory(prefix="connector-batch-") as local:
            path = Path(local) / "batch.parquet"
            pq.write_table(rows, path)
            cursor.execute(f"PUT '{path.as_uri()}' {folder} AUTO_COMPRESS = FALSE OVERWRITE = TRUE")
        try:
            yield folder
        except BaseException:
            with contextlib.suppress(Exception):  # the load failed: leave no staged file behind
                cursor.execute(f"REMOVE {folder}")
            raise

    def _copy_into(self, cursor: Any, table: str, folder: str, expected: int) -> None:
        """Load the staged batch; every row must load, or the transaction is rolled back."""
        cursor.execute(
            f"COPY INTO {self._name(table)} FROM {folder} FILE_FORMAT = (TYPE = PARQUET USE_LOGICAL_TYPE = TRUE) "
            "MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE PURGE = TRUE"
        )
        loaded = sum(int(row[3]) for row in cursor.fetchall())  # file, status, rows_parsed, rows_loaded, ...
        if loaded != expected:
            raise SinkError(f"COPY INTO {table} loaded {loaded} of the batch's {expected} rows; nothing written")

    def row_count(self, table: str) -> int:
        """Rows in ``table`` (0 when it does not exist)."""
        with self._cursor(f"count {table}") as cursor:
            if not self._columns(cursor, table):
                return 0
            cursor.execute(f"SELECT count(*) FROM {self._name(table)}")
            return int(cursor.fetchone()[0])

    def read_table(self, table: str) -> Any:
        """The whole table as a pandas DataFrame."""
        import pandas as pd

        with self._cursor(f"read {table}") as cursor:
            cursor.execute(f"SELECT * FROM {self._name(table)}")
            names = [d[0] for d in cursor.description]
            return pd.DataFrame(cursor.fetchall(), columns=names)
