"""Pipeline and connector state in PostgreSQL: the second backend of :mod:`connector_core.state`.

A pipeline with ``state: {kind: postgres, connection: NAME, schema: connectors}`` keeps its state in tables of one
PostgreSQL schema, so that every process that reaches the database (a code server, a daemon, each run worker on
another machine) sees the same lifecycle status, positions and counters. The tables are the SQLite databases'
tables with the same columns, keyed by the pipeline name (pipeline tables) or the connector id (connector
tables); events are ``pipeline_events`` and ``connector_events``.

The transactions are the SQLite ones: a status and its event commit together; SQLite's ``BEGIN IMMEDIATE``
becomes a row lock (``SELECT ... FOR UPDATE``) on the pipeline's row of ``pipelines`` or the connector's row of
``offsets`` taken first in every write transaction, so two writers of one pipeline or connector never interleave
and writers of different ones never wait for each other. The lifecycle lock is a session-level advisory lock,
released by PostgreSQL when its process dies. The schema is created on the first write (under an advisory lock);
a reader of a database without it answers the initial state and creates nothing. A sensor tick reads all
connectors of a pipeline in one query (:meth:`PostgresStateStore.connector_snapshots`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from connector_core.state import (
    MAX_PARSE_ERRORS_KEPT,
    BatchCommit,
    ConnectorMetrics,
    ConnectorSnapshot,
    ConnectorState,
    PipelineState,
    StateError,
    StateObject,
    StateStore,
    Transaction,
    current_hour,
    utc_now,
)
from connector_core.vocabulary import RunState

#: The schema of every version, in order; ``state_version`` holds how many were applied.
MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE state_version (version INTEGER NOT NULL);
    INSERT INTO state_version VALUES (0);
    CREATE TABLE pipelines (pipeline TEXT PRIMARY KEY);
    CREATE TABLE app_state (pipeline TEXT NOT NULL, key TEXT NOT NULL, value TEXT, PRIMARY KEY (pipeline, key));
    CREATE TABLE app_config (
        pipeline TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (pipeline, key));
    CREATE TABLE prerequisites (
        pipeline TEXT NOT NULL, id TEXT NOT NULL, title TEXT NOT NULL, url TEXT, done INTEGER NOT NULL DEFAULT 0,
        done_at TEXT, ordinal BIGSERIAL, PRIMARY KEY (pipeline, id));
    CREATE TABLE connectors (
        pipeline TEXT NOT NULL, table_name TEXT NOT NULL, connector_name TEXT NOT NULL,
        connector_id TEXT NOT NULL UNIQUE, PRIMARY KEY (pipeline, table_name, connector_name));
    CREATE TABLE pipeline_events (
        id BIGSERIAL PRIMARY KEY, pipeline TEXT NOT NULL, timestamp TEXT NOT NULL, procedure TEXT NOT NULL,
        from_status TEXT, to_status TEXT, response_code TEXT, message TEXT, source TEXT);
    CREATE INDEX pipeline_events_by_pipeline ON pipeline_events (pipeline, id);
    CREATE TABLE identity (
        connector_id TEXT PRIMARY KEY, pipeline_id TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}', tags TEXT NOT NULL DEFAULT '[]');
    CREATE TABLE runtime (connector_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT, PRIMARY KEY (connector_id, key));
    CREATE TABLE offsets (
        connector_id TEXT PRIMARY KEY, position TEXT, batch_seq BIGINT NOT NULL DEFAULT 0, updated_at TEXT,
        reads BIGINT NOT NULL DEFAULT 0);
    CREATE TABLE metrics (
        connector_id TEXT PRIMARY KEY, total_records BIGINT NOT NULL DEFAULT 0,
        total_bytes BIGINT NOT NULL DEFAULT 0, buffered_records BIGINT NOT NULL DEFAULT 0,
        end_of_input INTEGER NOT NULL DEFAULT 0, num_parse_errors BIGINT NOT NULL DEFAULT 0,
        num_transport_errors BIGINT NOT NULL DEFAULT 0, fatal_error TEXT,
        consecutive_failures INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE parse_errors (
        id BIGSERIAL PRIMARY KEY, connector_id TEXT NOT NULL, timestamp TEXT NOT NULL, "index" BIGINT NOT NULL,
        message TEXT NOT NULL);
    CREATE INDEX parse_errors_by_connector ON parse_errors (connector_id, id);
    CREATE TABLE hourly_stats (
        connector_id TEXT NOT NULL, hour TEXT NOT NULL, records BIGINT NOT NULL DEFAULT 0,
        bytes BIGINT NOT NULL DEFAULT 0, parse_errors BIGINT NOT NULL DEFAULT 0,
        transport_errors BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (connector_id, hour));
    CREATE TABLE connector_events (
        id BIGSERIAL PRIMARY KEY, connector_id TEXT NOT NULL, timestamp TEXT NOT NULL, kind TEXT NOT NULL,
        message TEXT, source TEXT NOT NULL);
    CREATE INDEX connector_events_by_connector ON connector_events (connector_id, id);
    """,
)

