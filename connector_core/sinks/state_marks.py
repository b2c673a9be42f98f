"""Sinks that keep their exactly-once mark in the connectors' state databases instead of beside the rows: the
Kafka channel writer and the command sink. Neither can commit a mark together with what it delivers, so the
delivery is acknowledged first (broker acknowledgements, the program's acknowledgement) and the connector's state
commit that follows is the mark's commit. A crash in between delivers the batch again with the same numbers, and the
receiver drops it (the channel reader by record number, a command sink by batch id).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from connector_core.column_types import arrow_schema
from connector_core.sinks.base import SinkError, SinkMark

if TYPE_CHECKING:
    from connector_core.pipeline import Pipeline


@dataclass(frozen=True)
class ConnectorMarks:
    """How such a sink reads the marks kept in the connectors' state databases."""

    #: The committed mark of a connector (``None``: nothing committed yet).
    read: Callable[[str], SinkMark | None]
    #: Records the connectors of a table have committed (their cumulative counts).
    records_of_table: Callable[[str], int]


def connector_marks(pipeline: Pipeline) -> ConnectorMarks:
    """The marks of ``pipeline``'s connectors, read from their state databases."""

    def read_mark(connector_id: str) -> SinkMark | None:
        for handle in pipeline.connectors():
            if str(handle.connector_id) == connector_id:
                position, batch_seq = handle.state.position()
                if not batch_seq:
                    return None
                metrics = handle.state.metrics()
                return SinkMark(connector_id, position, batch_seq, metrics.total_records, metrics.total_bytes)
        return None

    def records_of_table(table: str) -> int:
        return sum(handle.state.metrics().total_records for handle in pipeline.connectors(table))

    return ConnectorMarks(read_mark, records_of_table)


class StateMarkedSink:
    """The mark side of the :class:`~connector_core.sinks.Sink` protocol for a sink whose marks are the
    connectors' state, and table schemas from the project's ``columns`` or the first batch."""

    kind = ""

    def __init__(self, columns: dict[str, dict[str, str] | None], marks: ConnectorMarks) -> None:
        self.columns = columns
        self.marks = marks
        self._schemas: dict[str, pa.Schema] = {}

    def declared_schema(self, table: str) -> pa.Schema | None:
        """The table's schema: remembered, else its declared ``columns``, else ``None`` (inferred from a batch)."""
        if table not in self._schemas and self.columns.get(table):
            self._schemas[table] = arrow_schema(self.columns[table] or {})
        return self._schemas.get(table)

    def remember_schema(self, table: str, columns: dict[str, str] | None, inferred: pa.Schema | None) -> pa.Schema:
        """Remember the table's schema (``columns``, else ``inferred``); :class:`SinkError` when there is neither."""
        if columns:
            schema = arrow_schema(columns)
        elif inferred is not None and len(inferred):
            schema = inferred
        else:
            raise SinkError(f"cannot create table {table!r}: no columns given and none inferred")
        self._schemas[table] = schema
        return schema

    def drop_table(self, table: str) -> None:
        """Nothing: what was delivered stays delivered (a receiver may still be reading it)."""

    def mark(self, connector_id: str) -> SinkMark | None:
        """The connector's committed mark, read from its state database (where this sink keeps it)."""
        return self.marks.read(connector_id)

    def move_mark(self, old_connector_id: str, new_connector_id: str, replace: bool = False) -> SinkMark | None:
        """Nothing to move: the mark is the connector's state database, which the restore itself rewrites to the
        new id. Refused (:class:`SinkError`) when the new id has committed batches of its own and not ``replace``
        (the restore would replace its state). Always ``None``.

        Receivers know senders by connector id: after a restore onto another id they keep everything the new id
        sends, so restore onto other ids only from a backup as recent as what the old id sent."""
        own = self.marks.read(new_connector_id)
        if own is not None and own.batch_seq and not replace:
            raise SinkError(
                f"connector {new_connector_id} has a mark of its own (batch {own.batch_seq}, "
                f"{own.total_records} records): restoring {old_connector_id}'s state onto it would lose it; "
                "replace it (--force) or restore onto a connector that has ingested nothing"
            )
        return None

    def check_follows(self, mark: SinkMark) -> None:
        """Refuse (:class:`SinkError`, nothing delivered) a batch whose number does not follow the committed one:
        another run committed this connector meanwhile."""
        stored = self.marks.read(mark.connector_id)
        stored_seq = stored.batch_seq if stored is not None else 0
        if stored_seq != mark.batch_seq - 1:
            raise SinkError(
                f"connector {mark.connector_id}: batch {mark.batch_seq} does not follow the stored batch "
                f"{stored_seq} (another run is ingesting this connector?); nothing written"
            )

    def row_count(self, table: str) -> int:
        """Records the pipeline's connectors have committed to the table (their cumulative counts, read from their
        state: a batch delivered again after a crash counts once)."""
        return self.marks.records_of_table(table)
