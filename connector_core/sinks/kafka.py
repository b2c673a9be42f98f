"""The channel writer: a sink ``{kind: kafka, connection: NAME}`` that puts each table's records on a Kafka topic.

A table goes to its ``topic`` (default ``{pipeline}.{table}``), many records per message: a batch is cut into
messages of at most ``max_message_bytes`` of record data (one record larger than that travels alone), each one Arrow
IPC stream (``encoding: arrow``, the default: ``kafka_input`` reads it without parsing anything) or JSON lines
(``encoding: json``, for consumers of other makes), produced with the connection's librdkafka settings, flushed,
and every delivery report awaited. Any failure is a
:class:`SinkError`: the batch is not committed and the next batch sends it again.

**The mark lives in the connector's state**, not in the broker: :meth:`KafkaSink.mark` answers the connector
database's position, batch number and totals, so the ingest step's reconcile has nothing to do, and the existing
state commit after :meth:`KafkaSink.write` is the mark's commit (the broker acknowledged the batch before it).
A crash in between makes the next run send the batch again, with the same record numbers (headers of
:mod:`connector_core.channel`); the downstream ``kafka_input`` drops what it already has. Kafka transactions are
not used (they cannot hold the upstream state's commit anyway). See ``docs/channels.md``.

Every message of one writer connector is keyed by its connector id, so it lands in one partition and is read in the
order it was written (the idempotent producer keeps that order across retries).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.json as pa_json
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from connector_core.channel import ARROW, ENCODINGS, ChannelHeaders, MalformedHeaders, WriterProgress
from connector_core.clients import ConnectionClients
from connector_core.column_types import arrow_schema
from connector_core.formats import RecordError, RecordReader, conform
from connector_core.sinks.base import SinkError, SinkMark
from connector_core.sinks.duckdb import DuckDBSink, _rejected_records, _scratch_file
from connector_core.sinks.state_marks import ConnectorMarks, StateMarkedSink, connector_marks

if TYPE_CHECKING:
    from connector_core.pipeline import Pipeline

#: Bytes of record values per message by default: under the 1 MB that brokers and librdkafka take by default,
#: leaving room for headers and the record batch's own bytes.
DEFAULT_MAX_MESSAGE_BYTES = 900_000
#: How messages hold their records unless the sink says otherwise (:data:`connector_core.channel.ENCODINGS`).
DEFAULT_ENCODING = ARROW
#: Producer settings applied unless the connection sets them.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,  # no duplicate and no reordering from the producer's own retries
    # A failure that could leave a gap (a message lost, a later one delivered) stops the producer instead: the
    # batch fails and is sent again, and the reader never sees a later record before an earlier one is lost.
    "enable.gapless.guarantee": True,
    "linger.ms": 5,
    "message.timeout.ms": 60_000,  # a message not delivered by then fails the batch
    # JSON lines shrink about 4x, Arrow about 2x: less for the broker to store and serve, and the reader's fetches
    # carry that many more records (measured on tansu: see docs/channels.md, Performance).
    "compression.type": "lz4",
}
#: Seconds to wait for the cluster's metadata or a topic creation.
METADATA_TIMEOUT_SECONDS = 15.0
#: A topic missing from a listing this recent is taken as missing without listing again.
TOPICS_FRESH_SECONDS = 1.0


class _KnownConfigWarnings(logging.Filter):
    """Drops librdkafka's configuration warnings about settings this sink makes on purpose (the experimental
    ``enable.gapless.guarantee``, printed at every producer start); every other log line passes."""

    ON_PURPOSE = ("enable.gapless.guarantee",)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("CONFWARN") and any(name in message for name in self.ON_PURPOSE))


log = logging.getLogger("connectors.kafka_sink")
log.addFilter(_KnownConfigWarnings())


class KafkaSink(StateMarkedSink):
    """Tables as Kafka topics; marks in the connectors' state (see the module docstring).

    ``topics``: table -> topic; ``columns``: table -> declared columns (``None``: inferred from the first batch);
    ``partitions``: of a topic this sink creates (an existing topic is used as it is); ``encoding``: of the
    messages, ``arrow`` (Arrow IPC streams) or ``json`` (JSON lines).
    """

    kind = "kafka"

    def __init__(
        self,
        connection_settings: dict[str, Any],
        topics: dict[str, str],
        columns: dict[str, dict[str, str] | None],
        marks: ConnectorMarks,
        pipeline: str = "",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        partitions: int = 1,
        encoding: str = DEFAULT_ENCODING,
    ) -> None:
        super().__init__(columns, marks)
        if encoding not in ENCODINGS:
            raise SinkError(f"Kafka sink: unknown encoding {encoding!r}; known: {', '.join(ENCODINGS)}")
        self.encoding = encoding
        self.connection_settings = dict(connection_settings)
        self.topics = topics
        self.pipeline = pipeline
        self.max_message_bytes = max_message_bytes
        self.partitions = partitions
        self._servers = str(self.connection_settings.get("bootstrap.servers", "?"))
        self._producer: Producer | None = None
        self._admin_client: AdminClient | None = None
        self._existing_topics: set[str] = set()
        self._listed_at = -float("inf")  #: when the topics were last listed (``time.monotonic()``)
        self._json_writer: duckdb.DuckDBPyConnection | None = None  #: in-memory DuckDB writing the JSON lines
        self._json_sink: DuckDBSink | None = None  #: its tables, for DuckDB's JSON reader (write_json_lines)
        self._json_created: set[str] = set()

    # ---------------------------------------------------------------------------------------------- clients
    def producer_settings(self) -> dict[str, Any]:
        """The connection's settings with :data:`PRODUCER_DEFAULTS` and a ``message.max.bytes`` that fits."""
        settings = {**PRODUCER_DEFAULTS, **self.connection_settings}
        if str(settings["enable.idempotence"]).lower() in ("false", "0"):
            settings["max.in.flight.requests.per.connection"] = 1  # keep one writer's messages in order
            settings.setdefault("acks", "all")
            if "enable.gapless.guarantee" not in self.connection_settings:
                del settings["enable.gapless.guarantee"]  # it needs idempotence
        settings.setdefault("message.max.bytes", max(1_000_000, self.max_message_bytes + 64 * 1024))
        settings.setdefault("logger", log)
        return settings

    def _producer_or_new(self) -> Producer:
        if self._producer is None:
            try:
                self._producer = Producer(self.producer_settings())
            except (KafkaException, ValueError, TypeError) as exc:
                raise SinkError(f"Kafka sink: invalid producer settings: {exc}") from None
        return self._producer

    def start(self) -> None:
        """Start the producer now, so that its handshake overlaps the batch's reading and encoding: an idempotent
        producer gets its producer id from the cluster first, and librdkafka retries that every 500 ms (on tansu
        the first attempt always finds the connection changing over from the bootstrap server, costing 0.5 s)."""
        self._producer_or_new()

    def _admin(self) -> AdminClient:
        """The admin client (kept: a request's answer is lost when its client is destroyed meanwhile)."""
        if self._admin_client is None:
            try:
                self._admin_client = AdminClient({**self.connection_settings, "logger": log})
            except (KafkaException, ValueError, TypeError) as exc:
                raise SinkError(f"Kafka sink: invalid connection settings: {exc}") from None
        return self._admin_client

    def _topic_names(self) -> set[str]:
        """Every topic of the cluster (a metadata request for all topics never creates one)."""
        try:
            metadata = self._admin().list_topics(timeout=METADATA_TIMEOUT_SECONDS)
        except KafkaException as exc:
            raise SinkError(f"Kafka sink: cannot read the topics of {self._servers}: {exc.args[0]}") from None
        return set(metadata.topics)

    def topic(self, table: str) -> str:
        """The topic of ``table``."""
        try:
            return self.topics[table]
        except KeyError:
            raise SinkError(f"Kafka sink: no table {table!r}; tables: {', '.join(self.topics)}") from None

    def _topic_exists(self, table: str) -> bool:
        """Whether the table's topic exists: known to, else listed again (unless listed a moment ago, by the same
        batch: :meth:`table_schema` then :meth:`ensure_table`)."""
        topic = self.topic(table)
        if topic not in self._existing_topics and time.monotonic() - self._listed_at > TOPICS_FRESH_SECONDS:
            self._existing_topics |= self._topic_names()
            self._listed_at = time.monotonic()
        return topic in self._existing_topics

    def _create_topic(self, table: str) -> None:
        """Create the table's topic (``partitions``, the broker's replication factor) unless it exists."""
        if self._topic_exists(table):
            return
        topic = self.topic(table)
        futures = self._admin().create_topics(
            [NewTopic(topic, num_partitions=self.partitions, replication_factor=-1)],
            request_timeout=METADATA_TIMEOUT_SECONDS,
        )
        try:
            futures[topic].result(timeout=METADATA_TIMEOUT_SECONDS)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise SinkError(
                    f"Kafka sink: cannot create topic {topic!r} on {self._servers}: {exc.args[0]}"
                ) from None
        except Exception as exc:  # a timeout of the future
            raise SinkError(f"Kafka sink: cannot create topic {topic!r} on {self._servers}: {exc!r}") from None
        self._existing_topics.add(topic)

    # ------------------------------------------------------------------------------------------- protocol
    def check(self) -> None:
        """Read the cluster's metadata."""
        self._topic_names()

    def table_schema(self, table: str) -> pa.Schema | None:
        """``None`` until the table's topic exists; then the declared ``columns``, or the schema inferred from
        the first batch of this process (``None`` before it: the next batch is inferred again). Starts the
        producer (:meth:`start`): a batch follows."""
        self.start()
        return self.declared_schema(table) if self._topic_exists(table) else None

    def ensure_table(self, table: str, columns: dict[str, str] | None, inferred: pa.Schema | None) -> pa.Schema:
        """Create the table's topic when missing; remember the table's schema (``columns``, else ``inferred``)."""
        self.start()
        schema = self.remember_schema(table, columns, inferred)
        self._create_topic(table)
        return schema

    def write(self, table: str, rows: pa.Table, mark: SinkMark) -> None:
        """Produce ``rows`` to the table's topic (Arrow IPC or JSON lines) and wait for every delivery report.

        Records are numbered from the connector's committed total: the first is ``mark.total_records -
        rows.num_rows``. The mark itself is committed afterwards by the connector's state commit; a mark that does
        not follow the stored one (another run committed meanwhile) is refused before anything is sent."""
        self.check_follows(mark)
        if not rows.num_rows:
            return
        self._create_topic(table)
        if self.encoding == ARROW:
            self._send(table, arrow_messages(rows, self.max_message_bytes), mark)
        else:
            self._send(table, json_messages(json_line_pieces(rows, self._json_db()), self.max_message_bytes), mark)

    # ---------------------------------------------------------------------------------- JSON lines, one pass
    def reads_json(self) -> bool:
        """Always: the in-memory DuckDB of :meth:`write_json_lines` reads its own scratch files."""
        return True

    def write_json_lines(self, table: str, data: bytes | memoryview, mark_for: Callable[[int], SinkMark]) -> int | None:
        """Send JSON lines as the table's records: DuckDB's ``read_json`` reads them into the table's columns, in an
        in-memory database; the result is sent as Arrow (``encoding: arrow``) or written as JSON again by
        ``to_json`` in the same query (``encoding: json``); then as :meth:`write` does. The records sent, or ``None`` (nothing sent) when DuckDB rejects one (its screen,
        :meth:`json_reader`, then finds which). The casting rules are the DuckDB sink's: the same SQL
        (:class:`~connector_core.sinks.duckdb.DuckDBSink`), so a record fits here as it fits a DuckDB table."""
        self.check_follows(mark_for(0))
        self._create_topic(table)
        source = self._json_tables(table)._read_json_sql(table)
        arrow = self.encoding == ARROW
        select = "*" if arrow else _TO_JSON_LINE.format("r")
        with _scratch_file(data) as path:
            try:
                with _rejected_records():
                    result = self._json_db().sql(f"SELECT {select} FROM ({source(path)}) r").to_arrow_table()
            except RecordError:
                return None
            except duckdb.Error as exc:
                raise SinkError(f"Kafka sink: cannot read the records: {exc}") from exc
        if result.num_rows:
            messages = (
                arrow_messages(result, self.max_message_bytes)
                if arrow
                else json_messages(_pieces(result), self.max_message_bytes)
            )
            self._send(table, messages, mark_for(result.num_rows))
        return result.num_rows

    def json_reader(self, table: str) -> RecordReader:
        """DuckDB's ``read_json`` into the table's columns, with its screen (the DuckDB sink's, on the in-memory
        database): the reader of a batch that processors need as Arrow or that :meth:`write_json_lines` refused."""
        return self._json_tables(table).json_reader(table)

    def _json_db(self) -> duckdb.DuckDBPyConnection:
        """The in-memory DuckDB that reads and writes the JSON lines."""
        if self._json_writer is None:
            self._json_writer = duckdb.connect()
        return self._json_writer

    def _json_tables(self, table: str) -> DuckDBSink:
        """A DuckDB sink over the in-memory database holding an empty ``table`` of the table's columns (declared,
        else remembered from the first batch): its JSON reader, screen and SQL are the DuckDB sink's."""
        if self._json_sink is None:
            memory = self._json_db()
            self._json_sink = DuckDBSink(lambda: contextlib.nullcontext(memory), preserve_insertion_order=True)
        if table not in self._json_created:
            columns = self.columns.get(table)
            inferred = self._schemas.get(table)
            if not columns and inferred is None:
                raise SinkError(f"Kafka sink: table {table!r} has no columns yet")
            self._json_sink.ensure_table(table, columns, None if columns else inferred)
            self._json_created.add(table)
        return self._json_sink

    # ----------------------------------------------------------------------------------------------- sending
    def _send(self, table: str, messages: list[tuple[pa.Buffer, int]], mark: SinkMark) -> None:
        """Produce the ``messages`` (each a value in the sink's encoding and its record count, in order) as channel
        messages numbered from ``mark.total_records - records``; wait for every delivery report (:class:`SinkError`
        when one fails)."""
        records = sum(count for _, count in messages)
        first_record = mark.total_records - records
        producer = self._producer_or_new()
        failures: list[str] = []

        def delivered(error: KafkaError | None, _message: Any) -> None:
            if error is not None:
                failures.append(error.str())

        topic, key = self.topic(table), mark.connector_id.encode()
        for part, (value, count) in enumerate(messages):
            headers = ChannelHeaders(
                writer=mark.connector_id,
                first_record=first_record,
                records=count,
                batch=mark.batch_seq,
                part=part,
                parts=len(messages),
                pipeline=self.pipeline,
                table=table,
                encoding=self.encoding,
            )
            self._produce(producer, topic, key, value, headers.encode(), delivered)  # librdkafka copies the value
            first_record += count
            if failures:
                break
        self._wait_for_deliveries(producer, topic)
        if failures:
            raise SinkError(
                f"Kafka sink: {len(failures)} message(s) of batch {mark.batch_seq} to {topic} not delivered: "
                f"{failures[0]}; the batch is not committed and will be sent again"
            )

    def _produce(
        self,
        producer: Producer,
        topic: str,
        key: bytes,
        value: bytes | pa.Buffer,
        headers: list[tuple[str, bytes]],
        delivered: Callable[[KafkaError | None, Any], None],
    ) -> None:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
            except KafkaException as exc:
                raise SinkError(f"Kafka sink: cannot produce to {topic}: {exc.args[0]}") from None

    def _wait_for_deliveries(self, producer: Producer, topic: str) -> None:
        """Until every message has its delivery report (librdkafka fails a message after ``message.timeout.ms``);
        in steps, so that a signal still interrupts the wait."""
        timeout_ms = float(self.producer_settings()["message.timeout.ms"])
        deadline = time.monotonic() + timeout_ms / 1000 + 30
        while producer.flush(1.0) > 0:
            if time.monotonic() > deadline:
                raise SinkError(f"Kafka sink: {topic} did not acknowledge the batch in time; it will be sent again")

    def read_table(self, table: str) -> Any:
        """The table's topic read from its beginning as a pandas DataFrame: the records a downstream
        ``kafka_input`` would hand on (channel messages sent twice dropped as it drops them), for tests and the
        command line."""
        schema = self._schemas.get(table) or (
            arrow_schema(self.columns[table] or {}) if self.columns.get(table) else None
        )
        tables = []
        for piece in self._read_pieces(table):
            if isinstance(piece, pa.Table):
                tables.append(conform(piece, schema).table if schema is not None else piece)
                continue
            options = (
                pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore") if schema else None
            )
            try:
                tables.append(pa_json.read_json(io.BytesIO(b"\n".join(piece) + b"\n"), parse_options=options))
            except pa.ArrowInvalid as exc:
                raise SinkError(f"Kafka sink: cannot read topic {self.topic(table)}: {exc}") from None
        if not tables:
            return (schema or pa.schema([])).empty_table().to_pandas()
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()

    def read_lines(self, table: str, timeout_seconds: float = 30.0) -> list[bytes]:
        """The values of the table's topic from its beginning to its current end, channel messages split into
        their records (Arrow rows written as JSON lines) and resent records dropped."""
        lines: list[bytes] = []
        for piece in self._read_pieces(table, timeout_seconds):
            if isinstance(piece, pa.Table):
                lines += [
                    values[int(offsets[i]) : int(offsets[i + 1]) - 1].to_pybytes()
                    for values, offsets in json_line_pieces(piece, self._json_db())
                    for i in range(len(offsets) - 1)
                ]
            else:
                lines += piece
        return lines

    def _read_pieces(self, table: str, timeout_seconds: float = 30.0) -> list[list[bytes] | pa.Table]:
        topic = self.topic(table)
        consumer = Consumer(
            {
                **self.connection_settings,
                "group.id": f"connectors-read-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "logger": log,
            }
        )
        try:
            return _read_topic(consumer, topic, timeout_seconds)
        except KafkaException as exc:
            raise SinkError(f"Kafka sink: cannot read topic {topic} from {self._servers}: {exc.args[0]}") from None
        finally:
            consumer.close()

    def close(self) -> None:
        """Deliver what is still queued (briefly). The producer is kept: a streaming run "releases" its sink after
        every batch, and a Kafka sink holds no lock to let go of, while a new idempotent producer costs a round
        trip or more to the cluster. It goes with the sink object (an ingest session drops the sink after a
        failure, so a failed producer is never reused)."""
        if self._producer is not None:
            self._producer.flush(5)


