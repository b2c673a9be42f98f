"""The embedded sink: a DuckDB database reached through a connection factory (dagster-duckdb's
``DuckDBResource.get_connection``).

Rows go in as Arrow (the table is registered with DuckDB and inserted with ``INSERT ... BY NAME SELECT``) or, for
JSON lines, as bytes that DuckDB's own ``read_json`` parses and inserts in one pass (:meth:`DuckDBSink.write_json_lines`);
either way the connector's :class:`SinkMark` is stored in ``_connector_positions`` in the same DuckDB transaction, by
the mark protocol of :mod:`connector_core.sinks.marks` (:data:`MARK_DIALECT`: DuckDB's words for it). Column types
come from :mod:`connector_core.column_types`.

Every DuckDB failure leaves as a :class:`SinkError` carrying DuckDB's first error (a cleanup after a failed
statement never replaces it); a record DuckDB's JSON reader rejects leaves as :class:`RecordError`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from connector_core.column_types import DUCKDB
from connector_core.formats import RecordError, RecordReader, Screen, int64_array, not_utf8
from connector_core.sinks.base import SinkError, SinkMark, column_definitions, quote
from connector_core.sinks.marks import POSITIONS_TABLE, MarkDialect, MarkTable

ConnectionFactory = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]

#: The mark statements in DuckDB's words (an ``UPDATE`` answers the rows it changed).
MARK_DIALECT = MarkDialect(
    "?", "VARCHAR", "BIGINT", timestamp_type="TIMESTAMPTZ", now="now()", updated_rows=lambda conn: conn.fetchall()[0][0]
)


class DuckDBSink:
    """Tables in one schema of a DuckDB database; rows and the connector's mark commit together.

    Rows of one batch are inserted with DuckDB's ``preserve_insertion_order`` off unless asked otherwise: the
    insert then runs on every core (a table has no row order; add an ordering column when order matters).

    With ``hold_connection`` the sink keeps one connection from the factory open after its first use until
    :meth:`close`: DuckDB then shares the open database with every later connection of the factory, so a call
    costs no file open and no checkpoint (an ingest session uses this). The database file stays locked by this
    process until :meth:`close` (DuckDB allows one writing process per file).
    """

    kind = "duckdb"

    def __init__(
        self,
        connect: ConnectionFactory,
        schema: str = "main",
        hold_connection: bool = False,
        preserve_insertion_order: bool = False,
    ):
        self._factory = connect
        self.schema = schema
        self.hold_connection = hold_connection
        self.preserve_insertion_order = preserve_insertion_order
        self._held: AbstractContextManager[duckdb.DuckDBPyConnection] | None = None
        self._held_connection: duckdb.DuckDBPyConnection | None = None
        self._marks_table = MarkTable(self._name(POSITIONS_TABLE), MARK_DIALECT)
        self._positions_ready = False
        #: Marks this sink committed while it holds the file (DuckDB lets one process write it): no re-read.
        self._marks: dict[str, SinkMark] = {}
        #: Columns of each table (name, DuckDB type) for its JSON reader, read once from the catalog.
        self._columns: dict[str, list[tuple[str, str]]] = {}
        self._reads_json: bool | None = None
        global _swept
        if not _swept:
            _swept = True
            sweep_scratch_files()

    def connect(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A connection from the factory; with ``hold_connection``, the one held open (opened on first use)."""
        if not self.hold_connection:
            return self._factory()
        if self._held is None:
            held = self._factory()
            self._held_connection = held.__enter__()
            self._held = held
        return contextlib.nullcontext(self._held_connection)

    def close(self) -> None:
        """Release the held connection (DuckDB checkpoints and unlocks the file when it was the last)."""
        held, self._held = self._held, None
        self._marks.clear()
        if held is not None:
            held.__exit__(None, None, None)

    def _name(self, table: str) -> str:
        return f"{quote(self.schema)}.{quote(table)}"

    @contextlib.contextmanager
    def _failing(self, action: str) -> Iterator[None]:
        """DuckDB's error as a :class:`SinkError` naming ``action``."""
        try:
            yield
        except duckdb.Error as exc:
            raise SinkError(f"DuckDB sink: cannot {action}: {exc}") from exc

    def check(self) -> None:
        """Open a connection and run ``SELECT 1``."""
        try:
            with self.connect() as conn:
                conn.execute("SELECT 1").fetchall()
        except duckdb.Error as exc:
            raise SinkError(f"cannot reach the DuckDB sink: {exc}") from exc

    def table_schema(self, table: str) -> pa.Schema | None:
        """The Arrow schema of ``table`` (``None`` when it does not exist)."""
        with self._failing(f"describe table {self._name(table)}"), self.connect() as conn:
            if not self._exists(conn, table):
                return None
            return conn.sql(f"SELECT * FROM {self._name(table)} LIMIT 0").to_arrow_table().schema

    def _exists(self, conn: duckdb.DuckDBPyConnection, table: str) -> bool:
        rows = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [self.schema, table],
        ).fetchall()
        return bool(rows)

    def ensure_table(self, table: str, columns: dict[str, str] | None, inferred: pa.Schema | None) -> pa.Schema:
        """Create ``table`` from ``columns`` (SQL types) or else from ``inferred``; return its schema."""
        definitions = column_definitions(table, columns, inferred, DUCKDB)
        try:
            with self.connect() as conn:
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
                conn.execute(f"CREATE TABLE IF NOT EXISTS {self._name(table)} ({definitions})")
        except duckdb.Error as exc:
            raise SinkError(f"cannot create DuckDB table {self._name(table)}: {exc}") from exc
        schema = self.table_schema(table)
        assert schema is not None
        return schema

    def drop_table(self, table: str) -> None:
        """``DROP TABLE IF EXISTS`` (the JSON reader's column list of the table is forgotten)."""
        self._columns.pop(table, None)
        try:
            with self.connect() as conn:
                conn.execute(f"DROP TABLE IF EXISTS {self._name(table)}")
        except duckdb.Error as exc:
            raise SinkError(f"cannot drop DuckDB table {self._name(table)}: {exc}") from exc

    def mark(self, connector_id: str) -> SinkMark | None:
        """The last committed mark of a connector."""
        if connector_id in self._marks:
            return self._marks[connector_id]
        with self._failing("read the connector position"), self.connect() as conn:
            try:
                return self._marks_table.read(conn, connector_id)
            except duckdb.CatalogException:  # nothing was ever committed here
                return None

    def move_mark(self, old_connector_id: str, new_connector_id: str, replace: bool = False) -> SinkMark | None:
        """Move a connector's mark to a new id in one DuckDB transaction (:meth:`MarkTable.move`); the cached
        marks of both ids are forgotten. ``None`` when the old id has none or no mark was ever stored here."""
        self._marks.pop(old_connector_id, None)
        self._marks.pop(new_connector_id, None)
        with self._failing("move a connector position"), self.connect() as conn:
            if not self._exists(conn, POSITIONS_TABLE):
                return None
            return self._marks_table.move(conn, old_connector_id, new_connector_id, replace)

    def write(self, table: str, rows: pa.Table, mark: SinkMark) -> None:
        """Append ``rows`` and store ``mark`` in one transaction.

        The mark must follow the stored one (``batch_seq`` one higher), so two writers racing on the same
        connector cannot both commit the same batch: the loser's transaction is rolled back.
        """

        def insert(conn: duckdb.DuckDBPyConnection) -> int:
            if rows.num_rows:
                self._insert(conn, table, rows)
            return rows.num_rows

        self._commit(table, insert, lambda _: mark)

    def reads_json(self) -> bool:
        """Whether DuckDB may read the scratch files of :meth:`write_json_lines` and :meth:`json_reader`: not when
        the database is configured with ``enable_external_access = false`` (then JSON goes through pyarrow)."""
        if self._reads_json is None:
            with self._failing("read its settings"), self.connect() as conn:
                setting = conn.execute("SELECT current_setting('enable_external_access')").fetchall()[0][0]
            self._reads_json = str(setting).lower() not in ("false", "0")
        return self._reads_json

    def write_json_lines(self, table: str, data: bytes | memoryview, mark_for: Callable[[int], SinkMark]) -> int | None:
        """Load JSON lines with DuckDB's ``read_json`` into ``table``'s columns, and store ``mark_for(rows)``, in
        one transaction; ``None`` (rolled back) when DuckDB rejects a record.

        DuckDB's JSON reader parses and inserts in one parallel pipeline (no Arrow step). Its casting rules decide
        what fits a column: the string ``"12"`` fits BIGINT, ``1.5`` is rounded into BIGINT, a number or an
        object fits VARCHAR (as JSON text); malformed JSON, a line that is not an object and a value DuckDB
        cannot cast (``"x"`` into DOUBLE) are rejected.
        """
        source = self._read_json_sql(table)
        with _scratch_file(data) as path:

            def insert(conn: duckdb.DuckDBPyConnection) -> int:
                with _rejected_records():
                    return conn.execute(f"INSERT INTO {self._name(table)} BY NAME {source(path)}").fetchall()[0][0]

            try:
                return self._commit(table, insert, mark_for)
            except RecordError:
                return None

    def json_reader(self, table: str) -> RecordReader:
        """DuckDB's ``read_json`` into ``table``'s columns, giving Arrow (the reader of the record-by-record
        path when :meth:`write_json_lines` was refused, so that one batch follows one set of rules), with its
        screen (:meth:`_json_screen`)."""

        def read(buffer: pa.Buffer, _schema: pa.Schema | None) -> pa.Table:
            # Records of any size: DuckDB's default limit (16 MB a record) first, as a larger limit slows its
            # reader down by half (a 32 MB limit: 0.23 s -> 0.40 s for 80 MB, and a slower checkpoint); the
            # piece is read again with a limit above its size only when DuckDB says a record exceeds it.
            with (
                self._failing(f"read JSON for {self._name(table)}"),
                _scratch_file(memoryview(buffer)) as path,
                self.connect() as conn,
            ):
                try:
                    with _rejected_records():
                        return conn.sql(self._read_json_sql(table)(path)).to_arrow_table()
                except RecordError as exc:
                    if buffer.size <= _DEFAULT_LARGEST_RECORD or "maximum_object_size" not in str(exc.__cause__):
                        raise
                with _rejected_records():
                    return conn.sql(self._read_json_sql(table, largest_record=buffer.size + 1)(path)).to_arrow_table()

        return RecordReader(read, self._json_screen(table))

    def _json_screen(self, table: str) -> Screen:
        """The screen of :meth:`json_reader`: one query judges every record on its own with DuckDB's JSON
        functions, ``read_json``'s own machinery (the records are scanned as Arrow strings). Rejected:
        a record that is not UTF-8 or not JSON, one that is neither an object nor ``null``, and one with a value
        that does not cast to its column's type (``TRY_CAST`` of the JSON value: ``read_json``'s casting rules).
        What it lets through may still be rejected by the reader (a key twice); a byte order mark, which the reader
        skips at the start of its input only, is left to it."""
        space = "' ' || chr(9) || chr(10) || chr(13)"
        is_object = f"(starts_with(j, '{{') OR starts_with(ltrim(j, {space}), '{{') OR trim(j, {space}) = 'null')"
        # JSON text casts to VARCHAR whatever it is: only the other columns can fail.
        typed = [(quote(name), name, kind) for name, kind in self._described(table) if kind not in _TAKES_ANY_JSON]
        fails = [f"r.{column} IS NOT NULL AND TRY_CAST(r.{column} AS {kind}) IS NULL" for column, _, kind in typed]
        why = [
            f"{_literal(f'JSON transform error: Failed to cast value to {kind} (column {name}): ')}"
            f" || left(r.{column}::VARCHAR, 200)"
            for column, name, kind in typed
        ]
        raw = _literal(json.dumps({name: "JSON" for _, name, _ in typed}))
        structure = f"CASE WHEN ok THEN json_transform(j, {raw}) END" if typed else "NULL"

        checked = (
            f"SELECT n, j, ok, {structure} AS r FROM (SELECT n, j, json_valid(j) AS ok"
            " FROM (SELECT n, ltrim(j, chr(65279)) AS j FROM records))"
        )
        # Cheap tests pick the rejected records; the reasons are written for those only.
        picked = f"SELECT * FROM ({checked}) WHERE NOT ok OR NOT {is_object}" + "".join(
            f" OR ({fail})" for fail in fails
        )
        sql = (
            f"SELECT n, CASE WHEN NOT ok THEN 'Malformed JSON' WHEN NOT {is_object} THEN 'JSON transform error: "
            f"Expected OBJECT, but got ' || json_type(j) || ': ' || left(trim(j, {space}), 200)"
            + "".join(f" WHEN {fail} THEN {reason}" for fail, reason in zip(fails, why, strict=True))
            + f" END FROM ({picked})"
        )

        def screen(records: pa.LargeBinaryArray, _schema: pa.Schema | None) -> list[tuple[int, str]]:
            broken = not_utf8(records)
            kept = np.flatnonzero(~broken)
            rejected = [(int(at), "Malformed JSON: invalid UTF-8 encoding") for at in np.flatnonzero(broken)]
            if rejected:
                records = records.take(int64_array(kept))
            positions, lines = int64_array(kept), records.view(pa.large_string())
            batches = [  # several batches: DuckDB scans them on every core
                pa.RecordBatch.from_arrays(
                    [positions.slice(at, _SCREEN_BATCH), lines.slice(at, _SCREEN_BATCH)], ["n", "j"]
                )
                for at in range(0, len(kept), _SCREEN_BATCH)
            ]
            records_table = pa.Table.from_batches(batches, schema=_SCREEN_SCHEMA)
            with self._failing(f"screen JSON records for {self._name(table)}"), self.connect() as conn:
                rejected += conn.from_arrow(records_table).query("records", sql).fetchall()
            return sorted(rejected)

        return screen

    def _described(self, table: str) -> list[tuple[str, str]]:
        """``table``'s columns and their DuckDB types, read once from the catalog."""
        if table not in self._columns:
            with self._failing(f"describe table {self._name(table)}"), self.connect() as conn:
                described = conn.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
                    [self.schema, table],
                ).fetchall()
            if not described:
                raise SinkError(f"DuckDB table {self._name(table)} does not exist")
            self._columns[table] = [(str(name), str(kind)) for name, kind in described]
        return self._columns[table]

    def _read_json_sql(self, table: str, largest_record: int = 0) -> Callable[[str], str]:
        """``SELECT * FROM read_json(path, ...)`` with ``table``'s column types, as a function of the path."""
        columns = ", ".join(f"{_literal(name)}: {_literal(kind)}" for name, kind in self._described(table))
        limit = f", maximum_object_size = {largest_record}" if largest_record > _DEFAULT_LARGEST_RECORD else ""

        def sql(path: str) -> str:
            return (
                f"SELECT * FROM read_json({_literal(path)}, format = 'newline_delimited', columns = {{{columns}}}"
                f"{limit})"
            )

        return sql

    def _commit(
        self,
        table: str,
        insert: Callable[[duckdb.DuckDBPyConnection], int],
        mark_for: Callable[[int], SinkMark],
    ) -> int:
        """One transaction (:meth:`MarkTable.commit`): check that the new mark follows the stored one, ``insert``
        rows, store the mark."""
        try:
            with self.connect() as conn, self._unordered(conn):
                if not self._positions_ready:
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
                    conn.execute(self._marks_table.create_sql())
                    self._positions_ready = True
                rows, mark = self._marks_table.commit(conn, mark_for, lambda: insert(conn))
            if self.hold_connection:
                self._marks[mark.connector_id] = mark
            return rows
        except duckdb.Error as exc:
            raise SinkError(f"cannot write DuckDB table {self._name(table)}: {exc}") from exc

    def _insert(self, conn: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
        """Insert ``rows`` through a registered view, inside the write transaction. When the insert fails, the
        view goes with the rollback: DuckDB refuses to unregister it in the aborted transaction, and that error
        would hide the insert's."""
        view = f"_batch_{uuid.uuid4().hex}"
        conn.register(view, rows)
        conn.execute(f"INSERT INTO {self._name(table)} BY NAME SELECT * FROM {quote(view)}")
        conn.unregister(view)

    @contextlib.contextmanager
    def _unordered(self, conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
        """``preserve_insertion_order`` off around a write transaction (it cannot change within one), unless
        the sink was asked to keep it."""
        if self.preserve_insertion_order:
            yield
            return
        conn.execute("SET preserve_insertion_order = false")
        try:
            yield
        except BaseException:
            with contextlib.suppress(duckdb.Error):  # the write's own error is the one to report
                conn.execute("RESET preserve_insertion_order")
            raise
        conn.execute("RESET preserve_insertion_order")

    def row_count(self, table: str) -> int:
        """Rows in ``table`` (0 when it does not exist)."""
        with self._failing(f"count rows of {self._name(table)}"), self.connect() as conn:
            if not self._exists(conn, table):
                return 0
            return conn.execute(f"SELECT count(*) FROM {self._name(table)}").fetchall()[0][0]

    def read_table(self, table: str) -> Any:
        """The whole table as a pandas DataFrame."""
        with self._failing(f"read {self._name(table)}"), self.connect() as conn:
            return conn.sql(f"SELECT * FROM {self._name(table)}").df()


def _literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


#: Records per Arrow batch handed to the screen's query.
_SCREEN_BATCH = 32_768
_SCREEN_SCHEMA = pa.schema([("n", pa.int64()), ("j", pa.large_string())])
#: Column types any JSON value casts to (the screen of :meth:`DuckDBSink.json_reader` need not try them).
_TAKES_ANY_JSON = ("VARCHAR", "JSON")
#: DuckDB's ``read_json`` default ``maximum_object_size``.
_DEFAULT_LARGEST_RECORD = 16 << 20
#: Where JSON pieces are written for DuckDB's reader, in order of preference: memory-backed when the machine has
#: it, else (or when it is full, e.g. a container's 64 MB /dev/shm) the system's temporary folder.
SCRATCH_DIRS = [d for d in (Path("/dev/shm"), Path(tempfile.gettempdir())) if os.access(d, os.W_OK)]
#: Scratch files are named ``connector-batch-<pid>-<random>.jsonl``.
SCRATCH_PREFIX = "connector-batch-"
_swept = False


def sweep_scratch_files() -> list[Path]:
    """Remove the scratch files of processes that no longer run (killed before removing theirs: on tmpfs they
    would hold memory until a reboot); return them. Runs once per process when the first sink is made."""
    removed = []
    for directory in SCRATCH_DIRS:
        for path in directory.glob(f"{SCRATCH_PREFIX}*"):
            pid = path.name[len(SCRATCH_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and not _process_exists(int(pid)):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def _scratch_file(data: bytes | memoryview) -> Iterator[str]:
    """``data`` in a private temporary file (mode 0600, removed afterwards), for DuckDB's file readers; in the
    first of :data:`SCRATCH_DIRS` that takes it."""
    failures = []
    for directory in SCRATCH_DIRS:
        handle, path = -1, ""
        try:
            handle, path = tempfile.mkstemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", suffix=".jsonl", dir=directory)
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            break
        except OSError as exc:  # full (ENOSPC) or gone: try the next folder
            failures.append(f"{directory}: {exc.strerror or exc}")
            if path:
                os.unlink(path)
    else:
        raise SinkError(f"cannot write a scratch file for DuckDB's JSON reader ({'; '.join(failures) or 'no folder'})")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):  # never hides the reader's own error
            os.unlink(path)


@contextlib.contextmanager
def _rejected_records() -> Iterator[None]:
    """DuckDB's rejection of a record as :class:`RecordError`, with DuckDB's reason but without the scratch
    file's name, the line number within the piece and DuckDB's hints (the parser shortens long reasons)."""
    try:
        yield
    except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
        lines = str(exc).strip().splitlines()
        text = re.sub(r"^[A-Za-z ]+ Error: ", "", lines[0] if lines else type(exc).__name__)
        text = re.sub(r' in file "[^"]*",?', "", text)
        text = re.sub(r",? ?(at byte \d+ )?in (line|record/value) \d+", "", text)
        raise RecordError(text) from exc
