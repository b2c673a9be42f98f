"""The exactly-once mark protocol, written once for every sink database.

Beside the rows, a sink keeps one :class:`~connector_core.sinks.base.SinkMark` per connector in its table
``_connector_positions``. A batch commits through :meth:`MarkTable.commit`, one transaction that

1. reads the connector's stored ``batch_seq`` and refuses a mark that does not follow it (:class:`SinkError`,
   nothing written), so two runs racing on one connector cannot both commit a batch;
2. writes the batch's rows (the sink's own way: an Arrow insert, DuckDB's ``read_json``, ``COPY INTO``);
3. stores the new mark: inserted for a connector's first batch, else updated where ``batch_seq`` is still the one
   read in step 1 (one row must change);

and rolls back on any error. A sink database only fills a :class:`MarkDialect`: its placeholder, type names,
timestamp function and how it counts the rows an ``UPDATE`` changed.

A restore onto other ids (``connectors restore``) moves a connector's mark to its new id with :meth:`MarkTable.move`,
one transaction too: the new id's own mark is refused unless replaced, so nothing is read twice or lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connector_core.sinks.base import SinkError, SinkMark

#: The table holding the marks, in the sink's schema.
POSITIONS_TABLE = "_connector_positions"


@dataclass(frozen=True)
class MarkDialect:
    """What differs between sink databases in the mark statements."""

    placeholder: str  #: a query parameter (``?``, ``%s``)
    text_type: str
    integer_type: str
    timestamp_type: str
    now: str  #: the current timestamp, in SQL
    #: Rows changed by the ``UPDATE`` just run on a cursor.
    updated_rows: Callable[[Any], int] = lambda cursor: int(cursor.rowcount)


class MarkTable:
    """The positions table of one sink (``name``: its qualified, quoted name) and the protocol's statements.

    ``cursor`` arguments are DB-API style: ``execute(sql, params)`` then ``fetchall()`` (a DuckDB connection
    is one).
    """

    def __init__(self, name: str, dialect: MarkDialect):
        self.name = name
        self.dialect = dialect

    def create_sql(self) -> str:
        """``CREATE TABLE IF NOT EXISTS`` of the positions table."""
        text, integer = self.dialect.text_type, self.dialect.integer_type
        return (
            f'CREATE TABLE IF NOT EXISTS {self.name} ("connector_id" {text} PRIMARY KEY, "position" {text}, '
            f'"batch_seq" {integer} NOT NULL, "total_records" {integer} NOT NULL, "total_bytes" {integer} NOT NULL, '
            f'"committed_at" {self.dialect.timestamp_type} NOT NULL)'
        )

    def read(self, cursor: Any, connector_id: str) -> SinkMark | None:
        """The stored mark of a connector (the table must exist)."""
        cursor.execute(
            f'SELECT "position", "batch_seq", "total_records", "total_bytes" FROM {self.name} '
            f'WHERE "connector_id" = {self.dialect.placeholder}',
            (connector_id,),
        )
        row = _first_row(cursor)
        if row is None:
            return None
        return SinkMark(connector_id, json.loads(row[0]) if row[0] else None, int(row[1]), int(row[2]), int(row[3]))

    def commit(
        self, cursor: Any, mark_for: Callable[[int], SinkMark], write_rows: Callable[[], int]
    ) -> tuple[int, SinkMark]:
        """One transaction: check that the new mark follows the stored one, ``write_rows`` (it returns the rows
        written), store ``mark_for(rows)``; rolled back on any error. Returns the rows and the mark stored."""
        cursor.execute("BEGIN")
        try:
            expected = mark_for(0)  # connector and batch number do not depend on the rows
            stored_seq = self._stored_seq(cursor, expected)
            rows = write_rows()
            mark = mark_for(rows)
            self._store(cursor, mark, stored_seq)
        except BaseException:
            _roll_back(cursor)
            raise
        cursor.execute("COMMIT")
        return rows, mark

    def move(self, cursor: Any, old_connector_id: str, new_connector_id: str, replace: bool = False) -> SinkMark | None:
        """One transaction: the mark of ``old_connector_id`` becomes ``new_connector_id``'s (the row is renamed);
        the moved mark, ``None`` when the old id has none (nothing changes then). The new id's own mark refuses the
        move (:class:`SinkError`, nothing changed) unless ``replace``: then it is overwritten by the old one, and
        kept when the old id has none. Rolled back on any error. The table must exist."""
        if old_connector_id == new_connector_id:
            return self.read(cursor, old_connector_id)
        p = self.dialect.placeholder
        cursor.execute("BEGIN")
        try:
            own = self.read(cursor, new_connector_id)
            if own is not None and not replace:
                raise SinkError(
                    f"connector {new_connector_id} has a mark of its own (batch {own.batch_seq}, "
                    f"{own.total_records} records): moving {old_connector_id}'s onto it would lose it; "
                    "replace it (--force) or restore onto a connector that has ingested nothing"
                )
            moved = self.read(cursor, old_connector_id)
            if moved is not None:
                if own is not None:  # overwrite the new id's row, drop the old one: no key changes
                    updates = ", ".join(f"{column} = {p}" for column in _quoted(_UPDATED))
                    values = (json.dumps(moved.position), moved.batch_seq, moved.total_records, moved.total_bytes)
                    cursor.execute(
                        f'UPDATE {self.name} SET {updates}, "committed_at" = {self.dialect.now} '
                        f'WHERE "connector_id" = {p}',
                        (*values, new_connector_id),
                    )
                    self._one_row_changed(cursor, new_connector_id)
                    cursor.execute(f'DELETE FROM {self.name} WHERE "connector_id" = {p}', (old_connector_id,))
                else:
                    cursor.execute(
                        f'UPDATE {self.name} SET "connector_id" = {p} WHERE "connector_id" = {p}',
                        (new_connector_id, old_connector_id),
                    )
                    self._one_row_changed(cursor, old_connector_id)
        except BaseException:
            _roll_back(cursor)
            raise
        cursor.execute("COMMIT")
        return None if moved is None else dataclasses.replace(moved, connector_id=new_connector_id)

    def _one_row_changed(self, cursor: Any, connector_id: str) -> None:
        if self.dialect.updated_rows(cursor) != 1:
            raise SinkError(f"connector {connector_id}: its mark changed during the move; nothing moved")

    def _stored_seq(self, cursor: Any, mark: SinkMark) -> int | None:
        """The stored ``batch_seq`` of the mark's connector (``None``: no mark yet); :class:`SinkError` when
        ``mark`` does not follow it."""
        cursor.execute(
            f'SELECT "batch_seq" FROM {self.name} WHERE "connector_id" = {self.dialect.placeholder}',
            (mark.connector_id,),
        )
        row = _first_row(cursor)
        stored_seq = int(row[0]) if row else 0
        if stored_seq != mark.batch_seq - 1:
            raise SinkError(
                f"connector {mark.connector_id}: batch {mark.batch_seq} does not follow the stored batch "
                f"{stored_seq} (another run is ingesting this connector?); nothing written"
            )
        return stored_seq if row else None

    def _store(self, cursor: Any, mark: SinkMark, stored_seq: int | None) -> None:
        """Insert the connector's first mark, or update the stored one while it is still ``stored_seq``."""
        p, now = self.dialect.placeholder, self.dialect.now
        values = (json.dumps(mark.position), mark.batch_seq, mark.total_records, mark.total_bytes)
        if stored_seq is None:
            cursor.execute(
                f'INSERT INTO {self.name} ("connector_id", {", ".join(_quoted(_UPDATED))}, "committed_at") '
                f"VALUES ({p}, {p}, {p}, {p}, {p}, {now})",
                (mark.connector_id, *values),
            )
            return
        updates = ", ".join(f"{column} = {p}" for column in _quoted(_UPDATED))
        cursor.execute(
            f'UPDATE {self.name} SET {updates}, "committed_at" = {now} WHERE "connector_id" = {p} AND "batch_seq" = {p}',
            (*values, mark.connector_id, stored_seq),
        )
        if self.dialect.updated_rows(cursor) != 1:
            raise SinkError(
                f"connector {mark.connector_id}: its stored position changed during the write "
                "(another run is ingesting this connector?); nothing written"
            )


#: The columns a new mark changes (besides ``committed_at``), in the order of their values.
_UPDATED = ("position", "batch_seq", "total_records", "total_bytes")


def _quoted(columns: tuple[str, ...]) -> list[str]:
    return [f'"{column}"' for column in columns]


def _first_row(cursor: Any) -> Any:
    """The first row of the last result (``None``: none), read to its end (DuckDB wants a result finished)."""
    rows = cursor.fetchall()
    return rows[0] if rows else None


def _roll_back(cursor: Any) -> None:
    """``ROLLBACK`` after a failure; if the rollback fails too (a connection the database invalidated), the first
    error stays the one raised."""
    with contextlib.suppress(Exception):
        cursor.execute("ROLLBACK")