def _read_topic(consumer: Consumer, topic: str, timeout_seconds: float) -> list[list[bytes] | pa.Table]:
    """The records of the topic in order, as a reader would keep them: lists of lines and Arrow tables."""
    metadata = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_SECONDS).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        return []
    consumer.assign([TopicPartition(topic, p, 0) for p in sorted(metadata.partitions)])
    open_partitions = set(metadata.partitions)
    progress = WriterProgress()
    pieces: list[list[bytes] | pa.Table] = []
    deadline = time.monotonic() + timeout_seconds
    while open_partitions and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                raise KafkaException(error)
            open_partitions.discard(message.partition())
            continue
        value = message.value()
        if value is None:
            continue
        try:
            headers = ChannelHeaders.decode(message.headers())
        except MalformedHeaders:
            headers = None
        if headers is not None and headers.encoding == ARROW:
            kept = progress.keep(headers)
            if kept.count:
                pieces.append(kept.take(read_arrow_message(value)))
            continue
        if not pieces or isinstance(pieces[-1], pa.Table):
            pieces.append([])
        lines = pieces[-1]
        assert isinstance(lines, list)
        if headers is None:
            lines.append(value)
            continue
        kept = progress.keep(headers)
        if kept.count:
            lines += kept.select(value, headers.records).split(b"\n")
    return [piece for piece in pieces if len(piece)]


