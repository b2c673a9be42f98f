"""The sink interface: rows and the source position they came from are committed in one transaction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from connector_core.column_types import Database
from connector_core.formats import RecordReader


def quote(identifier: str) -> str:
    """A SQL identifier in double quotes (case kept, embedded quotes doubled), for DuckDB and Snowflake alike."""
    return '"' + identifier.replace('"', '""') + '"'


class SinkError(RuntimeError):
    """A sink that cannot be reached or written (it carries the database's first error). Every failure of a sink
    call leaves as one, never as the database client's own exception."""


def column_definitions(
    table: str, columns: dict[str, str] | None, inferred: pa.Schema | None, database: Database
) -> str:
    """The column list of ``CREATE TABLE table`` in ``database``'s types: from ``columns`` (SQL types of the
    project file), else from an inferred Arrow schema; :class:`SinkError` when there is neither."""
    if columns:
        return ", ".join(f"{quote(name)} {database.declared_type(sql_type)}" for name, sql_type in columns.items())
    if inferred is not None and len(inferred):
        return ", ".join(f"{quote(f.name)} {database.inferred_type(f.type)}" for f in inferred)
    raise SinkError(f"cannot create table {table!r}: no columns given and none inferred")


@dataclass
class SinkMark:
    """What the sink stores per connector beside the rows (table ``_connector_positions``).

    It is the source of truth for exactly-once: the rows of batch ``batch_seq`` and this mark commit together,
    and a restarted connector resumes from the mark's ``position``. The cumulative totals let the connector
    database catch up when a crash hit between the sink commit and the state commit.
    """

    connector_id: str
    position: Any
    batch_seq: int
    total_records: int
    total_bytes: int


class Sink(Protocol):
    """Where tables land (DuckDB, Snowflake)."""

    kind: str

    def check(self) -> None:
        """Reach the sink for real (``SELECT 1``); raise :class:`SinkError` naming the cause."""
        ...

    def table_schema(self, table: str) -> pa.Schema | None:
        """The Arrow schema of an existing table, ``None`` when it does not exist yet."""
        ...

    def ensure_table(self, table: str, columns: dict[str, str] | None, inferred: pa.Schema | None) -> pa.Schema:
        """Create the table from ``columns`` (SQL types) or else from an inferred schema; return its schema."""
        ...

    def drop_table(self, table: str) -> None:
        """Drop the table if it exists (e.g. one that a rolled-back step created)."""
        ...

    def mark(self, connector_id: str) -> SinkMark | None:
        """The last committed mark of a connector (``None``: nothing committed yet)."""
        ...

    def move_mark(self, old_connector_id: str, new_connector_id: str, replace: bool = False) -> SinkMark | None:
        """Move ``old_connector_id``'s mark to ``new_connector_id`` in one sink transaction (a restore onto other
        ids); the moved mark, ``None`` when the old id has none. :class:`SinkError` (nothing changed) when the new
        id has a mark of its own and not ``replace``. See :meth:`connector_core.sinks.marks.MarkTable.move`."""
        ...

    def write(self, table: str, rows: pa.Table, mark: SinkMark) -> None:
        """Append ``rows`` (already of the table's schema) and store ``mark``, in one transaction."""
        ...

    def row_count(self, table: str) -> int:
        """Rows in a table (0 when it does not exist)."""
        ...

    def read_table(self, table: str) -> Any:
        """The whole table as a pandas DataFrame (tests, CLI)."""
        ...


@runtime_checkable
class JsonReadingSink(Protocol):
    """A sink with its own JSON reader (DuckDB's ``read_json``): it loads JSON lines in one pass, faster than
    taking them as Arrow, and its casting rules decide which records fit the table."""

    def reads_json(self) -> bool:
        """Whether the reader can be used here (e.g. DuckDB with file access disabled cannot)."""
        ...

    def write_json_lines(self, table: str, data: bytes | memoryview, mark_for: Callable[[int], SinkMark]) -> int | None:
        """Load the JSON lines of ``data`` into ``table`` and store ``mark_for(rows loaded)`` in one transaction;
        return the rows loaded, or ``None`` (nothing written) when a record does not fit: the reader's screen
        (:meth:`json_reader`) then finds the records that do not, and the others are loaded again."""
        ...

    def json_reader(self, table: str) -> RecordReader:
        """This sink's JSON-lines reader into ``table``'s columns (and its screen), for
        :func:`connector_core.formats.parse`."""
        ...
