"""The state of pipelines and connectors (DESIGN §6): one interface, two backends.

Every state access of the product goes through the interface here: :class:`StateStore` finds the state of a
pipeline (:class:`PipelineState`) and of its connectors (:class:`ConnectorState`), and reads every connector of a
pipeline at once for a sensor tick (:class:`ConnectorSnapshot`). Backends:

* SQLite (this module, the default): files under ``state_dir``, described below; backed up by
  :mod:`connector_core.backups` under the 24-hour rule.
* PostgreSQL (:mod:`connector_core.state_postgres`): the same logical tables in one schema, shared by every
  process that reaches the database (``state: {kind: postgres, ...}`` of a pipeline).

SQLite files:

* ``{state_dir}/{pipeline}/pipeline.sqlite``: ``app_state`` (ids, status, configurationStatus, scheduling),
  ``app_config`` (configuration stored by the wizard and updates), ``prerequisites``, ``connectors`` (the id of
  every connector) and ``events``.
* ``{state_dir}/{pipeline}/connector/{connector_id}/sqlite.db``: ``identity``, ``runtime``, ``offsets``,
  ``metrics``, ``parse_errors``, ``hourly_stats`` and ``events``.

Every database runs in WAL mode with a ``busy_timeout``; its schema version is ``PRAGMA user_version`` and
:data:`PIPELINE_MIGRATIONS` / :data:`CONNECTOR_MIGRATIONS` bring an older file up to date when it is opened.
Writes go through :meth:`StateDB.transaction` (``BEGIN IMMEDIATE``), so a status change and its event commit
together and two writers never interleave.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import sqlite3
import time
import urllib.parse
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from connector_core.vocabulary import ConfigurationStatus, RunState, Status

BUSY_TIMEOUT_MS = 30_000
MAX_PARSE_ERRORS_KEPT = 100


def utc_now() -> str:
    """The current UTC time as ISO-8601 text."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def current_hour() -> str:
    """The start of the current UTC hour, e.g. ``2026-11-23T19:00:00+00:00``."""
    return dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0).isoformat()


class StateError(RuntimeError):
    """A state database that cannot be opened, migrated or written."""


PIPELINE_MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE app_state (key TEXT PRIMARY KEY, value TEXT);
    CREATE TABLE app_config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE prerequisites (
        id TEXT PRIMARY KEY, title TEXT NOT NULL, url TEXT, done INTEGER NOT NULL DEFAULT 0, done_at TEXT);
    CREATE TABLE connectors (
        table_name TEXT NOT NULL, connector_name TEXT NOT NULL, connector_id TEXT NOT NULL UNIQUE,
        PRIMARY KEY (table_name, connector_name));
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT NOT NULL, procedure TEXT NOT NULL,
        from_status TEXT, to_status TEXT, response_code TEXT, message TEXT, source TEXT);
    """,
)

CONNECTOR_MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE identity (
        connector_id TEXT PRIMARY KEY, pipeline_id TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}', tags TEXT NOT NULL DEFAULT '[]');
    CREATE TABLE runtime (key TEXT PRIMARY KEY, value TEXT);
    CREATE TABLE offsets (
        id INTEGER PRIMARY KEY CHECK (id = 1), position TEXT, batch_seq INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT);
    CREATE TABLE metrics (
        id INTEGER PRIMARY KEY CHECK (id = 1), total_records INTEGER NOT NULL DEFAULT 0,
        total_bytes INTEGER NOT NULL DEFAULT 0, buffered_records INTEGER NOT NULL DEFAULT 0,
        end_of_input INTEGER NOT NULL DEFAULT 0, num_parse_errors INTEGER NOT NULL DEFAULT 0,
        num_transport_errors INTEGER NOT NULL DEFAULT 0, fatal_error TEXT);
    CREATE TABLE parse_errors (
        id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT NOT NULL, "index" INTEGER NOT NULL,
        message TEXT NOT NULL);
    CREATE TABLE hourly_stats (
        hour TEXT PRIMARY KEY, records INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,
        parse_errors INTEGER NOT NULL DEFAULT 0, transport_errors INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT NOT NULL, kind TEXT NOT NULL, message TEXT,
        source TEXT NOT NULL);
    INSERT INTO offsets (id) VALUES (1);
    INSERT INTO metrics (id) VALUES (1);
    """,
    # 2: every read counts, also one that found nothing new, so the sensor's run keys move on for sources
    # that never finish (Kafka, followed files).
    "ALTER TABLE offsets ADD COLUMN reads INTEGER NOT NULL DEFAULT 0",
    # 3: failed reads in a row, so that every front end gives a failing connector up after the same count.
    "ALTER TABLE metrics ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0",
)


# --------------------------------------------------------------------------------------------- the interface
#: What a write transaction hands to the ``store`` callbacks of procedures and to the state's write helpers: a
#: connection of the backend, only ever passed back to the same state object's methods.
Transaction = Any


class StateObject(ABC):
    """What the state of a pipeline and of a connector have in common, whatever stores it: existence (an absent
    state answers the initial state; the first write creates it), write transactions and privileges."""

    redact: Callable[[str], str]  #: applied to every message before it is stored (no secret lands in the state)

    @property
    @abstractmethod
    def exists(self) -> bool:
        """Whether the state exists (it existed when opened, or a write created it)."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the state lives, for messages (a file path, or a PostgreSQL schema and pipeline or connector)."""

    @abstractmethod
    def create(self) -> None:
        """Create the state (nothing when it exists)."""

    @abstractmethod
    def open_if_created(self) -> bool:
        """Whether the state exists now (another process may have created it since this object was made)."""

    @abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        """A write transaction: committed on success, rolled back on any exception."""

    @abstractmethod
    def writable(self) -> bool:
        """Whether this process may write the state (the privileges phase of every procedure)."""

    @abstractmethod
    def close(self) -> None:
        """Release what the object holds."""


