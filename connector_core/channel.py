"""A Kafka channel between pipelines: the message headers its writer sets and the rule its reader drops by.

The writer (:mod:`connector_core.sinks.kafka`, a sink ``{kind: kafka}``) puts each batch of a connector on the
table's topic, many records per message (each message one Arrow IPC stream, or JSON lines: its
:data:`ENCODING` header says which), and numbers every record: record ``n`` of a writer is the
``n``-th record that connector ever committed (its cumulative record count before it, kept in the connector's state
with its source position). Every message carries :class:`ChannelHeaders`.

The reader (:mod:`connector_core.transports.kafka_input`) keeps, per writer connector id, the number of the next
record it has not handed on yet, inside its own position (so it commits with the downstream rows), and drops the
records of a message numbered below it (:class:`WriterProgress`): a batch the writer sends again after a crash.
See ``docs/channels.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from connector_core.project import PipelineSpec, Project

#: Header names (values are ASCII text).
WRITER = "connectors.writer"  #: the writer's connector id
FIRST_RECORD = "connectors.first_record"  #: the writer's number of the message's first record
RECORDS = "connectors.records"  #: records (JSON lines, or rows of the Arrow stream) in the message
BATCH = "connectors.batch"  #: the writer's batch number (``batch_seq``)
PART = "connectors.part"  #: index of the message within its batch, from 0
PARTS = "connectors.parts"  #: messages of the batch
PIPELINE = "connectors.pipeline"  #: the writer's pipeline
TABLE = "connectors.table"  #: the writer's table
ENCODING = "connectors.encoding"  #: how the value holds the records: :data:`ARROW` or :data:`JSON` (the default)

#: Encodings of a channel message's value.
ARROW = "arrow"  #: one Arrow IPC stream (schema, record batches, end-of-stream) of ``records`` rows
JSON = "json"  #: ``records`` JSON lines, without the last newline
ENCODINGS = (ARROW, JSON)


class MalformedHeaders(ValueError):
    """A message that names a writer but whose numbers cannot be read."""


@dataclass(frozen=True)
class ChannelHeaders:
    """The headers of one channel message."""

    writer: str
    first_record: int
    records: int
    batch: int
    part: int
    parts: int
    pipeline: str = ""
    table: str = ""
    encoding: str = JSON

    def encode(self) -> list[tuple[str, bytes]]:
        """As Kafka message headers."""
        values = {
            WRITER: self.writer,
            FIRST_RECORD: self.first_record,
            RECORDS: self.records,
            BATCH: self.batch,
            PART: self.part,
            PARTS: self.parts,
            PIPELINE: self.pipeline,
            TABLE: self.table,
            ENCODING: self.encoding,
        }
        return [(name, str(value).encode()) for name, value in values.items()]

    @classmethod
    def decode(cls, headers: list[tuple[str, bytes | None]] | None) -> ChannelHeaders | None:
        """The channel headers of a message; ``None`` when it names no writer (not a channel message).
        :class:`MalformedHeaders` when it names one but a number is missing or not a number."""
        if not headers:
            return None
        found = {name: value for name, value in headers if value is not None}
        writer = found.get(WRITER)
        if writer is None:
            return None
        try:
            return cls(
                writer=writer.decode(),
                first_record=int(found[FIRST_RECORD]),
                records=int(found[RECORDS]),
                batch=int(found.get(BATCH, b"0")),
                part=int(found.get(PART, b"0")),
                parts=int(found.get(PARTS, b"1")),
                pipeline=found.get(PIPELINE, b"").decode(errors="replace"),
                table=found.get(TABLE, b"").decode(errors="replace"),
                encoding=found.get(ENCODING, JSON.encode()).decode(),
            )
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise MalformedHeaders(f"channel headers {sorted(found)} of writer {writer!r}: {exc!r}") from None


@dataclass
class Kept:
    """What the reader keeps of one channel message."""

    ranges: list[tuple[int, int]]  #: the message's records to hand on, as ``[from, to)`` indices within it
    gap: tuple[int, int] | None = None  #: records ``[from, to)`` of the writer skipped over (kept as a hole)

    @property
    def count(self) -> int:
        """Records kept."""
        return sum(end - start for start, end in self.ranges)

    def select(self, lines: bytes, records: int) -> bytes:
        """The kept lines of a message of ``records`` JSON lines."""
        if self.ranges == [(0, records)]:
            return lines
        split = lines.split(b"\n")
        return b"\n".join(line for start, end in self.ranges for line in split[start:end])

    def take(self, table: pa.Table) -> pa.Table:
        """The kept rows of a message's Arrow table."""
        if self.ranges == [(0, table.num_rows)]:
            return table
        return pa.concat_tables([table.slice(start, end - start) for start, end in self.ranges] or [table.slice(0, 0)])