#: Everything a sensor tick reads of every connector of a pipeline, in one statement.
SNAPSHOTS_QUERY = """
    SELECT o.connector_id, rs.value, rr.value, o.position, o.batch_seq, o.reads, m.total_records, m.total_bytes,
           m.buffered_records, m.end_of_input, m.num_parse_errors, m.num_transport_errors, m.fatal_error,
           m.consecutive_failures
    FROM offsets o JOIN metrics m ON m.connector_id = o.connector_id
    LEFT JOIN runtime rs ON rs.connector_id = o.connector_id AND rs.key = 'state'
    LEFT JOIN runtime rr ON rr.connector_id = o.connector_id AND rr.key = 'start_after_released'
    WHERE o.connector_id = ANY(%s)
"""

PIPELINE_EVENT_COLUMNS = "id, timestamp, procedure, from_status, to_status, response_code, message, source"
CONNECTOR_EVENT_COLUMNS = "id, timestamp, kind, message, source"


class PostgresStateStore(StateStore):
    """The state of a project's pipelines in one PostgreSQL schema.

    One connection per thread (a psycopg connection runs one transaction at a time), opened on first use, in
    autocommit mode: every write runs inside an explicit transaction; a read outside one sees the latest commit.
    """

    kind = "postgres"

    def __init__(self, dsn: str, schema: str = "connectors", redact: Callable[[str], str] = str):
        self.dsn = dsn
        self.schema = schema
        self.redact = redact
        self._local = threading.local()
        self._connections: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._schema_ready = False

    # -- connections and schema
    def connection(self) -> psycopg.Connection[Any]:
        """This thread's connection (a forked child opens its own)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or getattr(self._local, "pid", None) != os.getpid():
            conn = self._connect()
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._lock:
                self._connections.append(conn)
        return conn

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, application_name="dagster-connectors state")
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            return conn
        except psycopg.Error as exc:
            raise StateError(
                self.redact(f"cannot connect to the PostgreSQL state (schema {self.schema}): {exc}")
            ) from exc

    def query(self, statement: str, params: Sequence[Any] = (), as_dicts: bool = False) -> list[Any]:
        """Rows of a read-only statement (none while the schema does not exist)."""
        if not self.schema_exists():
            return []
        try:
            with self.connection().cursor(row_factory=dict_row if as_dicts else None) as cursor:  # type: ignore[arg-type]
                return cursor.execute(statement, params).fetchall()
        except psycopg.Error as exc:
            raise StateError(self.redact(f"cannot read the PostgreSQL state (schema {self.schema}): {exc}")) from exc

    def schema_exists(self) -> bool:
        """Whether the schema's tables exist (a reader never creates them)."""
        if not self._schema_ready:
            try:
                row = self.connection().execute("SELECT to_regclass(%s)", (f"{self.schema}.state_version",)).fetchone()
            except psycopg.Error as exc:
                raise StateError(self.redact(f"cannot read the PostgreSQL state: {exc}")) from exc
            if row is not None and row[0] is not None:
                self._check_version()
                self._schema_ready = True
        return self._schema_ready

    def _check_version(self) -> None:
        version = self.connection().execute("SELECT version FROM state_version").fetchone()
        if version is not None and version[0] > len(MIGRATIONS):
            raise StateError(
                f"the PostgreSQL state schema {self.schema} has version {version[0]}, newer than this program knows "
                f"({len(MIGRATIONS)}); upgrade dagster-connectors"
            )

    def ensure_schema(self) -> None:
        """Create or bring up to date the schema and its tables (once, under an advisory lock)."""
        if self.schema_exists() and self._version() == len(MIGRATIONS):
            return
        conn = self.connection()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"schema:{self.schema}",))
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
                exists = conn.execute("SELECT to_regclass(%s)", (f"{self.schema}.state_version",)).fetchone()
                version = conn.execute("SELECT version FROM state_version").fetchone()[0] if exists[0] else 0  # type: ignore[index]
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    for statement in filter(str.strip, script.split(";")):
                        conn.execute(statement)  # type: ignore[call-overload]
                    conn.execute("UPDATE state_version SET version = %s", (number,))
        except psycopg.Error as exc:
            raise StateError(self.redact(f"cannot create the PostgreSQL state schema {self.schema}: {exc}")) from exc
        self._schema_ready = False
        self.schema_exists()

    def _version(self) -> int:
        row = self.connection().execute("SELECT version FROM state_version").fetchone()
        return int(row[0]) if row else 0

    @contextlib.contextmanager
    def transaction(self, lock_statement: str, key: str) -> Iterator[psycopg.Connection[Any]]:
        """A write transaction that first locks the row ``lock_statement`` selects for ``key``."""
        conn = self.connection()
        try:
            with conn.transaction():
                conn.execute(lock_statement, (key,))  # type: ignore[call-overload]
                yield conn
        except psycopg.Error as exc:
            raise StateError(self.redact(f"cannot write the PostgreSQL state (schema {self.schema}): {exc}")) from exc

    def writable(self, table: str) -> bool:
        """Whether this process may write ``table`` (may create the schema, while it does not exist)."""
        try:
            conn = self.connection()
            if not self.schema_exists():
                row = conn.execute("SELECT has_database_privilege(current_database(), 'CREATE')").fetchone()
            else:
                row = conn.execute("SELECT has_table_privilege(%s, 'INSERT, UPDATE')", (f"{self.schema}.{table}",))
                row = row.fetchone()
            return bool(row and row[0])
        except (StateError, psycopg.Error):
            return False

    # -- the interface
    def pipeline(
        self,
        pipeline: str,
        create: bool = True,
        prerequisites: Sequence[tuple[str, str, str | None]] = (),
        read_only: bool = False,
    ) -> PostgresPipelineState:
        """The pipeline's state (created when needed, unless ``create`` is false; ``read_only``: never written)."""
        return PostgresPipelineState(self, pipeline, read_only, create and not read_only, prerequisites)

    def connector(
        self, pipeline: str, connector_id: str | None, create: bool = True, starts_paused: bool = False
    ) -> PostgresConnectorState:
        """A connector's state (created when needed, unless ``create`` is false or it has no id yet)."""
        return PostgresConnectorState(self, connector_id, create and connector_id is not None, starts_paused)

    def connector_snapshots(
        self, pipeline: str, connectors: dict[tuple[str, str], tuple[str | None, bool]]
    ) -> dict[tuple[str, str], ConnectorSnapshot]:
        """Every connector of the pipeline read in one query."""
        ids = [connector_id for connector_id, _ in connectors.values() if connector_id is not None]
        rows = {row[0]: row for row in self.query(SNAPSHOTS_QUERY, (ids,))} if ids else {}
        snapshots = {}
        for key, (connector_id, starts_paused) in connectors.items():
            row = rows.get(connector_id)
            snapshots[key] = ConnectorSnapshot(starts_paused) if row is None else _snapshot(row, starts_paused)
        return snapshots

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