class PipelineState(StateObject):
    """The state of one pipeline, whatever stores it: ids, lifecycle status, stored configuration, prerequisites,
    events and the id of every connector (DESIGN §6).

    Until the pipeline's state exists its readers answer the initial state (CONFIGURING, INSTALLED, scheduling off,
    every prerequisite open); the first :meth:`transaction` (or :meth:`create`) creates it. Writes happen inside
    :meth:`transaction` (a status and its event commit together, two writers never interleave); the helpers that
    take a ``conn`` write inside the transaction it came from. Backends: :class:`SQLitePipelineState` (a file) and
    :class:`connector_core.state_postgres.PostgresPipelineState` (rows of shared tables).
    """

    #: The first values of ``app_state`` (also what an absent state answers).
    INITIAL = {
        "status": Status.CONFIGURING,
        "configuration_status": ConfigurationStatus.INSTALLED,
        "scheduling": "off",
    }
    declared_prerequisites: list[tuple[str, str, str | None]]
    read_only: bool

    @abstractmethod
    def initialize(self, prerequisites: Sequence[tuple[str, str, str | None]] | None = None) -> None:
        """Create the identity and first status once; add new prerequisites (id, title, url), keep old ones."""

    @abstractmethod
    def get(self, key: str) -> str | None:
        """One value of ``app_state`` (the initial value while the state does not exist)."""

    @abstractmethod
    def put(self, conn: Transaction, key: str, value: str) -> None:
        """Set one value of ``app_state`` inside a transaction."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The stored configuration, key -> JSON value."""

    @abstractmethod
    def put_config(self, conn: Transaction, values: dict[str, Any]) -> None:
        """Store configuration values inside a transaction."""

    @abstractmethod
    def clear_config(self, conn: Transaction) -> None:
        """Forget every stored configuration value inside a transaction (the wizard's reset)."""

    @abstractmethod
    def prerequisites(self) -> list[dict[str, Any]]:
        """Every prerequisite with its done flag (the declared ones, all open, while nothing is stored)."""

    @abstractmethod
    def mark_prerequisites_done(self, conn: Transaction, ids: Sequence[str]) -> None:
        """Mark prerequisites done inside a transaction (the first time is kept as ``done_at``)."""

    @abstractmethod
    def reset_prerequisites(self, conn: Transaction) -> None:
        """Mark every prerequisite open again inside a transaction."""

    @abstractmethod
    def add_event(
        self,
        conn: Transaction,
        procedure: str,
        from_status: str | None,
        to_status: str | None,
        response_code: str,
        message: str = "",
        source: dict[str, Any] | None = None,
    ) -> None:
        """Record one lifecycle event inside the transaction that made the change (its message redacted)."""

    @abstractmethod
    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest events first."""

    @abstractmethod
    def last_event_id(self) -> int:
        """The id of the newest event (0 when there is none): it changes with every procedure (a pause, a resume,
        a connector started), so a run key that includes it is new after each of them."""

    @abstractmethod
    def connector_ids(self) -> dict[tuple[str, str], str]:
        """The id of every connector that has one, by ``(table, connector)`` (one query)."""

    @abstractmethod
    def connector_id(self, table: str, connector: str) -> str | None:
        """The id of ``table.connector`` (``None`` until a write gave it one)."""

    @abstractmethod
    def ensure_connector_id(self, table: str, connector: str) -> str:
        """The id of ``table.connector``, generated once and kept."""

    @abstractmethod
    def procedure_lock(self, timeout_seconds: float = 60) -> contextlib.AbstractContextManager[None]:
        """Serialize lifecycle procedures of this pipeline across processes (released if the process dies)."""

    @property
    def pipeline_id(self) -> str | None:
        """The pipeline (hub) id, a UUID generated when the state is created (``None`` before)."""
        return self.get("pipeline_id")

    @property
    def status(self) -> Status | None:
        """The lifecycle status (CONFIGURING, STARTING, STARTED, PAUSING, PAUSED, ERROR); ``None``: no record."""
        value = self.get("status")
        return Status(value) if value is not None else None

    @property
    def configuration_status(self) -> ConfigurationStatus | None:
        """The wizard's progress (INSTALLED ... FINALIZED); ``None``: no record."""
        value = self.get("configuration_status")
        return ConfigurationStatus(value) if value is not None else None

    @property
    def scheduling_enabled(self) -> bool:
        """Whether the orchestration sensor may launch runs for this pipeline."""
        return self.get("scheduling") == "on"

    def merge_config(self, conn: Transaction, key: str, values: dict[str, Any]) -> None:
        """Overlay ``values`` on the stored mapping under ``key`` inside a transaction."""
        self.put_config(conn, {key: {**self.config().get(key, {}), **values}})


class ConnectorState(StateObject):
    """The state of one connector, whatever stores it: identity, runtime state, position, metrics, hourly stats,
    parse errors and events (DESIGN §4, §6).

    Until it exists (the connector has no id yet, or nothing was written) its readers answer the initial state:
    ``starts_paused`` decides Paused or Running, every counter is zero. Backends: :class:`SQLiteConnectorState` and
    :class:`connector_core.state_postgres.PostgresConnectorState`.
    """

    starts_paused: bool

    @abstractmethod
    def initialize(
        self,
        connector_id: str,
        pipeline_id: str,
        name: str,
        transport: str,
        metadata: dict[str, Any],
        tags: Sequence[str],
        starts_paused: bool,
    ) -> None:
        """Write the identity row and first runtime state once; refresh name, type, metadata and tags when they
        changed (nothing is written when they did not)."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """The identity row (ids, name, type, metadata, tags)."""

    @abstractmethod
    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest events first."""

    @abstractmethod
    def record_event(self, kind: str, message: str) -> None:
        """Record one event (its ``source``: the identity row) in a transaction of its own."""

    @abstractmethod
    def runtime(self, key: str) -> str | None:
        """One runtime value (``state``, ``start_after_released``)."""

    @abstractmethod
    def set_running(self, running: bool, reason: str, released_by_start_after: bool = False) -> bool:
        """Set ``Running``/``Paused``; returns whether it changed (the call is idempotent)."""

    @abstractmethod
    def position(self) -> tuple[Any, int]:
        """The stored source position (JSON) and batch sequence number."""

    @abstractmethod
    def reads(self) -> int:
        """How many reads the connector made, including those that found nothing new."""

    @abstractmethod
    def metrics(self) -> ConnectorMetrics:
        """The current counters."""

    @abstractmethod
    def parse_errors(self) -> list[dict[str, Any]]:
        """The last parse errors kept (oldest first)."""

    @abstractmethod
    def hourly_stats(self) -> list[dict[str, Any]]:
        """Records, bytes and errors per UTC hour, oldest first."""

    @abstractmethod
    def commit_batch(self, batch: BatchCommit) -> None:
        """Store one batch's position, counters, parse errors and hourly stats in one transaction."""

    @abstractmethod
    def record_transport_error(self, message: str, fatal: bool = False) -> None:
        """Count a transport error that did not stop the read (and keep it as the fatal error with ``fatal``)."""

    @abstractmethod
    def record_failed_read(self, message: str, fatal_after: int) -> str | None:
        """Count a failed read; the ``fatal_after``-th failure in a row becomes the fatal error (returned)."""

    @abstractmethod
    def clear_fatal_error(self) -> None:
        """Forget the fatal error and the failures before it, so that a restarted connector tries again."""

    @abstractmethod
    def update_progress(self, buffered_records: int, end_of_input: bool) -> None:
        """Refresh ``buffered_records`` and ``end_of_input`` when a read found nothing new."""

    @property
    def run_state(self) -> RunState:
        """The connector's own state (before the state exists: Paused when it starts paused)."""
        stored = self.runtime("state")
        if stored is not None:
            return RunState(stored)
        return RunState.PAUSED if self.starts_paused else RunState.RUNNING

    @property
    def running(self) -> bool:
        """Whether the connector's own state is ``Running``."""
        return self.run_state is RunState.RUNNING

    @property
    def start_after_released(self) -> bool:
        """Whether ``start_after`` already started this connector once (it is never auto-started again)."""
        return self.runtime("start_after_released") == "true"


