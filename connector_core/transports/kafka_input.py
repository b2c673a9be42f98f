"""``kafka_input``: a topic read with ``assign()`` from offsets stored with the sink.

Position: ``{"<partition>": next_offset, ...}`` for every partition of the topic; it is written by the sink
together with the rows, so it is the source of truth (the consumer group only gets a best-effort copy, for
monitoring tools). Once the topic carried channel messages (written by a kafka sink, headers of
:mod:`connector_core.channel`) the position is ``{"offsets": {"<partition>": next_offset}, "writers":
{"<writer connector id>": next record number}}``: a message's records numbered below its writer's entry were handed
on before (the writer sent them again after a crash) and are dropped, in the same commit as the downstream rows
(``docs/channels.md``). Both shapes are read. ``start_from`` (``earliest``, ``latest`` or ``{offsets: [one per partition]}``) applies only
when no position is stored; a partition missing from a stored position (added to the topic later), or from the
``offsets`` list, starts at its earliest offset.

A batch is up to ``max_records`` messages or ``chunk_size`` bytes of values (one message more when it crosses that
bound; messages fetched beyond it are sought back and read by the next batch), or what arrived within
``poll_timeout_seconds``, or less when every partition is at its end (a channel message counts as the records it
holds). ``data`` is the message values, one per line (a newline inside a JSON value is turned into a space; a CSV
record must hold none); a channel message of JSON lines is handed on as its lines. A channel message in the Arrow
encoding (one IPC stream) is decoded, and a batch of such messages is handed on as one Arrow table (cast to the
table's columns by the ingest step, as any Arrow input): a batch holds messages of one kind only (lines, or Arrow
with one schema) and ends before a message of another kind. Formats read whole (parquet, a JSON array) are refused.
Messages without channel headers are handed on as they are. ``buffered_records`` is the lag: high watermark − next offset, summed.
End of input only with ``enable.partition.eof: true`` and every partition at its end (its partition EOF, or its
next offset at the high watermark of the broker's last fetch answer: the same moment, one held fetch sooner).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from connector_core.channel import ARROW, JSON, ChannelHeaders, Kept, MalformedHeaders, WriterProgress
from connector_core.formats import framing_of
from connector_core.transports.base import ReadResult, TransportContext, TransportError
from connector_core.transports.configs import KafkaInputConfig

#: Consumer settings applied unless the connection or the connector sets them.
DEFAULT_SETTINGS: dict[str, Any] = {
    "fetch.max.bytes": 64 * 1024 * 1024,
    "max.partition.fetch.bytes": 16 * 1024 * 1024,
    "receive.message.max.bytes": 64 * 1024 * 1024 + 512,
    "queued.max.messages.kbytes": 256 * 1024,
    "fetch.wait.max.ms": 100,
    "auto.offset.reset": "earliest",  # a stored offset deleted by retention restarts at the oldest one left
    "allow.auto.create.topics": False,
}

_FATAL_CODES = {
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError._AUTHENTICATION,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION,
}


class _LogHandler(logging.Handler):
    """Forwards librdkafka's log lines to the connector's log."""

    def __init__(self, log: Any, prefix: str) -> None:
        super().__init__(logging.INFO)
        self._log = log
        self._prefix = prefix

    def emit(self, record: logging.LogRecord) -> None:
        self._log(f"{self._prefix}: {record.getMessage()}")


def consumer_settings(ctx: TransportContext, config: KafkaInputConfig) -> dict[str, Any]:
    """The librdkafka settings of the connector's consumer: connection, then connector keys, then defaults."""
    settings: dict[str, Any] = {}
    if config.connection:
        settings.update(ctx.clients.kafka_settings(config.connection))
    settings.update(config.librdkafka_settings())
    for key, value in DEFAULT_SETTINGS.items():
        settings.setdefault(key, value)
    settings.setdefault("group.id", f"connectors-{ctx.pipeline}-{ctx.table}-{ctx.connector.name}")
    settings["enable.auto.commit"] = False
    settings["enable.auto.offset.store"] = False
    # Always on internally: it tells when a batch can stop waiting. End of input still needs the config flag.
    settings["enable.partition.eof"] = True
    return settings