def _overlap(start: int, end: int, ranges: list[list[int]]) -> list[tuple[int, int]]:
    """The parts of ``[start, end)`` inside ``ranges``."""
    return [(max(start, a), min(end, b)) for a, b in ranges if max(start, a) < min(end, b)]


def _subtract(ranges: list[list[int]], start: int, end: int) -> list[list[int]]:
    """``ranges`` without ``[start, end)``."""
    left = []
    for a, b in ranges:
        left += [[a, min(b, start)]] if a < min(b, start) else []
        left += [[max(a, end), b]] if max(a, end) < b else []
    return left


class WriterProgress:
    """Per writer connector id, the number of the next record not handed on yet, and the *holes* below it: ranges
    of records skipped over because a later message arrived first (the reader's position part).

    Records of a writer arrive in order (one writer's messages go to one partition, keyed by its id), so a
    message numbered below that number is a resend: its records are dropped, except those that fill a hole. A hole
    appears when a message of a batch was lost while a later one of the same batch was delivered (the writer then
    failed the batch and sends it again): the resend fills it, so nothing is lost.
    """

    def __init__(
        self, next_records: dict[str, int] | None = None, holes: dict[str, list[list[int]]] | None = None
    ) -> None:
        self.next_records: dict[str, int] = dict(next_records or {})
        self.holes: dict[str, list[list[int]]] = {w: [list(r) for r in h] for w, h in (holes or {}).items() if h}

    def keep(self, headers: ChannelHeaders) -> Kept:
        """Record the message as handed on; which of its records to keep."""
        writer, first = headers.writer, headers.first_record
        end = first + headers.records
        expected = self.next_records.get(writer)
        if expected is None:  # a writer not seen yet: everything it sends is new
            self.next_records[writer] = end
            return Kept([(0, headers.records)])
        holes = self.holes.get(writer, [])
        wanted = _overlap(first, end, holes)
        for start, stop in wanted:
            holes = _subtract(holes, start, stop)
        gap = (expected, first) if first > expected else None
        if gap is not None:
            holes.append([expected, first])
        if end > max(expected, first):
            wanted.append((max(expected, first), end))
        if holes:
            self.holes[writer] = holes
        else:
            self.holes.pop(writer, None)
        self.next_records[writer] = max(expected, end)
        return Kept([(start - first, stop - first) for start, stop in sorted(wanted)], gap)


# ----------------------------------------------------------------------------------------------------- lineage
def _bootstrap_servers(pipeline: PipelineSpec, connection: str | None, extra: dict[str, Any]) -> str | None:
    """The ``bootstrap.servers`` a kafka connection or config names, when it is plain text (not a secret)."""
    servers: Any = extra.get("bootstrap.servers")
    if connection is not None and connection in pipeline.connections:
        servers = getattr(pipeline.connections[connection], "config", {}).get("bootstrap.servers", servers)
    return servers if isinstance(servers, str) else None


def channel_upstreams(project: Project) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """``(pipeline, table) -> [(pipeline, table), ...]``: the tables whose kafka sink writes a topic that a
    ``kafka_input`` connector of the key's table reads (lineage across a channel). A topic matches by name, and by
    ``bootstrap.servers`` too when both sides name them as plain text."""
    writers: dict[str, list[tuple[str, str, str | None]]] = {}
    for name, spec in project.pipelines.items():
        if spec.sink.kind == "kafka":
            servers = _bootstrap_servers(spec, spec.sink.connection, {})
            for table_name, table in spec.tables.items():
                writers.setdefault(table.topic_name(name, table_name), []).append((name, table_name, servers))
    upstreams: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for name, spec in project.pipelines.items():
        for table_name, table in spec.tables.items():
            for connector in table.connectors:
                if connector.transport.name != "kafka_input":
                    continue
                config = connector.transport.config
                servers = _bootstrap_servers(spec, config.get("connection"), config)
                for writer in writers.get(str(config.get("topic")), []):
                    same_servers = writer[2] is None or servers is None or writer[2] == servers
                    found = upstreams.setdefault((name, table_name), [])
                    if same_servers and writer[:2] != (name, table_name) and writer[:2] not in found:
                        found.append(writer[:2])
    return upstreams
