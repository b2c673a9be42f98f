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
   ``read_json`` parses them inside that transaction, see :class:`~connector_core.sinks.JsonReadingSink`);
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

import importlib
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from connector_core.clients import ConnectionClients
from connector_core.formats import JsonRoute, ParsedBatch, conform, empty_table, json_route, parse, screen_lines
from connector_core.pipeline import ConnectorHandle, Pipeline
from connector_core.project import Format, Processor
from connector_core.secrets import child_environment
from connector_core.sinks import JsonReadingSink, Sink, SinkError, SinkMark, open_sink
from connector_core.state import BatchCommit
from connector_core.transports import TransportContext, TransportError, TransportReader, open_transport
from connector_core.transports.base import ReadResult

#: Seconds a command processor may run on one batch.
COMMAND_TIMEOUT_SECONDS = 300


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


class ProcessorError(RuntimeError):
    """A processor that failed on a batch (the batch is not committed and will be read again)."""


TableStep = Callable[[pa.Table], pa.Table]


def load_processor(processor: Processor, pipeline: Pipeline) -> TableStep:
    """A processor as a function from Arrow table to Arrow table.

    ``python``: ``module:function`` (the project folder is importable); ``command``: the records go to the
    program's stdin as JSON lines and its stdout's JSON lines are the new records.
    """
    if processor.kind == "python":
        assert processor.function is not None
        module_name, _, function_name = processor.function.partition(":")
        if not module_name or not function_name:
            raise ValueError(f"processor function {processor.function!r} must be written 'module:function'")
        base = str(pipeline.base_dir)
        if base not in sys.path:
            sys.path.append(base)
        try:
            function = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load processor {processor.function!r}: {exc}") from exc
        if not callable(function):
            raise ValueError(f"processor {processor.function!r} is not callable")

        def run_python(table: pa.Table) -> pa.Table:
            try:
                result = function(table)
            except Exception as exc:  # the user's code: report it, keep the batch for a retry
                raise ProcessorError(f"processor {processor.function} failed: {exc!r}") from exc
            if not isinstance(result, pa.Table):
                raise ProcessorError(
                    f"processor {processor.function} returned {type(result).__name__}, not a pyarrow.Table"
                )
            return result

        return run_python

    assert processor.command is not None
    command = list(processor.command)

    def run_command(table: pa.Table) -> pa.Table:
        if not table.num_rows:
            return table
        lines = table.to_pandas().to_json(orient="records", lines=True, date_format="iso", date_unit="us")
        try:
            done = subprocess.run(
                command,
                input=lines.encode(),
                capture_output=True,
                cwd=pipeline.base_dir,
                env=child_environment(processor.env),
                timeout=COMMAND_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProcessorError(f"processor command {command} failed: {exc}") from exc
        if done.returncode != 0:
            stderr = done.stderr.decode(errors="replace").strip()[-500:]
            raise ProcessorError(f"processor command {command} exited with {done.returncode}: {stderr}")
        parsed = parse(done.stdout, Format(name="json"), table.schema)
        if parsed.errors:
            index, reason = parsed.errors[0]
            raise ProcessorError(
                f"processor command {command} wrote {len(parsed.errors)} unreadable line(s), "
                f"first at line {index}: {reason}"
            )
        return parsed.table

    return run_command


#: Failed reads in a row after which a connector is given up (its fatal error) until it is started again.
MAX_CONSECUTIVE_FAILURES = 3


class IngestSession:
    """Open transports and the sink of one pipeline; reused across batches of one run.

    A batch that fails (transport, processor) is counted in the connector's state; the
    ``max_consecutive_failures``-th failure in a row gives the connector up (its fatal error), so Dagster runs and
    ``connectors run`` share the rule and the sensor stops requesting runs for it.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        clients: ConnectionClients,
        log: Callable[[str], None] = print,
        max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES,
    ):
        self.pipeline = pipeline
        self.clients = clients
        self.log: Callable[[str], None] = lambda line: log(pipeline.redact(line))  # no secret reaches a log
        self.max_consecutive_failures = max_consecutive_failures
        self._sink: Sink | None = None
        self._readers: dict[str, TransportReader] = {}
        self._processors: dict[str, list[TableStep]] = {}
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
            if isinstance(exc, SinkError):
                self._close_sink()  # the next batch opens it afresh
            report.transport_errors += 1
            report.error = self.pipeline.redact(str(exc))
            report.fatal_error = handle.state.record_failed_read(report.error, self.max_consecutive_failures)
            self.log(f"{handle.endpoint}: {report.error}")
        report.seconds = time.monotonic() - started
        return report

    def _ingest(self, handle: ConnectorHandle, report: BatchReport) -> None:
        mark = self.sink.mark(handle.connector_id)
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

    def _records(self, handle: ConnectorHandle, result: ReadResult, route: JsonRoute) -> ParsedBatch:
        """Parse (with the sink's JSON reader unless ``route`` is :attr:`JsonRoute.ARROW`), process and cast one
        piece of input to the sink table (creating the table when needed)."""
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
        for step in self._processor_steps(handle):
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

    def _processor_steps(self, handle: ConnectorHandle) -> list[TableStep]:
        if handle.connector_id not in self._processors:
            self._processors[handle.connector_id] = [
                load_processor(processor, self.pipeline) for processor in handle.spec.processors
            ]
        return self._processors[handle.connector_id]

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

    def close(self) -> None:
        """Close transports and the sink."""
        for connector_id in list(self._readers):
            self._drop_reader(connector_id)
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


def _nothing_to_ingest(pipeline: Pipeline, table: str, reasons: dict[str, str | None]) -> str:
    """Why no connector of ``table`` may ingest: the pipeline's status, or each connector's reason."""
    if not pipeline.is_started():
        return f"pipeline {pipeline.name} is {pipeline.state.status}, not STARTED; nothing is ingested"
    paused = [h.endpoint for h in pipeline.connectors(table) if not h.state.running]
    if len(paused) == len(reasons):
        return f"every connector of table {table} is paused ({', '.join(paused)})"
    return f"no connector of table {table} may ingest: " + "; ".join(r for r in reasons.values() if r)
