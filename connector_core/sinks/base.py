"""The sink interface: rows and the source position they came from are committed in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa


def quote(identifier: str) -> str:
    """A SQL identifier in double quotes (case kept, embedded quotes doubled), for DuckDB and Snowflake alike."""
    return '"' + identifier.replace('"', '""') + '"'


class SinkError(RuntimeError):
    """A sink that cannot be reached or written."""


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

    def mark(self, connector_id: str) -> SinkMark | None:
        """The last committed mark of a connector (``None``: nothing committed yet)."""
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