#: A record as one JSON line (``{}``: the relation's alias); DuckDB writes them in the rows' order.
_TO_JSON_LINE = "to_json({0})::VARCHAR || chr(10)"


def json_line_pieces(rows: pa.Table, conn: duckdb.DuckDBPyConnection) -> list[tuple[pa.Buffer, np.ndarray]]:
    """``rows`` as JSON lines, one object per record in order, each ending with a newline, in pieces (DuckDB's
    result chunks): the bytes of each and the offsets of its records in them (one more than its records). DuckDB's
    ``to_json`` (on ``conn``, an in-memory database) writes them in one pass, in the rows' order."""
    alias = f"rows_{uuid.uuid4().hex}"
    try:
        relation = conn.from_arrow(rows).query(alias, f"SELECT {_TO_JSON_LINE.format(alias)} FROM {alias}")
        result = relation.to_arrow_table()
    except duckdb.Error as exc:
        raise SinkError(f"Kafka sink: cannot write the records as JSON: {exc}") from exc
    return _pieces(result)


def _pieces(result: pa.Table) -> list[tuple[pa.Buffer, np.ndarray]]:
    """The chunks of the one text column of ``result`` (a JSON line per record) as bytes and offsets (see
    :func:`json_line_pieces`); no copy of the text."""
    pieces = []
    for chunk in result.column(0).chunks:
        if not len(chunk):
            continue
        if chunk.null_count:  # to_json of a row is never NULL; guard the offsets arithmetic anyway
            raise SinkError("Kafka sink: a record could not be written as JSON")
        if not pa.types.is_string(chunk.type) and not pa.types.is_large_string(chunk.type):
            chunk = chunk.cast(pa.large_string())
        width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
        offsets = np.frombuffer(chunk.buffers()[1], dtype=width)[chunk.offset : chunk.offset + len(chunk) + 1]
        pieces.append((chunk.buffers()[2], offsets.astype(np.int64)))
    return pieces