def _snapshot(row: Sequence[Any], starts_paused: bool) -> ConnectorSnapshot:
    return ConnectorSnapshot(
        starts_paused,
        exists=True,
        stored_state=row[1],
        start_after_released=row[2] == "true",
        position_json=row[3],
        batch_seq=row[4],
        read_count=row[5],
        counters=ConnectorMetrics(
            total_records=row[6],
            total_bytes=row[7],
            buffered_records=row[8],
            end_of_input=bool(row[9]),
            num_parse_errors=row[10],
            num_transport_errors=row[11],
            fatal_error=row[12],
            consecutive_failures=row[13],
        ),
    )


class PostgresStateObject(StateObject):
    """What a pipeline's and a connector's PostgreSQL state share: the store (it owns the connections), whether
    their rows exist, creation on open unless ``create`` is false."""

    def __init__(self, store: PostgresStateStore, create: bool):
        self.store = store
        self.redact = store.redact
        self._exists = False
        if create:
            self.create()
        else:
            self.open_if_created()

    @property
    def exists(self) -> bool:
        """Whether the rows exist (they existed, or a write created them)."""
        return self._exists

    def close(self) -> None:
        """Nothing to close: the store owns the connections."""


# ---------------------------------------------------------------------------------------------- pipelines
class PostgresPipelineState(PostgresStateObject, PipelineState):
    """A pipeline's state in PostgreSQL (rows keyed by the pipeline's name)."""

    def __init__(
        self,
        store: PostgresStateStore,
        pipeline: str,
        read_only: bool = False,
        create: bool = True,
        prerequisites: Sequence[tuple[str, str, str | None]] = (),
    ):
        self.pipeline = pipeline
        self.read_only = read_only
        self.declared_prerequisites = list(prerequisites)
        self._app_state: dict[str, str] | None = None  #: ``app_state`` as read once, when opened read-only
        super().__init__(store, create)

    @property
    def location(self) -> str:
        """The schema and pipeline."""
        return f"PostgreSQL schema {self.store.schema}, pipeline {self.pipeline}"

    def open_if_created(self) -> bool:
        """Whether the pipeline's row exists now."""
        if not self._exists:
            self._exists = bool(self.store.query("SELECT 1 FROM pipelines WHERE pipeline = %s", (self.pipeline,)))
        return self._exists

    def _ensure_row(self) -> None:
        if self.read_only:
            raise StateError(f"the state of pipeline {self.pipeline} was opened read-only; it cannot be written")
        if not self._exists:
            self.store.ensure_schema()
            with self.store.transaction("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", self.pipeline) as conn:
                conn.execute("INSERT INTO pipelines VALUES (%s) ON CONFLICT DO NOTHING", (self.pipeline,))
            self._exists = True

    def create(self) -> None:
        """Create the pipeline's row with its identity, first status and prerequisites."""
        self._ensure_row()
        self.initialize()

    def initialize(self, prerequisites: Sequence[tuple[str, str, str | None]] | None = None) -> None:
        """Create the identity and first status once; add new prerequisites, keep old ones (writes nothing when
        all of that is stored already)."""
        declared = self.declared_prerequisites if prerequisites is None else list(prerequisites)
        stored = [tuple(r) for r in self._rows("SELECT id, title, url FROM prerequisites WHERE pipeline = %s")]
        if self.get("pipeline_id") and set(declared) <= set(stored):
            return
        with self.transaction() as conn:
            for key, value in {"pipeline_id": str(uuid.uuid4()), **self.INITIAL, "created_at": utc_now()}.items():
                conn.execute(
                    "INSERT INTO app_state VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    (self.pipeline, key, str(value)),
                )
            for prerequisite_id, title, url in declared:
                conn.execute(
                    "INSERT INTO prerequisites (pipeline, id, title, url) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (pipeline, id) DO UPDATE SET title = excluded.title, url = excluded.url",
                    (self.pipeline, prerequisite_id, title, url),
                )

    def _rows(self, statement: str, extra: Sequence[Any] = (), as_dicts: bool = False) -> list[Any]:
        """Rows of a statement whose first parameter is the pipeline's name."""
        return self.store.query(statement, (self.pipeline, *extra), as_dicts)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A write transaction holding the pipeline's row lock (the first one creates the row)."""
        self._ensure_row()
        with self.store.transaction("SELECT 1 FROM pipelines WHERE pipeline = %s FOR UPDATE", self.pipeline) as conn:
            yield conn

    def writable(self) -> bool:
        """Whether this process may write the pipeline's state (schema and table privileges)."""
        return not self.read_only and self.store.writable("app_state")

    # -- app_state
    def get(self, key: str) -> str | None:
        """One value of ``app_state`` (the initial value while the pipeline has no row)."""
        if not self.open_if_created():
            return self.INITIAL.get(key)
        if self.read_only:  # a snapshot (a sensor tick): read once, then answered from memory
            if self._app_state is None:
                self._app_state = dict(self._rows("SELECT key, value FROM app_state WHERE pipeline = %s"))
            return self._app_state.get(key)
        rows = self._rows("SELECT value FROM app_state WHERE pipeline = %s AND key = %s", (key,))
        return rows[0][0] if rows else None

    def put(self, conn: Transaction, key: str, value: str) -> None:
        """Set one value of ``app_state`` inside a transaction."""
        conn.execute(
            "INSERT INTO app_state VALUES (%s, %s, %s) ON CONFLICT (pipeline, key) DO UPDATE SET value = excluded.value",
            (self.pipeline, key, str(value)),
        )

    # -- app_config
    def config(self) -> dict[str, Any]:
        """The stored configuration, key -> JSON value."""
        return {k: json.loads(v) for k, v in self._rows("SELECT key, value FROM app_config WHERE pipeline = %s")}

    def put_config(self, conn: Transaction, values: dict[str, Any]) -> None:
        """Store configuration values inside a transaction."""
        for key, value in values.items():
            conn.execute(
                "INSERT INTO app_config VALUES (%s, %s, %s) "
                "ON CONFLICT (pipeline, key) DO UPDATE SET value = excluded.value",
                (self.pipeline, key, json.dumps(value)),
            )

    def clear_config(self, conn: Transaction) -> None:
        """Forget every stored configuration value inside a transaction."""
        conn.execute("DELETE FROM app_config WHERE pipeline = %s", (self.pipeline,))

    # -- prerequisites
    def prerequisites(self) -> list[dict[str, Any]]:
        """Every prerequisite with its done flag (the declared ones, all open, while nothing is stored)."""
        rows = self._rows(
            "SELECT id, title, url, done, done_at FROM prerequisites WHERE pipeline = %s ORDER BY ordinal",
            as_dicts=True,
        )
        if not rows:
            return [
                {"id": i, "title": title, "url": url, "done": False, "done_at": None}
                for i, title, url in self.declared_prerequisites
            ]
        return [row | {"done": bool(row["done"])} for row in rows]

    def mark_prerequisites_done(self, conn: Transaction, ids: Sequence[str]) -> None:
        """Mark prerequisites done inside a transaction (the first time is kept as ``done_at``)."""
        for prerequisite_id in ids:
            conn.execute(
                "UPDATE prerequisites SET done = 1, done_at = COALESCE(done_at, %s) WHERE pipeline = %s AND id = %s",
                (utc_now(), self.pipeline, prerequisite_id),
            )

    def reset_prerequisites(self, conn: Transaction) -> None:
        """Mark every prerequisite open again inside a transaction."""
        conn.execute("UPDATE prerequisites SET done = 0, done_at = NULL WHERE pipeline = %s", (self.pipeline,))

    # -- events
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
        """Record one lifecycle event inside the transaction that made the change."""
        conn.execute(
            "INSERT INTO pipeline_events (pipeline, timestamp, procedure, from_status, to_status, response_code, "
            "message, source) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                self.pipeline,
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
        return self._rows(
            f"SELECT {PIPELINE_EVENT_COLUMNS} FROM pipeline_events WHERE pipeline = %s ORDER BY id DESC LIMIT %s",
            (limit,),
            as_dicts=True,
        )

    def last_event_id(self) -> int:
        """The id of the newest event of this pipeline (0 when there is none)."""
        rows = self._rows("SELECT coalesce(max(id), 0) FROM pipeline_events WHERE pipeline = %s")
        return int(rows[0][0]) if rows else 0

    # -- connectors
    def connector_ids(self) -> dict[tuple[str, str], str]:
        """The id of every connector that has one, by ``(table, connector)`` (one query)."""
        rows = self._rows("SELECT table_name, connector_name, connector_id FROM connectors WHERE pipeline = %s")
        return {(table, name): connector_id for table, name, connector_id in rows}

    def connector_id(self, table: str, connector: str) -> str | None:
        """The id of ``table.connector`` (``None`` until a write gave it one)."""
        rows = self._rows(
            "SELECT connector_id FROM connectors WHERE pipeline = %s AND table_name = %s AND connector_name = %s",
            (table, connector),
        )
        return rows[0][0] if rows else None

    def ensure_connector_id(self, table: str, connector: str) -> str:
        """The id of ``table.connector``, generated once and kept."""
        known = self.connector_id(table, connector)
        if known is not None:
            return known
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO connectors VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (self.pipeline, table, connector, str(uuid.uuid4())),
            )
            return conn.execute(
                "SELECT connector_id FROM connectors WHERE pipeline = %s AND table_name = %s AND connector_name = %s",
                (self.pipeline, table, connector),
            ).fetchone()[0]

    @contextlib.contextmanager
    def procedure_lock(self, timeout_seconds: float = 60) -> Iterator[None]:
        """Serialize lifecycle procedures of this pipeline across processes and machines: a session-level advisory
        lock on a connection of its own (PostgreSQL releases it when the process dies)."""
        key = f"procedure:{self.store.schema}:{self.pipeline}"
        conn = self.store._connect()
        try:
            deadline = time.monotonic() + timeout_seconds
            while not conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()[0]:  # type: ignore[index]
                if time.monotonic() > deadline:
                    raise StateError(
                        f"another procedure holds the lock of pipeline {self.pipeline} for more than {timeout_seconds}s"
                    )
                time.sleep(0.01)
            yield
        finally:
            conn.close()  # ends the session: the lock goes with it