def _normalise(position: Any) -> tuple[dict[int, int] | None, WriterProgress]:
    """The stored offsets per partition (``None``: no position yet) and the channel writers' progress. Reads both
    shapes: ``{partition: offset}`` and ``{"offsets": {...}, "writers": {...}, "holes": {...}}``."""
    if position is None:
        return None, WriterProgress()
    if not isinstance(position, dict):
        raise TransportError(f"kafka_input: invalid position {position!r}; expected {{partition: next offset}}")
    offsets, writers, holes = position, {}, {}
    if "offsets" in position:
        offsets, writers, holes = position["offsets"], position.get("writers") or {}, position.get("holes") or {}
    try:
        return {int(p): int(o) for p, o in offsets.items()}, WriterProgress(
            {str(w): int(n) for w, n in writers.items()},
            {str(w): [[int(a), int(b)] for a, b in ranges] for w, ranges in holes.items()},
        )
    except (AttributeError, TypeError, ValueError):
        raise TransportError(f"kafka_input: invalid position {position!r}") from None


class KafkaReader:
    """One consumer, assigned to every partition of the topic; kept open across batches."""

    def __init__(self, ctx: TransportContext) -> None:
        self._config: KafkaInputConfig = ctx.connector.transport.parsed_config()
        self._topic = self._config.topic
        self.can_finish = self._config.enable_partition_eof
        framing = framing_of(ctx.connector.format)
        if framing.whole_object:
            raise TransportError(
                "kafka_input: one record per message, handed on as lines; use the json (lines) or csv format, "
                "not parquet or a JSON array"
            )
        self._newlines_to_spaces = framing.newlines_are_whitespace
        self._log = ctx.log
        settings = consumer_settings(ctx, self._config)
        self._servers = str(settings.get("bootstrap.servers", "?"))
        logger = logging.Logger(f"connectors.kafka.{ctx.pipeline}.{ctx.table}.{ctx.connector.name}")
        logger.addHandler(_LogHandler(ctx.log, f"kafka_input {ctx.table}.{ctx.connector.name}"))
        settings.setdefault("logger", logger)
        try:
            self._consumer: Consumer | None = Consumer(settings)
        except (KafkaException, ValueError, TypeError) as exc:
            raise TransportError(f"kafka_input: invalid consumer settings: {exc}") from None
        self._next: dict[int, int] = {}  #: next offset to read, per partition
        self._at_end: set[int] = set()  #: partitions whose end was reached (and nothing read since)
        self._assigned = False
        self._writers = WriterProgress()  #: channel writers' next record numbers, as of the records handed out
        self._handed_out: dict[str, Any] | None = None  #: the position the last read returned

    # -------------------------------------------------------------------------------------------- reading
    def read(self, position: Any, max_records: int) -> ReadResult:
        """Consume up to ``max_records`` records (messages, or the records of channel messages) after
        ``position``."""
        consumer = self._open_consumer()
        stored, writers = _normalise(position)
        if not self._assigned or position != self._handed_out:
            self._assign(stored)
            self._writers = writers
        if stored:
            self._commit_to_group(stored)
        self._forget_stale_ends()
        values: list[bytes] = []
        tables: list[pa.Table] = []
        kind: Any = None  #: of the batch's records: ``None`` (none yet), "lines", or the Arrow schema
        errors: list[str] = []
        size = 0
        records = 0
        deadline = time.monotonic() + self._config.poll_timeout_seconds
        first = True
        full = False  #: a message of another kind ends the batch
        while records < max_records and size < self._config.chunk_size and not full:
            # At every partition's end: only take what is queued already (no wait), then stop.
            at_end = self._all_at_end()
            remaining = deadline - time.monotonic()
            if not first and (at_end or remaining <= 0):
                break
            first = False
            try:
                # consume() waits for all num_messages; poll() returns the first one as soon as it arrives.
                message = consumer.poll(0 if at_end else max(0, remaining))
                if message is None:
                    continue
                # As many more as fit the record and byte bounds (messages sized like this one).
                fit_bytes = (self._config.chunk_size - size) // max(1, len(message.value() or b""))
                wanted = min(max_records - records, 100_000, fit_bytes + 1) - 1
                messages = [message, *(consumer.consume(num_messages=wanted, timeout=0) if wanted > 0 else ())]
            except KafkaException as exc:
                raise TransportError(
                    f"kafka_input: consuming {self._topic} from {self._servers} failed: {exc}"
                ) from None
            touched: set[int] = set()  #: partitions that handed out a message in this round
            for index, message in enumerate(messages):
                if size >= self._config.chunk_size or records >= max_records:
                    self._give_back(messages[index:])
                    break
                error = message.error()
                partition = message.partition()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        self._at_end.add(partition)
                        self._next[partition] = message.offset()
                    elif error.fatal() or error.code() in _FATAL_CODES:
                        raise TransportError(f"kafka_input: topic {self._topic} on {self._servers}: {error.str()}")
                    else:
                        errors.append(error.str())
                    continue
                value = message.value()
                headers = self._headers(message, value, errors)
                rows = self._arrow_rows(message, value, headers) if headers is not None else None
                this_kind = rows.schema if rows is not None else "lines"
                if value is not None and kind is not None and this_kind != kind:  # it starts the next batch
                    self._give_back(messages[index:])
                    full = True
                    break
                self._next[partition] = message.offset() + 1
                self._at_end.discard(partition)
                touched.add(partition)
                if value is None:  # a tombstone carries no record
                    continue
                if headers is not None:
                    kept = self._keep(headers)
                    if not kept.count:
                        continue
                    count = kept.count
                    if rows is not None:
                        tables.append(kept.take(rows))
                    else:
                        values.append(kept.select(value, headers.records))
                else:
                    count = 1
                    if self._newlines_to_spaces and b"\n" in value:
                        value = value.replace(b"\r\n", b" ").replace(b"\n", b" ")
                    values.append(value)
                kind = this_kind  # of the records handed on (a message dropped whole sets none)
                size += len(value)
                records += count
            self._note_ends(touched)
        self._handed_out = self._position()
        data: bytes | pa.Table | None = None
        if tables:
            data = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        elif values:
            values.append(b"")  # a newline after the last value too, in the same copy
            data = b"\n".join(values)
        return ReadResult(
            data=data,
            position=self._handed_out,
            end_of_input=self._config.enable_partition_eof and self._all_at_end(),
            bytes_read=size,
            buffered_records=self._lag(),
            transport_errors=errors,
        )

    def close(self) -> None:
        """Close the consumer (no offsets are committed here; the sink stores them)."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self._assigned = False

    # -------------------------------------------------------------------------------------------- internals
    def _position(self) -> dict[str, Any]:
        """The position to store: plain offsets until a channel writer was seen, then offsets and writers."""
        offsets = {str(p): o for p, o in sorted(self._next.items())}
        if not self._writers.next_records:
            return offsets
        position: dict[str, Any] = {"offsets": offsets, "writers": dict(sorted(self._writers.next_records.items()))}
        if self._writers.holes:
            position["holes"] = {w: [list(r) for r in h] for w, h in sorted(self._writers.holes.items())}
        return position

    def _headers(self, message: Any, value: bytes | None, errors: list[str]) -> ChannelHeaders | None:
        """A message's channel headers; ``None`` for a message without them, or with unreadable ones (reported:
        the message is handed on whole, unchecked) or without a value."""
        if value is None:
            return None
        try:
            return ChannelHeaders.decode(message.headers())
        except MalformedHeaders as exc:
            errors.append(f"{self._topic}[{message.partition()}]@{message.offset()}: {exc}; handed on unchecked")
            return None

    def _arrow_rows(self, message: Any, value: bytes | None, headers: ChannelHeaders) -> pa.Table | None:
        """The rows of a channel message in the Arrow encoding (``None`` for JSON lines). A message that is not
        what its headers say stops the connector: handing it on would lose or garble records."""
        where = f"{self._topic}[{message.partition()}]@{message.offset()}"
        if headers.encoding == JSON or value is None:
            return None
        if headers.encoding != ARROW:
            raise TransportError(
                f"kafka_input: {where}: channel message of writer {headers.writer} in encoding "
                f"{headers.encoding!r}, which this reader cannot read (known: {ARROW}, {JSON})"
            )
        try:
            rows = ipc.open_stream(value).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            raise TransportError(f"kafka_input: {where}: not an Arrow IPC stream: {exc}") from None
        if rows.num_rows != headers.records:
            raise TransportError(
                f"kafka_input: {where}: {rows.num_rows} rows where its headers say {headers.records} records"
            )
        return rows

    def _keep(self, headers: ChannelHeaders) -> Kept:
        """Which records of a channel message to hand on (those not handed on before); logs a hole."""
        kept = self._writers.keep(headers)
        if kept.gap is not None:
            self._log(
                f"kafka_input {self._topic}: records {kept.gap[0]} to {kept.gap[1] - 1} of writer {headers.writer} "
                "have not arrived yet; kept as a hole that a resend fills"
            )
        return kept

    def _open_consumer(self) -> Consumer:
        if self._consumer is None:
            raise TransportError("kafka_input: the reader is closed")
        return self._consumer

    def _forget_stale_ends(self) -> None:
        """A partition whose last fetch saw a high watermark beyond the next offset is not at its end any more."""
        for partition in list(self._at_end):
            _, high = self._watermarks(partition, cached=True)
            if high > self._next.get(partition, high):
                self._at_end.discard(partition)

    def _note_ends(self, partitions: set[int]) -> None:
        """Partitions whose next offset reached the high watermark of the broker's last fetch answer are at their
        end as of that answer: what librdkafka's partition EOF says too, but only after one more fetch that the
        broker holds for ``fetch.wait.max.ms`` (100 ms by default here) before answering it has nothing."""
        for partition in partitions:
            _, high = self._watermarks(partition, cached=True)
            if 0 <= high <= self._next[partition]:
                self._at_end.add(partition)

    def _all_at_end(self) -> bool:
        return bool(self._next) and self._at_end >= set(self._next)

    def _partitions(self) -> list[int]:
        consumer = self._open_consumer()
        try:
            metadata = consumer.list_topics(self._topic, timeout=self._config.metadata_timeout_seconds)
        except KafkaException as exc:
            raise TransportError(
                f"kafka_input: cannot read metadata of topic {self._topic} from {self._servers}: {exc.args[0]}"
            ) from None
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None:
            code = topic.error.code() if topic is not None and topic.error is not None else None
            if topic is None or code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                raise TransportError(f"kafka_input: topic {self._topic!r} does not exist on {self._servers}")
            raise TransportError(f"kafka_input: topic {self._topic!r} on {self._servers}: {topic.error.str()}")
        if not topic.partitions:
            raise TransportError(f"kafka_input: topic {self._topic!r} on {self._servers} has no partitions")
        return sorted(topic.partitions)

    def _watermarks(self, partition: int, cached: bool = False) -> tuple[int, int]:
        consumer = self._open_consumer()
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self._topic, partition), timeout=self._config.metadata_timeout_seconds, cached=cached
            )
        except KafkaException as exc:
            raise TransportError(
                f"kafka_input: cannot read offsets of {self._topic}[{partition}] from {self._servers}: {exc.args[0]}"
            ) from None
        return low, high

    def _start_offsets(self, stored: dict[int, int] | None, partitions: list[int]) -> dict[int, int]:
        start_from = self._config.start_from
        offsets: dict[int, int] = {}
        for partition in partitions:
            if stored is not None:
                if partition in stored:
                    offsets[partition] = stored[partition]
                    continue
                offsets[partition] = self._watermarks(partition)[0]
            elif isinstance(start_from, dict):
                listed = start_from["offsets"]
                offsets[partition] = listed[partition] if partition < len(listed) else self._watermarks(partition)[0]
            else:
                low, high = self._watermarks(partition)
                offsets[partition] = low if start_from == "earliest" else high
        return offsets

    def _assign(self, stored: dict[int, int] | None) -> None:
        consumer = self._open_consumer()
        offsets = self._start_offsets(stored, self._partitions())
        try:
            consumer.assign([TopicPartition(self._topic, p, o) for p, o in offsets.items()])
        except KafkaException as exc:
            raise TransportError(f"kafka_input: cannot assign {self._topic}: {exc.args[0]}") from None
        self._next = dict(offsets)
        self._at_end = set()
        self._assigned = True
        self._handed_out = None

    def _give_back(self, messages: list[Any]) -> None:
        """Messages consumed but not handed out (the batch is full): seek their partitions back to the next
        offset to hand out, so that the next read gets them again."""
        consumer = self._open_consumer()
        for partition in sorted({m.partition() for m in messages if m.error() is None}):
            try:
                consumer.seek(TopicPartition(self._topic, partition, self._next[partition]))
            except KafkaException as exc:
                raise TransportError(f"kafka_input: cannot seek {self._topic}[{partition}]: {exc.args[0]}") from None

    def _commit_to_group(self, stored: dict[int, int]) -> None:
        """Copy the sink's position to the consumer group, for lag monitoring (best effort, asynchronous)."""
        consumer = self._open_consumer()
        try:
            consumer.commit(offsets=[TopicPartition(self._topic, p, o) for p, o in stored.items()], asynchronous=True)
        except KafkaException:
            pass

    def _lag(self) -> int:
        lag = 0
        for partition, next_offset in self._next.items():
            if partition in self._at_end:
                continue
            _, high = self._watermarks(partition, cached=True)  # from the last fetch answer: no round trip
            if high < 0:
                _, high = self._watermarks(partition)
            lag += max(0, high - next_offset)
        return lag


def open_reader(ctx: TransportContext) -> KafkaReader:
    """Open a ``kafka_input`` reader (metadata is read on the first read)."""
    return KafkaReader(ctx)
