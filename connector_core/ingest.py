"""One batch of one connector: read -> parse -> process -> write rows and position together -> commit metrics.

Exactly once
============
The **sink is the source of truth** for where each connector stands. Beside the rows, every sink keeps one
:class:`~connector_core.sinks.SinkMark` per connector in its table ``_connector_positions``: the source position
just after the last committed batch, that batch's sequence number and the connector's cumulative record and byte
totals. A batch's rows and its new mark are written in **one sink transaction** (DuckDB transaction, Snowflake
``BEGIN``/``COMMIT``), so they are never committed apart. The connector's SQLite database holds a *mirror* of the
position and the metrics, updated after the sink commit.

A batch runs these steps; a ``kill -9`` may hit between any two:

1. read the connector's mark from the sink and **reconcile**: when the connector database's ``batch_seq`` is not
   the mark's, its position, sequence number and totals are brought to the mark (the missing records and bytes
   are the difference of the cumulative totals);
2. read from the transport **from the mark's position**;
3. parse, process and cast the records (memory only);
4. one sink transaction: rows + mark ``batch_seq + 1`` (JSON lines into DuckDB make 3 and 4 one step: DuckDB's
   ``read_json`` parses them inside that transaction, see :class:`~connector_core.sinks.JsonReadingSink`; so do
   the JSON lines a last ``jsonl`` processor answers);
5. one SQLite transaction: position, metrics, parse errors and hourly stats (``ConnectorState.commit_batch``).

A crash before step 4 commits leaves nothing behind: the next run reads again from the same position. A crash
after step 4 but before step 5 leaves the rows and the mark in the sink: the next run's step 1 catches the
connector database up and reads on from the mark's position. Either way no row is lost or written twice. Two runs
ingesting the same connector at once cannot both commit a batch: the sink only accepts a mark whose ``batch_seq``
follows the stored one, so the second transaction rolls back. What a crash between steps 4 and 5 does lose is
the detail of that batch's parse errors (their count and messages); records and bytes are recovered exactly.

Transports must therefore resume exactly from a position they returned (a byte offset, a record count, Kafka
offsets...): every transport's ``read(position, ...)`` returns the records after ``position``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from connector_core.clients import ConnectionClients
from connector_core.formats import (
    Format,
    JsonRoute,
    ParsedBatch,
    conform,
    empty_table,
    json_route,
    parse,
    screen_lines,
)
from connector_core.pipeline import ConnectorHandle, Pipeline
from connector_core.processors import ProcessorError, ProcessorStep, load_processor
from connector_core.processors.command import JsonLinesStep
from connector_core.sinks import JsonReadingSink, Sink, SinkError, SinkMark, open_sink
from connector_core.state import BatchCommit
from connector_core.transports import TransportContext, TransportError, TransportReader, open_transport
from connector_core.transports.base import ReadResult


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
    error: str | None = None  #: the transport or processor error that stopped this batch
    fatal_error: str | None = None  #: set when this failure was one too many: the connector is given up


@dataclass
class TableReport:
    """One batch from each active connector of a table."""

    table: str
    batches: list[BatchReport] = field(default_factory=list)
    skipped_reason: str | None = None  #: why nothing was ingested (no active connector...)
    row_count: int = 0  #: rows in the sink table afterwards
    seconds: float = 0.0

    @property
    def records(self) -> int:
        """Records written by every batch."""
        return sum(batch.records for batch in self.batches)

    @property
    def bytes(self) -> int:
        """Bytes read by every batch."""
        return sum(batch.bytes for batch in self.batches)


#: Failed reads in a row after which a connector is given up (its fatal error) until it is started again.
MAX_CONSECUTIVE_FAILURES = 3


class IngestSession:
    """Open transports and the sink of one pipeline; reused across batches of one run.

    A batch that fails (transport, processor) is counted in the connector's state; the
    ``max_consecutive_failures``-th failure in a row gives the connector up (its fatal error), so Dagster runs and
    ``connectors run`` share the rule and the sensor stops requesting runs for it.

    ``hold_connection`` keeps the sink's database open for the whole session (fastest; a DuckDB file stays locked
    by this process). Without it the database is opened for each batch and let go after it, so several
    processes (a long streaming run per table, the CLI) take turns writing one DuckDB file (see
    :mod:`connector_core.streaming` for the measurement behind this choice).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        clients: ConnectionClients,
        log: Callable[[str], None] = print,
        max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES,
        hold_connection: bool = True,
    ):
        self.pipeline = pipeline
        self.clients = clients
        self.log: Callable[[str], None] = lambda line: log(pipeline.redact(line))  # no secret reaches a log
        self.max_consecutive_failures = max_consecutive_failures
        self.hold_connection = hold_connection
        self._sink: Sink | None = None
        self._readers: dict[str, TransportReader] = {}
        self._processors: dict[str, list[ProcessorStep]] = {}  #: per connector, for the run
        self._schemas: dict[str, pa.Schema] = {}

    @property
    def sink(self) -> Sink:
        """The pipeline's sink (opened on first use)."""
        if self._sink is None:
            self._sink = open_sink(self.pipeline, self.clients, hold_connection=True)
        return self._sink

    # ----------------------------------------------------------------------------------------------- batch
    def ingest_batch(self, handle: ConnectorHandle) -> BatchReport:
        """Ingest one bounded batch of one connector; a skipped report says why when it may not ingest
        (:meth:`Pipeline.idle_reason`)."""
        started = time.monotonic()
        report = BatchReport(endpoint=handle.endpoint, connector_id=str(handle.connector_id))
        report.skipped_reason = self.pipeline.idle_reason(handle)
        if report.skipped_reason is not None:
            return report
        self.pipeline.ensure_created()
        report.connector_id = str(handle.connector_id)
        try:
            self._ingest(handle, report)
        except (TransportError, ProcessorError, SinkError) as exc:
            self._drop_reader(str(handle.connector_id))
            self._drop_processors(str(handle.connector_id))  # stops their programs; the next batch starts anew
            if isinstance(exc, SinkError):
                self._close_sink()  # the next batch opens it afresh
            report.transport_errors += 1
            report.error = self.pipeline.redact(str(exc))
            report.fatal_error = handle.state.record_failed_read(report.error, self.max_consecutive_failures)
            self.log(f"{handle.endpoint}: {report.error}")
        if not self.hold_connection:
            self.release_sink()
        report.seconds = time.monotonic() - started
        return report

    def _ingest(self, handle: ConnectorHandle, report: BatchReport) -> None:
        mark = self.sink.mark(handle.connector_id)
        if not self.hold_connection:
            self.release_sink()  # not held while the transport waits for records (a live source may wait long)
        base = self._reconcile(handle, mark)
        reader = self._reader(handle)
        try:
            result = reader.read(base.position, handle.spec.max_batch_size)
        except OSError as exc:
            raise TransportError(f"{handle.endpoint}: {exc}") from exc
        report.end_of_input = result.end_of_input
        report.buffered_records = result.buffered_records
        has_data = result.data is not None and (
            result.data.num_rows > 0 if isinstance(result.data, pa.Table) else len(result.data) > 0
        )
        if not has_data and result.position == base.position:
            for message in result.transport_errors:
                handle.state.record_transport_error(message)
            report.transport_errors += len(result.transport_errors)
            handle.state.update_progress(result.buffered_records, result.end_of_input)
            return

        nbytes = result.bytes_read

        def mark_for(records: int) -> SinkMark:
            return SinkMark(
                connector_id=handle.connector_id,
                position=result.position,
                batch_seq=base.batch_seq + 1,
                total_records=base.total_records + records,
                total_bytes=base.total_bytes + nbytes,
            )

        route = self._json_route(handle, result.data)
        loaded = self._load_json_lines(handle, result.data, mark_for) if route is JsonRoute.SINK_LOADS else None
        records, errors = loaded if loaded is not None else (None, [])
        if records is None:
            parsed = self._records(handle, result, route)
            if isinstance(parsed, _Answer):
                records, errors = self._load_answer(handle, parsed, mark_for)
            else:
                rows, errors = parsed.table, parsed.errors
                if isinstance(result.data, pa.Table) and not nbytes:
                    nbytes = rows.nbytes
                records = rows.num_rows
                self.sink.write(handle.table, rows, mark_for(records))
        handle.state.commit_batch(
            BatchCommit(
                position=result.position,
                batch_seq=base.batch_seq + 1,
                records=records,
                bytes=nbytes,
                end_of_input=result.end_of_input,
                buffered_records=result.buffered_records,
                parse_errors=errors,
                transport_errors=len(result.transport_errors),
            )
        )
        report.records = records
        report.bytes = nbytes
        report.parse_errors = len(errors)
        report.transport_errors += len(result.transport_errors)

    def _load_json_lines(
        self, handle: ConnectorHandle, data: bytes | memoryview | pa.Table | None, mark_for: Callable[[int], SinkMark]
    ) -> tuple[int, list[tuple[int, str]]] | None:
        """Hand JSON lines straight to the sink that reads JSON itself (route :attr:`JsonRoute.SINK_LOADS`: one
        pass, no Arrow step); the records loaded and the parse errors.

        When the sink rejects a record, its reader's screen judges every record in one pass and the sink loads the
        ones it lets through (dirty input costs one more pass, not a reader call per bad record). ``None`` when
        the sink rejects one of those too: the batch then takes the Arrow path, whose search finds it."""
        json_sink = self._json_sink()
        assert json_sink is not None and isinstance(data, bytes | memoryview)
        loaded = json_sink.write_json_lines(handle.table, data, mark_for)
        if loaded is not None:
            return loaded, []
        screen = json_sink.json_reader(handle.table).screen
        if screen is None:
            return None
        kept, errors = screen_lines(data, screen, self._table_schema(handle.table))
        loaded = json_sink.write_json_lines(handle.table, memoryview(kept), mark_for)
        return None if loaded is None else (loaded, errors)

    def _load_answer(
        self, handle: ConnectorHandle, answer: _Answer, mark_for: Callable[[int], SinkMark]
    ) -> tuple[int, list[tuple[int, str]]]:
        """Load the JSON lines of a last ``jsonl`` step with the sink's own reader (one pass, no Arrow step); the
        records loaded and the parse errors (the input's, then the answer's by their line in it).

        When the sink rejects a record, the answer is read record by record by the same reader (its screen and
        search): a record that does not fit the table is a parse error, a line that is not a JSON object fails the
        batch (the program wrote something that is not a batch)."""
        json_sink = self._json_sink()
        schema = self._table_schema(handle.table)
        assert json_sink is not None and schema is not None
        if answer.lines and not answer.lines.isspace():
            loaded = json_sink.write_json_lines(handle.table, answer.lines, mark_for)
            if loaded is not None:
                return loaded, answer.errors
            parsed = parse(answer.lines, _JSON_LINES, schema, json_reader=json_sink.json_reader(handle.table))
        else:
            parsed = ParsedBatch(empty_table(schema))
        broken = [(at, why) for at, why in parsed.errors if why.startswith(_NOT_A_RECORD)]
        if broken:
            at, why = broken[0]
            raise answer.step.broken(f"{len(broken)} unreadable line(s), first at line {at}: {why}")
        self.sink.write(handle.table, parsed.table, mark_for(parsed.table.num_rows))
        return parsed.table.num_rows, sorted(answer.errors + parsed.errors)

    def _json_route(self, handle: ConnectorHandle, data: bytes | memoryview | pa.Table | None) -> JsonRoute:
        """Who reads this batch (:func:`connector_core.formats.json_route`); creates the table from its
        ``columns`` when it does not exist yet."""
        return json_route(
            handle.spec.format,
            data,
            sink_reads_json=self._json_sink() is not None,
            table_exists=self._table_schema(handle.table) is not None,
            has_processors=bool(handle.spec.processors),
        )

    def _json_sink(self) -> JsonReadingSink | None:
        """The sink when it reads JSON itself here, else ``None``."""
        sink = self.sink
        return sink if isinstance(sink, JsonReadingSink) and sink.reads_json() else None

    def _reconcile(self, handle: ConnectorHandle, mark: SinkMark | None) -> SinkMark:
        """Bring the connector database to the sink's mark (the truth); return the mark to resume from."""
        truth = mark or SinkMark(handle.connector_id, None, 0, 0, 0)
        _, stored_seq = handle.state.position()
        if stored_seq == truth.batch_seq:
            return truth
        metrics = handle.state.metrics()
        handle.state.commit_batch(
            BatchCommit(
                position=truth.position,
                batch_seq=truth.batch_seq,
                records=truth.total_records - metrics.total_records,
                bytes=truth.total_bytes - metrics.total_bytes,
                end_of_input=metrics.end_of_input,
                buffered_records=metrics.buffered_records,
                fatal_error=metrics.fatal_error,
            )
        )
        self.log(
            f"{handle.endpoint}: state database was at batch {stored_seq}, sink at batch {truth.batch_seq}; "
            "caught up with the sink"
        )
        return truth

    def _records(self, handle: ConnectorHandle, result: ReadResult, route: JsonRoute) -> ParsedBatch | _Answer:
        """Parse (with the sink's JSON reader unless ``route`` is :attr:`JsonRoute.ARROW`), process and cast one
        piece of input to the sink table (creating the table when needed). When the sink's reader reads this
        batch (:attr:`JsonRoute.SINK_PARSES`) and the last step is a ``jsonl`` program, its answer is handed on as
        the JSON lines it wrote, for the sink to load (:meth:`_load_answer`)."""
        table = handle.table
        data = result.data
        schema = self._table_schema(table)
        if isinstance(data, pa.Table):
            parsed = conform(data, schema) if schema is not None else ParsedBatch(data)
        elif data:
            fmt = handle.spec.format
            if fmt is None:
                raise TransportError(f"{handle.endpoint}: the transport returned bytes but no format is set")
            json_sink = self._json_sink() if route is not JsonRoute.ARROW else None
            json_reader = json_sink.json_reader(table) if json_sink is not None else None
            parsed = parse(data, fmt, schema, result.starts_object, json_reader, result.header)
        else:
            parsed = ParsedBatch(empty_table(schema))
        rows = parsed.table
        steps = self._processor_steps(handle)
        last = steps[-1] if steps else None
        if route is JsonRoute.SINK_PARSES and schema is not None and isinstance(last, JsonLinesStep):
            for step in steps[:-1]:
                rows = step(rows)
            return _Answer(last, last.answer_lines(rows), parsed.errors)
        for step in steps:
            rows = step(rows)
        if schema is None and rows.num_columns:
            schema = self._ensure_table(table, None, rows.schema)
        if schema is not None:
            cast = conform(rows, schema)
            return ParsedBatch(cast.table, sorted(parsed.errors + cast.errors))
        return ParsedBatch(empty_table(None), parsed.errors)

    def _table_schema(self, table: str) -> pa.Schema | None:
        if table not in self._schemas:
            schema = self.sink.table_schema(table)
            columns = self.pipeline.spec.tables[table].columns
            if schema is None and columns:
                schema = self._ensure_table(table, columns, None)
            if schema is None:
                return None
            self._schemas[table] = schema
        return self._schemas[table]

    def _ensure_table(self, table: str, columns: dict[str, str] | None, inferred: pa.Schema | None) -> pa.Schema:
        schema = self.sink.ensure_table(table, columns, inferred)
        self._schemas[table] = schema
        return schema

    def _reader(self, handle: ConnectorHandle) -> TransportReader:
        reader = self._readers.get(handle.connector_id)
        if reader is None:
            context = TransportContext(
                pipeline=self.pipeline.name,
                table=handle.table,
                connector=handle.spec,
                columns=self.pipeline.spec.tables[handle.table].columns,
                base_dir=self.pipeline.base_dir,
                clients=self.clients,
                log=self.log,
            )
            reader = open_transport(context)
            self._readers[handle.connector_id] = reader
        return reader

    def can_finish(self, handle: ConnectorHandle) -> bool:
        """Whether the connector's transport can reach end of input (a transport that fails to open counts as
        one that can: its next batch reports the error)."""
        try:
            return self._reader(handle).can_finish
        except TransportError:
            return True

    def _drop_reader(self, connector_id: str) -> None:
        reader = self._readers.pop(connector_id, None)
        if reader is not None:
            try:
                reader.close()
            except Exception as exc:  # closing a broken transport must not hide the first error
                self.log(f"closing transport of {connector_id} failed: {exc}")

    def _processor_steps(self, handle: ConnectorHandle) -> list[ProcessorStep]:
        """The connector's processor steps for this run (made at its first batch, kept until the run ends or a
        batch fails)."""
        if handle.connector_id not in self._processors:
            steps: list[ProcessorStep] = []
            try:
                for use in self.pipeline.spec.processor_uses(handle.spec):
                    steps.append(load_processor(use, self.pipeline, handle.endpoint))
            except BaseException:
                _close_steps(steps, self.log)
                raise
            self._processors[handle.connector_id] = steps
        return self._processors[handle.connector_id]

    def _drop_processors(self, connector_id: str) -> None:
        _close_steps(self._processors.pop(connector_id, []), self.log)

    # ----------------------------------------------------------------------------------------------- table
    def ingest_table(self, table: str) -> TableReport:
        """One batch from each active connector of ``table``; says why when none is active."""
        started = time.monotonic()
        if table not in self.pipeline.spec.tables:
            raise LookupError(
                f"no table {table!r} in pipeline {self.pipeline.name}; tables: {', '.join(self.pipeline.spec.tables)}"
            )
        report = TableReport(table=table)
        reasons = {handle.endpoint: self.pipeline.idle_reason(handle) for handle in self.pipeline.connectors(table)}
        for handle in self.pipeline.connectors(table):
            if reasons[handle.endpoint] is None:
                report.batches.append(self.ingest_batch(handle))
        if not report.batches:
            report.skipped_reason = _nothing_to_ingest(self.pipeline, table, reasons)
        report.row_count = self._row_count(table)
        report.seconds = time.monotonic() - started
        return report

    def _row_count(self, table: str) -> int:
        try:
            return self.sink.row_count(table)
        except Exception as exc:  # an unreachable sink must not hide the report
            self.log(f"cannot count rows of {table}: {exc}")
            return 0
        finally:
            if not self.hold_connection:
                self.release_sink()

    def release_sink(self) -> None:
        """Let go of the sink's database connection (a DuckDB file is unlocked for other processes); the sink and
        what it knows of its tables stay, and its next call opens the database again."""
        release = getattr(self._sink, "close", None)
        if callable(release):
            try:
                release()
            except Exception as exc:  # a broken connection is opened afresh by the next call
                self.log(f"releasing the sink failed: {exc}")
                self._sink = None

    def close(self) -> None:
        """Close transports, processors (their programs stop) and the sink."""
        for connector_id in list(self._readers):
            self._drop_reader(connector_id)
        for connector_id in list(self._processors):
            self._drop_processors(connector_id)
        self._close_sink()

    def _close_sink(self) -> None:
        sink, self._sink = self._sink, None
        close_sink = getattr(sink, "close", None)
        if callable(close_sink):
            try:
                close_sink()
            except Exception as exc:  # closing a broken sink must not hide the first error
                self.log(f"closing the sink failed: {exc}")

    def __enter__(self) -> IngestSession:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