class StateStore(ABC):
    """Finds the state of a project's pipelines and connectors in one backend; every state it opens redacts its
    messages with ``redact`` before storing them. :class:`SQLiteStateStore` (files under ``state_dir``, the
    default) and :class:`connector_core.state_postgres.PostgresStateStore` (tables in a PostgreSQL schema)."""

    #: ``sqlite`` or ``postgres``.
    kind: str
    redact: Callable[[str], str]

    @abstractmethod
    def pipeline(
        self,
        pipeline: str,
        create: bool = True,
        prerequisites: Sequence[tuple[str, str, str | None]] = (),
        read_only: bool = False,
    ) -> PipelineState:
        """The pipeline's state (created when needed, unless ``create`` is false; ``read_only``: never written)."""

    @abstractmethod
    def connector(
        self, pipeline: str, connector_id: str | None, create: bool = True, starts_paused: bool = False
    ) -> ConnectorState:
        """A connector's state (created when needed, unless ``create`` is false or it has no id yet)."""

    @abstractmethod
    def connector_snapshots(
        self, pipeline: str, connectors: dict[tuple[str, str], tuple[str | None, bool]]
    ) -> dict[tuple[str, str], ConnectorSnapshot]:
        """Every connector's state read once, read-only, by ``(table, connector)`` from ``(id, starts_paused)``
        (:class:`ConnectorSnapshot`; the initial state without an id or stored state)."""

    def close(self) -> None:  # noqa: B027 - a store holding nothing has nothing to release
        """Release what the store holds (connections)."""