# --------------------------------------------------------------------------------------------- connectors
class PostgresConnectorState(PostgresStateObject, ConnectorState):
    """A connector's state in PostgreSQL (rows keyed by the connector's id)."""

    def __init__(
        self, store: PostgresStateStore, connector_id: str | None, create: bool = True, starts_paused: bool = False
    ):
        self.connector_id = connector_id
        self.starts_paused = starts_paused
        super().__init__(store, create)

    @property
    def location(self) -> str:
        """The schema and connector id."""
        return f"PostgreSQL schema {self.store.schema}, connector {self.connector_id}"

    def writable(self) -> bool:
        """Whether this process may write the connector's state."""
        return self.store.writable("offsets")

    def open_if_created(self) -> bool:
        """Whether the connector's rows exist now."""
        if not self._exists and self.connector_id is not None:
            self._exists = bool(self._rows("SELECT 1 FROM offsets WHERE connector_id = %s"))
        return self._exists

    def create(self) -> None:
        """Create the connector's offsets and metrics rows (nothing when they exist)."""
        if self._exists:
            return
        if self.connector_id is None:
            raise StateError("this connector has no id yet; its state cannot be created")
        self.store.ensure_schema()
        with self.store.transaction("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", self.connector_id) as conn:
            conn.execute("INSERT INTO offsets (connector_id) VALUES (%s) ON CONFLICT DO NOTHING", (self.connector_id,))
            conn.execute("INSERT INTO metrics (connector_id) VALUES (%s) ON CONFLICT DO NOTHING", (self.connector_id,))
        self._exists = True

    def _rows(self, statement: str, extra: Sequence[Any] = (), as_dicts: bool = False) -> list[Any]:
        """Rows of a statement whose first parameter is the connector's id (none without an id)."""
        if self.connector_id is None:
            return []
        return self.store.query(statement, (self.connector_id, *extra), as_dicts)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A write transaction holding the connector's row lock (the first one creates the rows)."""
        self.create()
        assert self.connector_id is not None
        with self.store.transaction(
            "SELECT 1 FROM offsets WHERE connector_id = %s FOR UPDATE", self.connector_id
        ) as conn:
            yield conn

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
        stored = self._rows("SELECT * FROM identity WHERE connector_id = %s")
        if stored and tuple(stored[0]) == identity and self.runtime("state") is not None:
            return
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO identity VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (connector_id) DO UPDATE SET "
                "name = excluded.name, type = excluded.type, metadata = excluded.metadata, tags = excluded.tags",
                identity,
            )
            first = RunState.PAUSED if starts_paused else RunState.RUNNING
            created = conn.execute(
                "INSERT INTO runtime VALUES (%s, 'state', %s) ON CONFLICT DO NOTHING", (connector_id, str(first))
            ).rowcount
            if created:
                self._event(conn, "created", f"connector {name} created")

    def identity(self) -> dict[str, Any]:
        """The identity row (ids, name, type, metadata, tags)."""
        rows = self._rows("SELECT * FROM identity WHERE connector_id = %s", as_dicts=True)
        if not rows:
            raise StateError(f"connector {self.connector_id} has no identity row")
        row = rows[0]
        return row | {"metadata": json.loads(row["metadata"]), "tags": json.loads(row["tags"])}

    def _event(self, conn: Transaction, kind: str, message: str) -> None:
        identity = conn.execute(
            "SELECT connector_id, pipeline_id, name, type FROM identity WHERE connector_id = %s", (self.connector_id,)
        ).fetchone()
        source = dict(zip(("connector_id", "pipeline_id", "name", "type"), identity, strict=True)) if identity else {}
        conn.execute(
            "INSERT INTO connector_events (connector_id, timestamp, kind, message, source) VALUES (%s, %s, %s, %s, %s)",
            (self.connector_id, utc_now(), kind, self.redact(message), json.dumps(source)),
        )

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest events first."""
        return self._rows(
            f"SELECT {CONNECTOR_EVENT_COLUMNS} FROM connector_events WHERE connector_id = %s ORDER BY id DESC LIMIT %s",
            (limit,),
            as_dicts=True,
        )

    def record_event(self, kind: str, message: str) -> None:
        """Record one event in a transaction of its own."""
        with self.transaction() as conn:
            self._event(conn, kind, message)

    def runtime(self, key: str) -> str | None:
        """One runtime value (``state``, ``start_after_released``)."""
        rows = self._rows("SELECT value FROM runtime WHERE connector_id = %s AND key = %s", (key,))
        return rows[0][0] if rows else None

    def _put_runtime(self, conn: Transaction, key: str, value: str) -> None:
        conn.execute(
            "INSERT INTO runtime VALUES (%s, %s, %s) ON CONFLICT (connector_id, key) DO UPDATE SET value = excluded.value",
            (self.connector_id, key, value),
        )

    def set_running(self, running: bool, reason: str, released_by_start_after: bool = False) -> bool:
        """Set ``Running``/``Paused``; returns whether it changed (the call is idempotent)."""
        new_state = str(RunState.RUNNING if running else RunState.PAUSED)
        with self.transaction() as conn:
            old = conn.execute(
                "SELECT value FROM runtime WHERE connector_id = %s AND key = 'state'", (self.connector_id,)
            ).fetchone()
            if released_by_start_after:
                self._put_runtime(conn, "start_after_released", "true")
            if old and old[0] == new_state:
                return False
            self._put_runtime(conn, "state", new_state)
            self._event(conn, new_state.lower(), reason)
            return True

    def position(self) -> tuple[Any, int]:
        """The stored source position (JSON) and batch sequence number."""
        rows = self._rows("SELECT position, batch_seq FROM offsets WHERE connector_id = %s")
        if not rows:
            return None, 0
        return (json.loads(rows[0][0]) if rows[0][0] else None), rows[0][1]

    def reads(self) -> int:
        """How many reads the connector made, including those that found nothing new."""
        rows = self._rows("SELECT reads FROM offsets WHERE connector_id = %s")
        return rows[0][0] if rows else 0

    def metrics(self) -> ConnectorMetrics:
        """The current counters."""
        rows = self._rows(
            "SELECT total_records, total_bytes, buffered_records, end_of_input, num_parse_errors, "
            "num_transport_errors, fatal_error, consecutive_failures FROM metrics WHERE connector_id = %s",
            as_dicts=True,
        )
        if not rows:
            return ConnectorMetrics()
        return ConnectorMetrics(**(rows[0] | {"end_of_input": bool(rows[0]["end_of_input"])}))

    def parse_errors(self) -> list[dict[str, Any]]:
        """The last parse errors kept (oldest first)."""
        return self._rows(
            'SELECT timestamp, "index", message FROM parse_errors WHERE connector_id = %s ORDER BY id', as_dicts=True
        )

    def hourly_stats(self) -> list[dict[str, Any]]:
        """Records, bytes and errors per UTC hour, oldest first."""
        return self._rows(
            "SELECT hour, records, bytes, parse_errors, transport_errors FROM hourly_stats WHERE connector_id = %s "
            "ORDER BY hour",
            as_dicts=True,
        )

    def commit_batch(self, batch: BatchCommit) -> None:
        """Store one batch's position, counters, parse errors and hourly stats in one transaction."""
        now = utc_now()
        with self.transaction() as conn:
            conn.execute(
                "UPDATE offsets SET position = %s, batch_seq = %s, updated_at = %s, reads = reads + 1 "
                "WHERE connector_id = %s",
                (json.dumps(batch.position), batch.batch_seq, now, self.connector_id),
            )
            conn.execute(
                "UPDATE metrics SET total_records = total_records + %s, total_bytes = total_bytes + %s, "
                "buffered_records = %s, end_of_input = %s, num_parse_errors = num_parse_errors + %s, "
                "num_transport_errors = num_transport_errors + %s, fatal_error = %s, consecutive_failures = 0 "
                "WHERE connector_id = %s",
                (
                    batch.records,
                    batch.bytes,
                    batch.buffered_records,
                    int(batch.end_of_input),
                    len(batch.parse_errors),
                    batch.transport_errors,
                    batch.fatal_error,
                    self.connector_id,
                ),
            )
            self._add_hourly(conn, batch.records, batch.bytes, len(batch.parse_errors), batch.transport_errors)
            if batch.parse_errors:
                with conn.cursor() as cursor:
                    cursor.executemany(
                        'INSERT INTO parse_errors (connector_id, timestamp, "index", message) VALUES (%s, %s, %s, %s)',
                        [
                            (self.connector_id, now, i, self.redact(message))
                            for i, message in batch.parse_errors[-MAX_PARSE_ERRORS_KEPT:]
                        ],
                    )
                conn.execute(
                    "DELETE FROM parse_errors WHERE connector_id = %s AND id NOT IN (SELECT id FROM parse_errors "
                    f"WHERE connector_id = %s ORDER BY id DESC LIMIT {MAX_PARSE_ERRORS_KEPT})",
                    (self.connector_id, self.connector_id),
                )

    def record_transport_error(self, message: str, fatal: bool = False) -> None:
        """Count a transport error that did not stop the read (and keep it as the fatal error with ``fatal``)."""
        message = self.redact(message)
        with self.transaction() as conn:
            conn.execute(
                "UPDATE metrics SET num_transport_errors = num_transport_errors + 1, "
                "fatal_error = CASE WHEN %s THEN %s ELSE fatal_error END WHERE connector_id = %s",
                (fatal, message, self.connector_id),
            )
            self._add_hourly(conn, 0, 0, 0, 1)
            self._event(conn, "transport_error", message)

    def record_failed_read(self, message: str, fatal_after: int) -> str | None:
        """Count a failed read; the ``fatal_after``-th failure in a row becomes the fatal error (returned)."""
        message = self.redact(message)
        with self.transaction() as conn:
            failures = conn.execute(
                "UPDATE metrics SET num_transport_errors = num_transport_errors + 1, "
                "consecutive_failures = consecutive_failures + 1 WHERE connector_id = %s "
                "RETURNING consecutive_failures",
                (self.connector_id,),
            ).fetchone()[0]
            conn.execute("UPDATE offsets SET reads = reads + 1 WHERE connector_id = %s", (self.connector_id,))
            self._add_hourly(conn, 0, 0, 0, 1)
            self._event(conn, "transport_error", message)
            if failures < fatal_after:
                return None
            fatal = f"stopped after {failures} consecutive failed reads; last: {message}"
            conn.execute("UPDATE metrics SET fatal_error = %s WHERE connector_id = %s", (fatal, self.connector_id))
            self._event(conn, "fatal_error", fatal)
            return fatal

    def clear_fatal_error(self) -> None:
        """Forget the fatal error and the failures before it, so that a restarted connector tries again."""
        metrics = self.metrics()
        if metrics.fatal_error is None and metrics.consecutive_failures == 0:
            return
        with self.transaction() as conn:
            conn.execute(
                "UPDATE metrics SET fatal_error = NULL, consecutive_failures = 0 WHERE connector_id = %s",
                (self.connector_id,),
            )

    def update_progress(self, buffered_records: int, end_of_input: bool) -> None:
        """Refresh ``buffered_records`` and ``end_of_input`` when a read found nothing new."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE metrics SET buffered_records = %s, end_of_input = %s, consecutive_failures = 0 "
                "WHERE connector_id = %s",
                (buffered_records, int(end_of_input), self.connector_id),
            )
            conn.execute("UPDATE offsets SET reads = reads + 1 WHERE connector_id = %s", (self.connector_id,))

    def _add_hourly(self, conn: Transaction, records: int, nbytes: int, parse: int, transport: int) -> None:
        conn.execute(
            "INSERT INTO hourly_stats VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (connector_id, hour) DO UPDATE SET "
            "records = hourly_stats.records + excluded.records, bytes = hourly_stats.bytes + excluded.bytes, "
            "parse_errors = hourly_stats.parse_errors + excluded.parse_errors, "
            "transport_errors = hourly_stats.transport_errors + excluded.transport_errors",
            (self.connector_id, current_hour(), records, nbytes, parse, transport),
        )
