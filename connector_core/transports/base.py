"""The transport interface: read the next bounded piece of input from a stored position."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from connector_core.clients import ConnectionClients

if TYPE_CHECKING:  # project.py imports transports.configs, so import the spec type lazily
    from connector_core.project import ConnectorSpec


class TransportError(RuntimeError):
    """A transport that cannot read (unreachable, non-2xx, program exited non-zero...)."""


@dataclass
class ReadResult:
    """One piece of input and the source position just after it.

    ``data`` is either raw bytes holding whole records (parsed by the connector's format; a memoryview, e.g. of a
    memory-mapped file, is read without a copy) or an Arrow table of records (datagen, postgres). ``position`` is JSON-serialisable and is handed back to the next ``read``.
    """

    data: bytes | memoryview | pa.Table | None
    position: Any
    end_of_input: bool
    bytes_read: int = 0
    buffered_records: int = 0
    starts_object: bool = False  #: ``data`` starts at the beginning of a file/object (a CSV header is there)
    #: The first line of the file/object when ``data`` starts after it and the format is CSV with a header, so a
    #: piece from the middle maps its fields by the same column names.
    header: bytes | None = None
    transport_errors: list[str] = field(default_factory=list)


@dataclass
class TransportContext:
    """Everything a transport may use: its connector, the table's columns, the project folder, the clients."""

    pipeline: str
    table: str
    connector: ConnectorSpec
    columns: dict[str, str] | None
    base_dir: Path
    clients: ConnectionClients
    log: Callable[[str], None] = print


class TransportReader(Protocol):
    """An open transport. ``read`` must resume exactly from ``position`` (``None``: from the start)."""

    #: Whether this transport can ever reach end of input with its config (e.g. datagen with limits).
    can_finish: bool

    def read(self, position: Any, max_records: int) -> ReadResult:
        """Return at most ``max_records`` records (or their bytes) after ``position``."""
        ...

    def close(self) -> None:
        """Release sockets, files and processes."""
        ...