# ---------------------------------------------------------------------------------------------- SQLite
class StateDB:
    """One SQLite database with WAL, a busy timeout, migrations and ``BEGIN IMMEDIATE`` transactions.

    With ``create=False`` a database that does not exist yet is not created: the object is *absent*
    (:attr:`exists` is false), its readers answer the initial state, and the first :meth:`transaction` creates
    the file. Opening an existing file writes nothing unless its schema is older than this program's. With
    ``read_only`` (and ``create=False``) an absent database stays absent and an existing one is opened read-only:
    nothing is ever created, migrated or written.
    """

    def __init__(
        self,
        path: Path | None,
        migrations: Sequence[str],
        read_only: bool = False,
        create: bool = True,
        redact: Callable[[str], str] = str,
    ):
        self.redact = redact  #: applied to every message before it is stored (no secret lands in a database)
        self.path = Path(path) if path is not None else None
        self.read_only = read_only
        self._migrations = migrations
        self._conn: sqlite3.Connection | None = None
        if self.path is not None and self.path.exists():
            self._open()
        elif read_only and create:
            raise StateError(f"state database {self.path} does not exist")
        elif create:
            self.create()

    @property
    def exists(self) -> bool:
        """Whether the database file is open (it existed, or a write created it)."""
        return self._conn is not None

    @property
    def location(self) -> str:
        """The database file."""
        return str(self.path)

    def create(self) -> None:
        """Create the database file (schema included) when it does not exist yet; open it."""
        if self._conn is not None:
            return
        if self.read_only:
            raise StateError(f"state database {self.path} was opened read-only; it cannot be created")
        if self.path is None:
            raise StateError("this state database has no path yet (its connector has no id)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    def open_if_created(self) -> bool:
        """Open the file when another process created it since; whether the database exists now."""
        if self._conn is None and self.path is not None and self.path.exists():
            self._open()
        return self.exists

    def _open(self) -> None:
        assert self.path is not None
        uri = f"file:{self.path}?mode=ro" if self.read_only else f"file:{self.path}"
        try:
            self._conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if self.read_only:
                return
            self._conn.execute("PRAGMA synchronous = NORMAL")
            if self.schema_version < len(self._migrations):
                self._conn.execute("PRAGMA journal_mode = WAL")  # kept by the file: set when it is made
                self._migrate(self._migrations)
            elif self.schema_version > len(self._migrations):
                raise StateError(
                    f"{self.path} has schema version {self.schema_version}, newer than this program knows "
                    f"({len(self._migrations)}); upgrade dagster-connectors"
                )
        except sqlite3.Error as exc:
            self._conn = None
            raise StateError(f"cannot open state database {self.path}: {exc}") from exc

    def _migrate(self, migrations: Sequence[str]) -> None:
        with self.transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(migrations[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")

    @property
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.create()
        assert self._conn is not None
        return self._conn

    @property
    def schema_version(self) -> int:
        """The schema version stored in the file (0 when there is no file yet)."""
        if self._conn is None:
            return 0
        return self._conn.execute("PRAGMA user_version").fetchone()[0]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on success, rolled back on any exception (a
        :class:`sqlite3.Error` comes out as a :class:`StateError`).

        The first transaction of an absent database creates its file.
        """
        conn = self._connection
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StateError(f"cannot write {self.path}: {exc}") from exc
        try:
            yield conn
        except BaseException as exc:
            conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StateError(f"cannot write {self.path}: {exc}") from exc
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StateError(f"cannot write {self.path}: {exc}") from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of a read-only statement (none while the database does not exist)."""
        if not self.open_if_created():
            return []
        assert self._conn is not None
        return self._conn.execute(sql, params).fetchall()

    def writable(self) -> bool:
        """Whether this process may write the database (the privileges phase of every procedure); for a database
        not created yet, whether its folder (or the nearest existing parent) is writable."""
        if self.read_only:
            return False
        if self._conn is None:
            folder = self.path.parent if self.path is not None else None
            while folder is not None and not folder.exists():
                folder = folder.parent if folder != folder.parent else None
            return folder is not None and folder.is_dir() and os.access(folder, os.W_OK)
        if self.path is None or not os.access(self.path, os.W_OK):
            return False
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# ---------------------------------------------------------------------------------------------- pipelines
class SQLitePipelineState(StateDB, PipelineState):
    """The pipeline database (SQLite): ids, lifecycle status, stored configuration, prerequisites, events.

    ``prerequisites`` are the checklist of the project file (id, title, url); until the database exists its
    readers answer the initial state: CONFIGURING, INSTALLED, scheduling off, every prerequisite open.
    """

    def __init__(
        self,
        path: Path,
        read_only: bool = False,
        create: bool = True,
        prerequisites: Sequence[tuple[str, str, str | None]] = (),
        redact: Callable[[str], str] = str,
    ):
        self.declared_prerequisites = list(prerequisites)
        self.lock_path = Path(path).with_suffix(".lock")
        self._app_state: dict[str, str] | None = None  #: ``app_state`` as read once, when opened read-only
        super().__init__(path, PIPELINE_MIGRATIONS, read_only, create, redact)

    def create(self) -> None:
        """Create the file with its identity, first status and prerequisites."""
        if not self.exists:
            super().create()
        self.initialize()

    def initialize(self, prerequisites: Sequence[tuple[str, str, str | None]] | None = None) -> None:
        """Create the identity and first status once; add new prerequisites (id, title, url), keep old ones.

        Writes nothing when all of that is stored already.
        """
        declared = self.declared_prerequisites if prerequisites is None else list(prerequisites)
        stored = [(r["id"], r["title"], r["url"]) for r in self.query("SELECT id, title, url FROM prerequisites")]
        if self.get("pipeline_id") and set(declared) <= set(stored):
            return
        with self.transaction() as conn:
            for key, value in {"pipeline_id": str(uuid.uuid4()), **self.INITIAL, "created_at": utc_now()}.items():
                conn.execute("INSERT OR IGNORE INTO app_state VALUES (?, ?)", (key, str(value)))
            for prerequisite_id, title, url in declared:
                conn.execute(
                    "INSERT INTO prerequisites (id, title, url) VALUES (?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET title = excluded.title, url = excluded.url",
                    (prerequisite_id, title, url),
                )

    # -- app_state
    def get(self, key: str) -> str | None:
        """One value of ``app_state`` (the initial value while the database does not exist)."""
        if not self.open_if_created():
            return self.INITIAL.get(key)
        if self.read_only:  # a snapshot (a sensor tick): read once, then answered from memory
            if self._app_state is None:
                self._app_state = {row[0]: row[1] for row in self.query("SELECT key, value FROM app_state")}
            return self._app_state.get(key)
        rows = self.query("SELECT value FROM app_state WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def put(self, conn: sqlite3.Connection, key: str, value: str) -> None:
        """Set one value of ``app_state`` inside a transaction."""
        conn.execute("INSERT OR REPLACE INTO app_state VALUES (?, ?)", (key, str(value)))

    # -- app_config
    def config(self) -> dict[str, Any]:
        """The stored configuration, key -> JSON value."""
        return {row["key"]: json.loads(row["value"]) for row in self.query("SELECT key, value FROM app_config")}

    def put_config(self, conn: sqlite3.Connection, values: dict[str, Any]) -> None:
        """Store configuration values inside a transaction."""
        conn.executemany(
            "INSERT OR REPLACE INTO app_config VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()]
        )

    def clear_config(self, conn: sqlite3.Connection) -> None:
        """Forget every stored configuration value inside a transaction (the wizard's reset)."""
        conn.execute("DELETE FROM app_config")

    # -- prerequisites
    def prerequisites(self) -> list[dict[str, Any]]:
        """Every prerequisite with its done flag (the declared ones, all open, while nothing is stored)."""
        rows = self.query("SELECT id, title, url, done, done_at FROM prerequisites ORDER BY rowid")
        if not rows:
            return [
                {"id": i, "title": title, "url": url, "done": False, "done_at": None}
                for i, title, url in self.declared_prerequisites
            ]
        return [dict(row) | {"done": bool(row["done"])} for row in rows]

    def mark_prerequisites_done(self, conn: sqlite3.Connection, ids: Sequence[str]) -> None:
        """Mark prerequisites done inside a transaction (the first time is kept as ``done_at``)."""
        conn.executemany(
            "UPDATE prerequisites SET done = 1, done_at = COALESCE(done_at, ?) WHERE id = ?",
            [(utc_now(), i) for i in ids],
        )

    def reset_prerequisites(self, conn: sqlite3.Connection) -> None:
        """Mark every prerequisite open again inside a transaction."""
        conn.execute("UPDATE prerequisites SET done = 0, done_at = NULL")

    # -- events
    def add_event(
        self,
        conn: sqlite3.Connection,
        procedure: str,
        from_status: str | None,
        to_status: str | None,
        response_code: str,
        message: str = "",
        source: dict[str, Any] | None = None,
    ) -> None:
        """Record one lifecycle event inside the transaction that made the change."""
        conn.execute(
            "INSERT INTO events (timestamp, procedure, from_status, to_status, response_code, message, source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                utc_now(),
                procedure,
                from_status,
                to_status,
                response_code,
                self.redact(message),
                json.dumps(source or {}),
            ),
        )

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest events first."""
        return [dict(r) for r in self.query("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))]

    def last_event_id(self) -> int:
        """The id of the newest event (0 when there is none): it changes with every procedure (a pause, a resume,
        a connector started), so a run key that includes it is new after each of them."""
        rows = self.query("SELECT coalesce(max(id), 0) FROM events")
        return int(rows[0][0]) if rows else 0

    # -- connectors
    def connector_ids(self) -> dict[tuple[str, str], str]:
        """The id of every connector that has one, by ``(table, connector)`` (one query)."""
        rows = self.query("SELECT table_name, connector_name, connector_id FROM connectors")
        return {(table, name): connector_id for table, name, connector_id in rows}

    def connector_id(self, table: str, connector: str) -> str | None:
        """The id of ``table.connector`` (``None`` until a write gave it one)."""
        rows = self.query(
            "SELECT connector_id FROM connectors WHERE table_name = ? AND connector_name = ?", (table, connector)
        )
        return rows[0]["connector_id"] if rows else None

    def ensure_connector_id(self, table: str, connector: str) -> str:
        """The id of ``table.connector``, generated once and kept."""
        known = self.connector_id(table, connector)
        if known is not None:
            return known
        with self.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO connectors VALUES (?, ?, ?)", (table, connector, str(uuid.uuid4())))
            return conn.execute(
                "SELECT connector_id FROM connectors WHERE table_name = ? AND connector_name = ?",
                (table, connector),
            ).fetchone()[0]

    @contextlib.contextmanager
    def procedure_lock(self, timeout_seconds: float = 60) -> Iterator[None]:
        """Serialize lifecycle procedures of this pipeline across processes (released if the process dies)."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as handle:
            deadline = time.monotonic() + timeout_seconds
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StateError(
                            f"another procedure holds {self.lock_path} for more than {timeout_seconds}s"
                        ) from None
                    time.sleep(0.01)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------- connectors
@dataclass
class ConnectorMetrics:
    """The counters of one connector (DESIGN §4)."""

    total_records: int = 0
    total_bytes: int = 0
    buffered_records: int = 0
    end_of_input: bool = False
    num_parse_errors: int = 0
    num_transport_errors: int = 0
    fatal_error: str | None = None
    consecutive_failures: int = 0

    @property
    def finished(self) -> bool:
        """``end_of_input`` and nothing buffered."""
        return self.end_of_input and self.buffered_records == 0

    def as_dict(self) -> dict[str, Any]:
        """The metrics object of the stats JSON."""
        return {
            "total_records": self.total_records,
            "total_bytes": self.total_bytes,
            "buffered_records": self.buffered_records,
            "end_of_input": self.end_of_input,
            "num_parse_errors": self.num_parse_errors,
            "num_transport_errors": self.num_transport_errors,
        }


@dataclass
class BatchCommit:
    """What one ingested batch changes in the connector database (committed in one transaction)."""

    position: Any
    batch_seq: int
    records: int
    bytes: int
    end_of_input: bool
    buffered_records: int = 0
    parse_errors: list[tuple[int, str]] = field(default_factory=list)
    transport_errors: int = 0
    fatal_error: str | None = None


class SQLiteConnectorState(StateDB, ConnectorState):
    """The SQLite database of one connector: identity, runtime state, position, metrics, hourly stats, events.

    Until the database exists (``path`` is ``None`` while the connector has no id) its readers answer the
    initial state: ``starts_paused`` decides Paused or Running, every counter is zero.
    """

    def __init__(
        self,
        path: Path | None,
        read_only: bool = False,
        create: bool = True,
        starts_paused: bool = False,
        redact: Callable[[str], str] = str,
    ):
        self.starts_paused = starts_paused
        super().__init__(path, CONNECTOR_MIGRATIONS, read_only, create and path is not None, redact)

    def initialize(
        self,
        connector_id: str,
        pipeline_id: str,
        name: str,
        transport: str,
        metadata: dict[str, Any],
        tags: Sequence[str],
        starts_paused: bool,
    ) -> None:
        """Write the identity row and first runtime state once; refresh name, type, metadata and tags when they
        changed (nothing is written when they did not)."""
        identity = (connector_id, pipeline_id, name, transport, json.dumps(metadata), json.dumps(list(tags)))
        stored = self.query("SELECT * FROM identity")
        if stored and tuple(stored[0]) == identity and self.runtime("state") is not None:
            return
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO identity VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (connector_id) DO UPDATE SET "
                "name = excluded.name, type = excluded.type, metadata = excluded.metadata, tags = excluded.tags",
                identity,
            )
            first = RunState.PAUSED if starts_paused else RunState.RUNNING
            created = conn.execute("INSERT OR IGNORE INTO runtime VALUES ('state', ?)", (str(first),)).rowcount
            if created:
                self._event(conn, "created", f"connector {name} created")

    def identity(self) -> dict[str, Any]:
        """The identity row (ids, name, type, metadata, tags)."""
        rows = self.query("SELECT * FROM identity")
        if not rows:
            raise StateError(f"{self.path} has no identity row")
        row = dict(rows[0])
        return row | {"metadata": json.loads(row["metadata"]), "tags": json.loads(row["tags"])}

    def _event(self, conn: sqlite3.Connection, kind: str, message: str) -> None:
        identity = conn.execute("SELECT connector_id, pipeline_id, name, type FROM identity").fetchone()
        conn.execute(
            "INSERT INTO events (timestamp, kind, message, source) VALUES (?, ?, ?, ?)",
            (utc_now(), kind, self.redact(message), json.dumps(dict(identity) if identity else {})),
        )

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest events first."""
        return [dict(r) for r in self.query("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))]

    def record_event(self, kind: str, message: str) -> None:
        """Record one event (its ``source``: the identity row) in a transaction of its own."""
        with self.transaction() as conn:
            self._event(conn, kind, message)

    def rewrite_ids(
        self,
        pipeline_id: str,
        connector_id: str,
        identity: dict[str, Any],
        message: str,
    ) -> int:
        """Move this database onto other ids (a restore onto another pipeline/connector), in one transaction.

        The old ids are the identity row's. Every text value of every table that holds one (the identity row, the
        JSON ``source`` of events, messages, anything a later migration adds) gets the new id instead; ``identity``
        (``name``, ``type``, ``metadata``, ``tags``) replaces the rest of the identity row; the connector is left
        ``Paused``. Then it checks that the identity row holds the new ids and that no old id is left anywhere
        (:class:`StateError` otherwise, nothing changed), and records an event ``restored`` with ``message`` (which
        may name the old ids: where the data came from). Returns how many values were rewritten.
        """
        with self.transaction() as conn:
            old = conn.execute("SELECT pipeline_id, connector_id FROM identity").fetchone()
            if old is None:
                raise StateError(f"{self.path} has no identity row")
            moves = {a: b for a, b in ((old[0], pipeline_id), (old[1], connector_id)) if a != b}
            if any(len(a) < 8 for a in moves):
                raise StateError(f"{self.path}: refusing to rewrite ids as short as {sorted(moves)}")
            columns = _text_columns(conn)
            rewritten = 0
            for table, column in columns:
                for a, b in moves.items():
                    rewritten += conn.execute(
                        f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?) > 0',
                        (a, b, a),
                    ).rowcount
            conn.execute(
                "UPDATE identity SET name = ?, type = ?, metadata = ?, tags = ?",
                (identity["name"], identity["type"], json.dumps(identity["metadata"]), json.dumps(identity["tags"])),
            )
            conn.execute("INSERT OR REPLACE INTO runtime VALUES ('state', ?)", (str(RunState.PAUSED),))
            stored = tuple(conn.execute("SELECT pipeline_id, connector_id FROM identity").fetchone())
            left = [
                f"{table}.{column}"
                for table, column in columns
                for a in moves
                if conn.execute(f'SELECT 1 FROM "{table}" WHERE instr("{column}", ?) > 0 LIMIT 1', (a,)).fetchone()
            ]
            if stored != (pipeline_id, connector_id) or left:
                raise StateError(f"{self.path}: the id rewrite left identity {stored} and old ids in {left}")
            self._event(conn, "restored", message)  # it names the old ids: where the data came from
            return rewritten

    def runtime(self, key: str) -> str | None:
        """One runtime value (``state``, ``start_after_released``)."""
        rows = self.query("SELECT value FROM runtime WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def set_running(self, running: bool, reason: str, released_by_start_after: bool = False) -> bool:
        """Set ``Running``/``Paused``; returns whether it changed (the call is idempotent)."""
        new_state = str(RunState.RUNNING if running else RunState.PAUSED)
        with self.transaction() as conn:
            old = conn.execute("SELECT value FROM runtime WHERE key = 'state'").fetchone()
            if released_by_start_after:
                conn.execute("INSERT OR REPLACE INTO runtime VALUES ('start_after_released', 'true')")
            if old and old[0] == new_state:
                return False
            conn.execute("INSERT OR REPLACE INTO runtime VALUES ('state', ?)", (new_state,))
            self._event(conn, new_state.lower(), reason)
            return True

    def position(self) -> tuple[Any, int]:
        """The stored source position (JSON) and batch sequence number."""
        rows = self.query("SELECT position, batch_seq FROM offsets WHERE id = 1")
        if not rows:
            return None, 0
        return (json.loads(rows[0]["position"]) if rows[0]["position"] else None), rows[0]["batch_seq"]

    def reads(self) -> int:
        """How many reads the connector made, including those that found nothing new."""
        rows = self.query("SELECT reads FROM offsets WHERE id = 1")
        return rows[0]["reads"] if rows else 0

    def metrics(self) -> ConnectorMetrics:
        """The current counters."""
        rows = self.query("SELECT * FROM metrics WHERE id = 1")
        if not rows:
            return ConnectorMetrics()
        row = rows[0]
        return ConnectorMetrics(
            total_records=row["total_records"],
            total_bytes=row["total_bytes"],
            buffered_records=row["buffered_records"],
            end_of_input=bool(row["end_of_input"]),
            num_parse_errors=row["num_parse_errors"],
            num_transport_errors=row["num_transport_errors"],
            fatal_error=row["fatal_error"],
            consecutive_failures=row["consecutive_failures"],
        )

    def parse_errors(self) -> list[dict[str, Any]]:
        """The last parse errors kept (oldest first)."""
        rows = self.query('SELECT timestamp, "index", message FROM parse_errors ORDER BY id')
        return [dict(row) for row in rows]

    def hourly_stats(self) -> list[dict[str, Any]]:
        """Records, bytes and errors per UTC hour, oldest first."""
        return [dict(row) for row in self.query("SELECT * FROM hourly_stats ORDER BY hour")]

    def commit_batch(self, batch: BatchCommit) -> None:
        """Store one batch's position, counters, parse errors and hourly stats in one transaction."""
        now = utc_now()
        with self.transaction() as conn:
            conn.execute(
                "UPDATE offsets SET position = ?, batch_seq = ?, updated_at = ?, reads = reads + 1 WHERE id = 1",
                (json.dumps(batch.position), batch.batch_seq, now),
            )
            conn.execute(
                "UPDATE metrics SET total_records = total_records + ?, total_bytes = total_bytes + ?, "
                "buffered_records = ?, end_of_input = ?, num_parse_errors = num_parse_errors + ?, "
                "num_transport_errors = num_transport_errors + ?, fatal_error = ?, consecutive_failures = 0 "
                "WHERE id = 1",
                (
                    batch.records,
                    batch.bytes,
                    batch.buffered_records,
                    int(batch.end_of_input),
                    len(batch.parse_errors),
                    batch.transport_errors,
                    batch.fatal_error,
                ),
            )
            self._add_hourly(conn, batch.records, batch.bytes, len(batch.parse_errors), batch.transport_errors)
            if batch.parse_errors:
                conn.executemany(
                    'INSERT INTO parse_errors (timestamp, "index", message) VALUES (?, ?, ?)',
                    [(now, i, self.redact(message)) for i, message in batch.parse_errors[-MAX_PARSE_ERRORS_KEPT:]],
                )
                conn.execute(
                    "DELETE FROM parse_errors WHERE id NOT IN "
                    f"(SELECT id FROM parse_errors ORDER BY id DESC LIMIT {MAX_PARSE_ERRORS_KEPT})"
                )

    def record_transport_error(self, message: str, fatal: bool = False) -> None:
        """Count a transport error that did not stop the read (and keep it as the fatal error with ``fatal``)."""
        message = self.redact(message)
        with self.transaction() as conn:
            conn.execute(
                "UPDATE metrics SET num_transport_errors = num_transport_errors + 1, "
                "fatal_error = CASE WHEN ? THEN ? ELSE fatal_error END WHERE id = 1",
                (int(fatal), message),
            )
            self._add_hourly(conn, 0, 0, 0, 1)
            self._event(conn, "transport_error", message)

    def record_failed_read(self, message: str, fatal_after: int) -> str | None:
        """Count a read that failed (transport, processor or sink error): one more transport error and one more
        consecutive failure. The ``fatal_after``-th failure in a row becomes the connector's fatal error, which
        stops its ingestion until it is started again; returns that fatal error, else ``None``."""
        message = self.redact(message)
        with self.transaction() as conn:
            conn.execute(
                "UPDATE metrics SET num_transport_errors = num_transport_errors + 1, "
                "consecutive_failures = consecutive_failures + 1 WHERE id = 1"
            )
            conn.execute("UPDATE offsets SET reads = reads + 1 WHERE id = 1")
            self._add_hourly(conn, 0, 0, 0, 1)
            self._event(conn, "transport_error", message)
            failures = conn.execute("SELECT consecutive_failures FROM metrics WHERE id = 1").fetchone()[0]
            if failures < fatal_after:
                return None
            fatal = f"stopped after {failures} consecutive failed reads; last: {message}"
            conn.execute("UPDATE metrics SET fatal_error = ? WHERE id = 1", (fatal,))
            self._event(conn, "fatal_error", fatal)
            return fatal

    def clear_fatal_error(self) -> None:
        """Forget the fatal error and the failures before it, so that a restarted connector tries again."""
        if self.metrics() == replace(self.metrics(), fatal_error=None, consecutive_failures=0):
            return
        with self.transaction() as conn:
            conn.execute("UPDATE metrics SET fatal_error = NULL, consecutive_failures = 0 WHERE id = 1")

    def update_progress(self, buffered_records: int, end_of_input: bool) -> None:
        """Refresh ``buffered_records`` and ``end_of_input`` when a read found nothing new."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE metrics SET buffered_records = ?, end_of_input = ?, consecutive_failures = 0 WHERE id = 1",
                (buffered_records, int(end_of_input)),
            )
            conn.execute("UPDATE offsets SET reads = reads + 1 WHERE id = 1")

    @staticmethod
    def _add_hourly(conn: sqlite3.Connection, records: int, nbytes: int, parse: int, transport: int) -> None:
        conn.execute(
            "INSERT INTO hourly_stats VALUES (?, ?, ?, ?, ?) ON CONFLICT (hour) DO UPDATE SET "
            "records = records + excluded.records, bytes = bytes + excluded.bytes, "
            "parse_errors = parse_errors + excluded.parse_errors, "
            "transport_errors = transport_errors + excluded.transport_errors",
            (current_hour(), records, nbytes, parse, transport),
        )


#: Everything a sensor tick reads of a connector database, in one statement.
SNAPSHOT_QUERY = (
    "SELECT (SELECT value FROM runtime WHERE key = 'state'), "
    "(SELECT value FROM runtime WHERE key = 'start_after_released'), "
    "o.position, o.batch_seq, o.reads, m.total_records, m.total_bytes, m.buffered_records, m.end_of_input, "
    "m.num_parse_errors, m.num_transport_errors, m.fatal_error, m.consecutive_failures, "
    "(SELECT user_version FROM pragma_user_version) "
    "FROM offsets AS o, metrics AS m WHERE o.id = 1 AND m.id = 1"
)


@dataclass(slots=True)
class ConnectorSnapshot:
    """A connector database as one read saw it: what a sensor tick needs (run state, ``start_after`` release,
    metrics, read counter, position), read in one query through a read-only connection that is closed at once.

    It answers the readers of :class:`ConnectorState` that the orchestration rules use, so the same rules run on
    it; it cannot write. An absent database (no id yet, or no file) answers the initial state.
    """

    starts_paused: bool
    exists: bool = False
    stored_state: str | None = None
    start_after_released: bool = False
    counters: ConnectorMetrics = field(default_factory=ConnectorMetrics)
    read_count: int = 0
    position_json: str | None = None
    batch_seq: int = 0

    @classmethod
    def read(cls, path: Path | str | None, starts_paused: bool) -> ConnectorSnapshot:
        """Read the database at ``path`` read-only (it is never created, migrated or written)."""
        if path is None:
            return cls(starts_paused)
        try:
            conn = sqlite3.connect(
                f"file:{urllib.parse.quote(str(path))}?mode=ro",
                uri=True,
                isolation_level=None,
                timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            if not os.path.exists(path):
                return cls(starts_paused)
            raise StateError(f"cannot open state database {path}: {exc}") from exc
        try:
            row = conn.execute(SNAPSHOT_QUERY).fetchone()
        except sqlite3.OperationalError:
            row = None  # an older schema: read below through the usual connection, which brings it up to date
        except sqlite3.Error as exc:
            raise StateError(f"cannot read state database {path}: {exc}") from exc
        finally:
            conn.close()
        if row is None:
            return cls._through_state(Path(path), starts_paused)
        if row[13] > len(CONNECTOR_MIGRATIONS):
            raise StateError(
                f"{path} has schema version {row[13]}, newer than this program knows "
                f"({len(CONNECTOR_MIGRATIONS)}); upgrade dagster-connectors"
            )
        return cls(
            starts_paused,
            exists=True,
            stored_state=row[0],
            start_after_released=row[1] == "true",
            counters=ConnectorMetrics(
                total_records=row[5],
                total_bytes=row[6],
                buffered_records=row[7],
                end_of_input=bool(row[8]),
                num_parse_errors=row[9],
                num_transport_errors=row[10],
                fatal_error=row[11],
                consecutive_failures=row[12],
            ),
            read_count=row[4],
            position_json=row[2],
            batch_seq=row[3],
        )

    @classmethod
    def _through_state(cls, path: Path, starts_paused: bool) -> ConnectorSnapshot:
        """The snapshot of a database of an older schema, read as :class:`ConnectorState` reads it."""
        state = SQLiteConnectorState(path, create=False, starts_paused=starts_paused)
        try:
            raw = state.query("SELECT position, batch_seq FROM offsets WHERE id = 1")
            return cls(
                starts_paused,
                exists=state.exists,
                stored_state=state.runtime("state"),
                start_after_released=state.start_after_released,
                counters=state.metrics(),
                read_count=state.reads(),
                position_json=raw[0]["position"] if raw else None,
                batch_seq=raw[0]["batch_seq"] if raw else 0,
            )
        finally:
            state.close()

    @property
    def run_state(self) -> RunState:
        """The connector's own state (before the database exists: Paused when it starts paused)."""
        if self.stored_state is not None:
            return RunState(self.stored_state)
        return RunState.PAUSED if self.starts_paused else RunState.RUNNING

    @property
    def running(self) -> bool:
        """Whether the connector's own state is ``Running``."""
        return self.run_state is RunState.RUNNING

    def metrics(self) -> ConnectorMetrics:
        """The counters as read."""
        return self.counters

    def reads(self) -> int:
        """How many reads the connector had made."""
        return self.read_count

    def position(self) -> tuple[Any, int]:
        """The stored source position (JSON) and batch sequence number."""
        return (json.loads(self.position_json) if self.position_json else None), self.batch_seq

    def open_if_created(self) -> bool:
        """Whether the database existed when it was read (a snapshot is not refreshed)."""
        return self.exists

    def close(self) -> None:
        """Nothing to close: the connection closed after the read."""


# ------------------------------------------------------------------------------------------------- store
class SQLiteStateStore(StateStore):
    """Finds the SQLite state databases of a project under one ``state_dir``; every database it opens redacts its
    messages with ``redact`` before storing them."""

    kind = "sqlite"

    def __init__(self, state_dir: Path | str, redact: Callable[[str], str] = str):
        self.state_dir = Path(state_dir)
        self.redact = redact

    def pipeline_path(self, pipeline: str) -> Path:
        """``{state_dir}/{pipeline}/pipeline.sqlite``."""
        return self.state_dir / pipeline / "pipeline.sqlite"

    def connector_path(self, pipeline: str, connector_id: str) -> Path:
        """``{state_dir}/{pipeline}/connector/{connector_id}/sqlite.db``."""
        return self.state_dir / pipeline / "connector" / connector_id / "sqlite.db"

    def connector_snapshots(
        self, pipeline: str, connectors: dict[tuple[str, str], tuple[str | None, bool]]
    ) -> dict[tuple[str, str], ConnectorSnapshot]:
        """Every connector database read once, read-only, one file after the other."""
        return {key: self.connector_snapshot(pipeline, *entry) for key, entry in connectors.items()}

    def connector_snapshot(self, pipeline: str, connector_id: str | None, starts_paused: bool) -> ConnectorSnapshot:
        """A connector database read once, read-only (:class:`ConnectorSnapshot`; the initial state without an id
        or a file)."""
        if connector_id is None:
            return ConnectorSnapshot(starts_paused)
        return ConnectorSnapshot.read(f"{self.state_dir}/{pipeline}/connector/{connector_id}/sqlite.db", starts_paused)

    def pipeline(
        self,
        pipeline: str,
        create: bool = True,
        prerequisites: Sequence[tuple[str, str, str | None]] = (),
        read_only: bool = False,
    ) -> SQLitePipelineState:
        """The pipeline database (created when needed, unless ``create`` is false; with ``read_only``, opened
        read-only when it exists and never created)."""
        return SQLitePipelineState(
            self.pipeline_path(pipeline),
            read_only=read_only,
            create=create and not read_only,
            prerequisites=prerequisites,
            redact=self.redact,
        )

    def connector(
        self, pipeline: str, connector_id: str | None, create: bool = True, starts_paused: bool = False
    ) -> SQLiteConnectorState:
        """A connector database (created when needed, unless ``create`` is false or it has no id yet)."""
        path = self.connector_path(pipeline, connector_id) if connector_id else None
        return SQLiteConnectorState(path, create=create, starts_paused=starts_paused, redact=self.redact)


# ------------------------------------------------------------------------------------------------ backups
#: How long a snapshot holds the write lock waiting for readers of an older snapshot to let its checkpoint take
#: every WAL frame (well below the writers' busy timeout); then it gives up and the next check retries.
SNAPSHOT_CHECKPOINT_TIMEOUT_SECONDS = 5.0
#: How much of a private file (a snapshot, a downloaded backup) an integrity check maps into memory.
CHECK_MMAP_BYTES = 1 << 30


def _connect(path: Path, immutable: bool = False) -> sqlite3.Connection:
    """A connection of the backup steps: to an existing file (never created), or immutable (no lock, no side file:
    for a snapshot or a downloaded backup that nobody else writes)."""
    uri = f"file:{path}?immutable=1" if immutable else f"file:{path}?mode=rw"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def _text_columns(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(table, column) of every column of text affinity (or no declared type) of the database's own tables."""
    tables = [
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")
    ]
    return [
        (table, column[1])
        for table in tables
        for column in conn.execute(f'PRAGMA table_info("{table}")')
        if not column[2] or any(word in column[2].upper() for word in ("CHAR", "CLOB", "TEXT"))
    ]


@contextlib.contextmanager
def wal_snapshot(path: Path, timeout_seconds: float = SNAPSHOT_CHECKPOINT_TIMEOUT_SECONDS) -> Iterator[int]:
    """A consistent snapshot of a live database as its main file (DESIGN §6): yields the snapshot's size; while the
    block runs, the first ``size`` bytes of ``path`` are the whole database as of one instant and do not change,
    whatever other connections and processes write meanwhile.

    One connection takes the write lock (``BEGIN IMMEDIATE``: writers wait, readers go on); a second one runs
    ``wal_checkpoint(PASSIVE)`` (once before the lock too, so that little is left to do under it) until every WAL
    frame is in the main file (a reader of an older snapshot may hold some back for a moment), opens a read
    transaction, and the write lock is released: writers then append to the WAL again, and while that read
    transaction lasts no checkpoint writes into the main file (it holds the frames that the reader's snapshot reads
    from the main file). Writers wait only for the checkpoint. A database in rollback-journal mode gets the same
    guarantee from the read transaction's ``SHARED`` lock.

    Read the main file from **another process** (``cp``): closing any descriptor of the file in this process would
    drop the POSIX locks that every SQLite connection of this process holds on it (SQLite's "How To Corrupt", 2.2).
    """
    try:
        writer, reader = _connect(path), _connect(path)
    except sqlite3.Error as exc:
        raise StateError(f"cannot open {path} for a snapshot: {exc}") from exc
    try:
        reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # most frames, before writers have to wait
        writer.execute("BEGIN IMMEDIATE")
        try:
            deadline = time.monotonic() + timeout_seconds
            while True:
                busy, frames, copied = reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if not busy and frames == copied:  # (0, -1, -1): not in WAL mode
                    break
                if time.monotonic() > deadline:
                    raise StateError(
                        f"cannot snapshot {path}: {copied} of {frames} WAL frames checkpointed after "
                        f"{timeout_seconds:g} s (a long read holds the rest back); retry later"
                    )
                time.sleep(0.002)
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the read transaction starts here
            size = reader.execute("PRAGMA page_size").fetchone()[0] * reader.execute("PRAGMA page_count").fetchone()[0]
        finally:
            writer.execute("ROLLBACK")
        try:
            yield size
        finally:
            reader.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StateError(f"cannot snapshot {path}: {exc}") from exc
    finally:
        writer.close()
        reader.close()


def integrity_problems(path: Path, quick: bool = False, max_errors: int = 20) -> list[str]:
    """``PRAGMA integrity_check`` (``quick_check`` with ``quick``) of a database file nobody writes (a snapshot, a
    downloaded backup: a private file, so it may be memory-mapped), opened immutable; an empty list when it is
    sound."""
    try:
        conn = _connect(path, immutable=True)
        try:
            conn.execute(f"PRAGMA mmap_size = {CHECK_MMAP_BYTES}")  # pages read in place: ~20% faster
            check = "quick_check" if quick else "integrity_check"
            rows = [r[0] for r in conn.execute(f"PRAGMA {check}({int(max_errors)})").fetchall()]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return [f"not a readable SQLite database: {exc}"]
    return [] if rows == ["ok"] else rows


def stored_ids(path: Path) -> dict[str, Any]:
    """The ids a database file keeps (read immutable, nothing written): ``{"kind": "connector", "pipeline_id",
    "connector_id", "name", "type"}`` from a connector's identity row, or ``{"kind": "pipeline", "pipeline_id",
    "connectors": {"table.connector": id}}`` from a pipeline database; :class:`StateError` for anything else."""
    try:
        conn = _connect(path, immutable=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "identity" in tables:
                row = conn.execute("SELECT pipeline_id, connector_id, name, type FROM identity").fetchone()
                if row is None:
                    raise StateError(f"{path} has no identity row")
                return dict(zip(("pipeline_id", "connector_id", "name", "type"), row, strict=True)) | {
                    "kind": "connector"
                }
            if "app_state" in tables:
                found = conn.execute("SELECT value FROM app_state WHERE key = 'pipeline_id'").fetchone()
                rows = conn.execute("SELECT table_name, connector_name, connector_id FROM connectors").fetchall()
                connectors = {f"{table}.{name}": connector_id for table, name, connector_id in rows}
                return {"kind": "pipeline", "pipeline_id": found[0] if found else None, "connectors": connectors}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StateError(f"cannot read the ids of {path}: {exc}") from exc
    raise StateError(f"{path} is neither a pipeline nor a connector state database")


def replace_database(target: Path, source: Path) -> None:
    """Make the existing database ``target`` hold the content of the database file ``source``, atomically for
    every connection to it, in this process or another (SQLite's backup API writes it as one transaction of
    ``target``; a file renamed over a database that others have open would not be seen by them, and its stale WAL
    would be replayed onto it)."""
    try:
        src, dst = _connect(source, immutable=True), _connect(target)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
    except sqlite3.Error as exc:
        raise StateError(f"cannot replace {target} with {source}: {exc}") from exc
