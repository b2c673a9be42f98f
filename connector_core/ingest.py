"""One batch of one connector: read -> parse -> process -> write rows and position together -> commit metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from connector_core.clients import ConnectionClients
from connector_core.pipeline import ConnectorHandle, Pipeline


@dataclass
class BatchReport:
    """What one batch of one connector did."""

    endpoint: str
    connector_id: str
    records: int = 0
    bytes: int = 0
    parse_errors: int = 0
    transport_errors: int = 0
    end_of_input: bool = False
    buffered_records: int = 0
    seconds: float = 0.0
    skipped_reason: str | None = None


@dataclass
class TableReport:
    """One batch from each active connector of a table."""

    table: str
    batches: list[BatchReport] = field(default_factory=list)
    skipped_reason: str | None = None  #: why nothing was ingested (no active connector...)
    row_count: int = 0  #: rows in the sink table afterwards


class IngestSession:
    """Open transports and the sink of one pipeline; reused across batches of one run."""

    def __init__(self, pipeline: Pipeline, clients: ConnectionClients, log: Callable[[str], None] = print):
        raise NotImplementedError

    def ingest_batch(self, handle: ConnectorHandle) -> BatchReport:
        """Ingest one bounded batch of one connector (it must be active; else a skipped report)."""
        raise NotImplementedError

    def ingest_table(self, table: str) -> TableReport:
        """One batch from each active connector of ``table``; says why when none is active."""
        raise NotImplementedError

    def close(self) -> None:
        """Close transports and the sink."""
        raise NotImplementedError