def message_bounds(offsets: np.ndarray, max_bytes: int) -> list[tuple[int, int]]:
    """Cut records (their byte ``offsets``) into messages of at most ``max_bytes`` each, in order: ``(first,
    end)`` record indexes per message. A record larger than ``max_bytes`` is a message of its own."""
    bounds: list[tuple[int, int]] = []
    count = len(offsets) - 1
    start = 0
    while start < count:
        end = int(np.searchsorted(offsets, offsets[start] + max_bytes + 1, side="right")) - 1  # newline not sent
        end = max(start + 1, min(end, count))
        bounds.append((start, end))
        start = end
    return bounds


def json_messages(pieces: list[tuple[pa.Buffer, np.ndarray]], max_bytes: int) -> list[tuple[pa.Buffer, int]]:
    """JSON lines (``pieces`` of bytes and the offsets of each record in them, in order) cut into message values of
    at most ``max_bytes`` (without the last newline; slices of the pieces, no copy) and their record counts."""
    return [
        (values.slice(int(offsets[start]), int(offsets[end] - offsets[start]) - 1), end - start)
        for values, offsets in pieces
        for start, end in message_bounds(offsets, max_bytes)
    ]


def arrow_messages(rows: pa.Table, max_bytes: int) -> list[tuple[pa.Buffer, int]]:
    """``rows`` cut into message values of at most ``max_bytes`` (one larger record travels alone), each a whole
    Arrow IPC stream, and their record counts. A message's size is estimated from its rows (:func:`_row_bytes`)
    plus the stream's own bytes (schema, message headers, padding)."""
    overhead = _ipc_stream(rows.slice(0, 1)).size + 8 * (3 * rows.num_columns + 2)  # with a row: safe side
    sizes = np.zeros(rows.num_rows + 1, dtype=np.int64)
    sizes[1:] = np.cumsum(_row_bytes(rows))
    sizes += np.arange(rows.num_rows + 1)  # message_bounds takes one byte per record off, for a newline
    return [
        (_ipc_stream(rows.slice(start, end - start)), end - start)
        for start, end in message_bounds(sizes, max(1, max_bytes - overhead))
    ]