@dataclass
class _Answer:
    """The JSON lines a batch's last ``jsonl`` step wrote, and the parse errors of the batch's input."""

    step: JsonLinesStep
    lines: bytes
    errors: list[tuple[int, str]]


_JSON_LINES = Format(name="json")
#: Starts of the sink reader's reasons for a line that is no record at all (malformed, not an object).
_NOT_A_RECORD = ("Malformed JSON", "JSON transform error: Expected OBJECT")


def _close_steps(steps: list[ProcessorStep], log: Callable[[str], None]) -> None:
    for step in steps:
        try:
            step.close()
        except Exception as exc:  # closing a broken processor must not hide the first error
            log(f"closing a processor failed: {exc}")


def _nothing_to_ingest(pipeline: Pipeline, table: str, reasons: dict[str, str | None]) -> str:
    """Why no connector of ``table`` may ingest: the pipeline's status, or each connector's reason."""
    if not pipeline.is_started():
        return f"pipeline {pipeline.name} is {pipeline.state.status}, not STARTED; nothing is ingested"
    paused = [h.endpoint for h in pipeline.connectors(table) if not h.state.running]
    if len(paused) == len(reasons):
        return f"every connector of table {table} is paused ({', '.join(paused)})"
    return f"no connector of table {table} may ingest: " + "; ".join(r for r in reasons.values() if r)