def _row_bytes(rows: pa.Table) -> np.ndarray:
    """Bytes of each row in Arrow buffers, at least: fixed widths, strings and binaries with their offsets, the
    mean of other columns; one more per column for validity bits."""
    sizes = np.full(rows.num_rows, rows.num_columns, dtype=np.int64)
    for column in rows.columns:
        kind = column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
            lengths = pc.fill_null(pc.binary_length(column), 0).to_numpy(zero_copy_only=False)
            sizes += lengths.astype(np.int64) + (8 if pa.types.is_large_string(kind) else 4)
            continue
        try:
            sizes += max(1, kind.bit_width // 8)
        except ValueError:  # not fixed-width (nested, large binary...): the column's mean
            sizes += -(-column.nbytes // max(1, rows.num_rows))
    return sizes


def _ipc_stream(rows: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    return sink.getvalue()


def read_arrow_message(value: bytes) -> pa.Table:
    """The rows of a channel message in the Arrow encoding (one IPC stream)."""
    return ipc.open_stream(value).read_all()


def open_kafka_sink(pipeline: Pipeline, clients: ConnectionClients, settings: dict[str, Any]) -> KafkaSink:
    """The kafka sink of ``pipeline`` from its sink settings, with the connection's librdkafka settings and the
    connectors' state databases as marks."""
    try:
        max_message_bytes = int(settings.get("max_message_bytes") or DEFAULT_MAX_MESSAGE_BYTES)
        partitions = int(settings.get("partitions") or 1)
        encoding = str(settings.get("encoding") or DEFAULT_ENCODING)
    except (TypeError, ValueError) as exc:
        raise SinkError(f"pipeline {pipeline.name}: kafka sink settings: {exc}") from None
    try:
        connection_settings = clients.kafka_settings(settings["connection"])
    except LookupError as exc:
        raise SinkError(f"pipeline {pipeline.name}: kafka sink: {exc}") from None

    tables = pipeline.spec.tables
    return KafkaSink(
        connection_settings,
        topics={name: table.topic_name(pipeline.name, name) for name, table in tables.items()},
        columns={name: table.columns for name, table in tables.items()},
        marks=connector_marks(pipeline),
        pipeline=pipeline.name,
        max_message_bytes=max_message_bytes,
        partitions=partitions,
        encoding=encoding,
    )
