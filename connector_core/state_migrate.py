"""Moving a pipeline's state from its SQLite files into PostgreSQL (``connectors state migrate P --to postgres``).

A team starts on the SQLite state (the demo) and moves to PostgreSQL for production in two steps: it points the
pipeline at a PostgreSQL schema in the project file (``state: {kind: postgres, connection: NAME, schema: ...}``),
then :func:`migrate_to_postgres` copies the state the pipeline had in SQLite into that schema's tables
(:mod:`connector_core.state_postgres`):

* the source is ``{state_dir}/{pipeline}/pipeline.sqlite`` and the database of every connector it names
  (``connector/{id}/sqlite.db``), each opened read-only and read in one read transaction, under the pipeline's
  SQLite procedure lock (and the PostgreSQL one), so no procedure changes them meanwhile; the files are left as
  they were (they can be archived afterwards);
* every row of every table is copied (``events`` become ``pipeline_events`` / ``connector_events``) in **one**
  PostgreSQL transaction, which also creates the schema when it does not exist; log rows (events, parse errors)
  keep their order but get new ids from PostgreSQL's sequences, which every pipeline of the schema shares;
* before it commits, the same transaction verifies the copy: row counts per table, the pipeline id, status and
  configuration status, every connector id, each connector's run state, position, batch sequence and total records,
  then every row; any difference raises and rolls everything back, naming it;
* a schema that already holds state of the pipeline is refused (nothing written) unless ``force``, which replaces
  that pipeline's rows and its connectors' rows in the same transaction.

Every message is redacted with the pipeline's secrets (those of its spec and of the settings stored in SQLite).
No Dagster import here: the command line (:mod:`connector_cli.state`) and any other front end call this module.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from connector_core.hints import with_way_out
from connector_core.project import PostgresConnection, PostgresStateSpec, Project
from connector_core.secrets import Redactor, SecretNotSetError, resolved_secrets
from connector_core.state import (
    BUSY_TIMEOUT_MS,
    CONNECTOR_MIGRATIONS,
    PIPELINE_MIGRATIONS,
    SQLiteStateStore,
    StateError,
)
from connector_core.vocabulary import ResponseCode

if TYPE_CHECKING:
    import psycopg

    from connector_core.state_postgres import PostgresStateStore

#: SQLite table of the pipeline database -> PostgreSQL table (rows keyed by the pipeline's name).
PIPELINE_TABLES: Mapping[str, str] = {
    "app_state": "app_state",
    "app_config": "app_config",
    "prerequisites": "prerequisites",
    "connectors": "connectors",
    "events": "pipeline_events",
}
#: SQLite table of a connector database -> PostgreSQL table (rows keyed by the connector's id).
CONNECTOR_TABLES: Mapping[str, str] = {
    "identity": "identity",
    "runtime": "runtime",
    "offsets": "offsets",
    "metrics": "metrics",
    "parse_errors": "parse_errors",
    "hourly_stats": "hourly_stats",
    "events": "connector_events",
}
#: SQLite columns that are not copied: the fixed row id (1) of offsets and metrics, and the ids of log rows, which
#: PostgreSQL numbers anew from sequences shared by every pipeline of the schema (the rows keep their order).
DROPPED_COLUMNS: Mapping[str, frozenset[str]] = {
    "offsets": frozenset({"id"}),
    "metrics": frozenset({"id"}),
    "parse_errors": frozenset({"id"}),
    "events": frozenset({"id"}),
}
#: PostgreSQL tables whose rows have an order (their serial column): compared in that order, others as sets.
ORDERED_BY: Mapping[str, str] = {
    "prerequisites": "ordinal",
    "pipeline_events": "id",
    "parse_errors": "id",
    "connector_events": "id",
}

MIGRATE_COMMAND = "connectors state migrate {pipeline} --to postgres"


class MigrationError(StateError):
    """A migration refused or rolled back: nothing was written. ``response_code`` is what a front end answers; the
    message ends with the way out."""

    def __init__(self, message: str, response_code: ResponseCode = ResponseCode.INTERNAL_ERROR, way_out: str = ""):
        if way_out and not message.endswith((".", "?", "!")):
            message += "."
        super().__init__(with_way_out(message, way_out))
        self.response_code = response_code

    def redacted(self, redact: Callable[[str], str]) -> MigrationError:
        """The same error with ``redact`` applied to its message."""
        return MigrationError(redact(str(self)), self.response_code)


# ------------------------------------------------------------------------------------------------ the source
@dataclass
class SQLiteTables:
    """Every row of one SQLite state database (the copied columns of each table, in rowid order), read in one read
    transaction."""

    path: Path
    columns: dict[str, list[str]]
    rows: dict[str, list[tuple[Any, ...]]]

    def records(self, table: str) -> list[dict[str, Any]]:
        """The rows of ``table`` as mappings."""
        return [dict(zip(self.columns[table], row, strict=True)) for row in self.rows[table]]

    def value(self, table: str, column: str) -> Any:
        """``column`` of the first row of ``table`` (``None`` when it has no row)."""
        records = self.records(table)
        return records[0][column] if records else None


def read_database(path: Path, tables: Mapping[str, str], known_version: int) -> SQLiteTables:
    """Every row of the database at ``path``, opened read-only (nothing is created, migrated or written); a schema
    newer than ``known_version`` or a table outside ``tables`` is refused."""
    conn = sqlite3.connect(
        f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
    )
    try:
        conn.execute("BEGIN")  # one snapshot of the whole file
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > known_version:
            raise MigrationError(
                f"{path} has schema version {version}, newer than this program knows ({known_version})",
                way_out="Upgrade dagster-connectors, then migrate.",
            )
        present = {
            row[0]
            for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")
        }
        if present != set(tables):
            raise MigrationError(
                f"{path} is not a state database this program can copy: tables {sorted(present)}, "
                f"expected {sorted(tables)}"
            )
        columns: dict[str, list[str]] = {}
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for table in tables:
            names = [info[1] for info in conn.execute(f'PRAGMA table_info("{table}")')]
            columns[table] = [name for name in names if name not in DROPPED_COLUMNS.get(table, frozenset())]
            selected = ", ".join(f'"{name}"' for name in columns[table])
            rows[table] = [tuple(r) for r in conn.execute(f'SELECT {selected} FROM "{table}" ORDER BY rowid')]
        conn.execute("COMMIT")
    finally:
        conn.close()
    return SQLiteTables(path, columns, rows)


@dataclass
class ConnectorSource:
    """One connector the pipeline database names, and its database (``None``: it was never written)."""

    table: str
    name: str
    connector_id: str
    tables: SQLiteTables | None

    @property
    def endpoint(self) -> str:
        """``table.connector``."""
        return f"{self.table}.{self.name}"


@dataclass
class SourceState:
    """The SQLite state of one pipeline: its database and those of its connectors."""

    folder: Path
    pipeline: SQLiteTables
    connectors: list[ConnectorSource]
    #: Connector folders that the pipeline database does not name (not copied).
    ignored: list[str] = field(default_factory=list)

    def app_state(self) -> dict[str, Any]:
        """``app_state`` as key -> value."""
        return {row["key"]: row["value"] for row in self.pipeline.records("app_state")}

    def config(self) -> dict[str, Any]:
        """The stored configuration (JSON values)."""
        return {row["key"]: json.loads(row["value"]) for row in self.pipeline.records("app_config")}


def read_source(store: SQLiteStateStore, pipeline: str) -> SourceState:
    """The pipeline's SQLite state, every file read read-only (call it under the pipeline's procedure lock)."""
    tables = read_database(store.pipeline_path(pipeline), PIPELINE_TABLES, len(PIPELINE_MIGRATIONS))
    connectors = []
    for row in tables.records("connectors"):
        path = store.connector_path(pipeline, row["connector_id"])
        copied = read_database(path, CONNECTOR_TABLES, len(CONNECTOR_MIGRATIONS)) if path.exists() else None
        stored_id = copied.value("identity", "connector_id") if copied else None
        if copied and stored_id is not None and stored_id != row["connector_id"]:
            raise MigrationError(
                f"{path} holds connector {stored_id}, but the pipeline database gives "
                f"{row['table_name']}.{row['connector_name']} the id {row['connector_id']}"
            )
        connectors.append(ConnectorSource(row["table_name"], row["connector_name"], row["connector_id"], copied))
    folder = store.state_dir / pipeline
    named = {c.connector_id for c in connectors}
    ignored = sorted(
        str(path.parent) for path in (folder / "connector").glob("*/sqlite.db") if path.parent.name not in named
    )
    return SourceState(folder, tables, connectors, ignored)


# ------------------------------------------------------------------------------------------------ the report
@dataclass
class ConnectorCopy:
    """What one connector's state is after the migration (the same in SQLite and PostgreSQL)."""

    endpoint: str
    connector_id: str
    state: str | None
    position: Any
    batch_seq: int
    total_records: int
    copied: bool

    def as_dict(self) -> dict[str, Any]:
        """The connector's entry of the report JSON."""
        return {
            "endpoint_name": self.endpoint,
            "connector_id": self.connector_id,
            "state": self.state,
            "position": self.position,
            "batch_seq": self.batch_seq,
            "total_records": self.total_records,
            "copied": self.copied,
        }


@dataclass
class MigrationReport:
    """What :func:`migrate_to_postgres` copied and verified."""

    pipeline: str
    pipeline_id: str | None
    status: str | None
    configuration_status: str | None
    source: str
    target: str
    replaced: bool
    rows: dict[str, int]
    connectors: list[ConnectorCopy]
    ignored: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        """Rows copied into PostgreSQL, every table."""
        return sum(self.rows.values())

    @property
    def message(self) -> str:
        """One paragraph for the user: what moved where, and what to do with the SQLite files."""
        replaced = " (replacing the state it held of the pipeline)" if self.replaced else ""
        ignored = (
            f" Connector folders the pipeline database does not name were not copied: {', '.join(self.ignored)}."
            if self.ignored
            else ""
        )
        return (
            f"Copied the SQLite state of pipeline {self.pipeline} ({self.total_rows} rows, {len(self.connectors)} "
            f"connectors) into {self.target}{replaced} in one transaction, and verified it: pipeline_id "
            f"{self.pipeline_id}, status {self.status}, configurationStatus {self.configuration_status}, every "
            f"connector's id, state, position and records. The pipeline reads its state from PostgreSQL now. The "
            f"SQLite files under {self.source} were left untouched: archive them (e.g. `tar czf "
            f"{self.pipeline}-sqlite-state.tgz -C {Path(self.source).parent} {Path(self.source).name}`) and remove "
            f"them once you no longer need them.{ignored}"
        )

    def as_dict(self) -> dict[str, Any]:
        """The report JSON (without the message)."""
        return {
            "pipeline": self.pipeline,
            "pipeline_id": self.pipeline_id,
            "status": self.status,
            "configurationStatus": self.configuration_status,
            "source": self.source,
            "target": self.target,
            "replaced": self.replaced,
            "rows": self.rows,
            "connectors": [c.as_dict() for c in self.connectors],
            "ignored": self.ignored,
        }


# ------------------------------------------------------------------------------------------------ migration
def migrate_to_postgres(
    project: Project, pipeline_name: str, state_dir: str | Path | None = None, force: bool = False
) -> MigrationReport:
    """Copy the SQLite state of ``pipeline_name`` (under ``project.resolve_state_dir(state_dir)``) into the
    PostgreSQL schema its ``state`` key names, in one verified transaction (see the module docstring).

    Raises :class:`LookupError` for an unknown pipeline, :class:`connector_core.project.ProjectFileError` for a bad
    ``state_dir`` override, and :class:`MigrationError` (its message redacted, nothing written) for everything else.
    """
    spec = project.pipeline(pipeline_name)
    if not isinstance(spec.state, PostgresStateSpec):
        raise MigrationError(
            f"pipeline {pipeline_name} keeps its state in SQLite: there is no PostgreSQL state to migrate to",
            way_out=(
                f"Add `state: {{kind: postgres, connection: NAME, schema: connectors}}` to pipeline {pipeline_name} "
                "in the project file first (NAME: one of its connections, `kind: postgres` with `dsn: {env: VAR}`), "
                f"then run `{MIGRATE_COMMAND.format(pipeline=pipeline_name)}` again."
            ),
        )
    source_store = SQLiteStateStore(project.resolve_state_dir(state_dir))
    redact = _Redaction(resolved_secrets([spec.model_dump(by_alias=True)]))
    try:
        return _migrate(project, pipeline_name, source_store, force, redact)
    except MigrationError as exc:
        raise exc.redacted(redact) from None
    except Exception as exc:  # the one exit of this function: redacted, and nothing was written
        raise MigrationError(redact(f"cannot migrate the state of pipeline {pipeline_name}: {exc}")) from None


class _Redaction:
    """The pipeline's redaction (:attr:`connector_core.pipeline.Pipeline.redactor`'s rule: the values of every
    ``{env: NAME}`` of its spec and of its stored settings), extended once the SQLite settings are read."""

    def __init__(self, secrets: list[str]):
        self.redactor = Redactor(secrets)

    def add(self, secrets: list[str]) -> None:
        """Redact these secret values too."""
        self.redactor = self.redactor.with_secrets(secrets)

    def __call__(self, text: str) -> str:
        """``text`` without any of the secrets known so far."""
        return self.redactor(text)


def _migrate(
    project: Project, name: str, source_store: SQLiteStateStore, force: bool, redact: _Redaction
) -> MigrationReport:
    from connector_core.state_postgres import PostgresPipelineState

    path = source_store.pipeline_path(name)
    if not path.exists():
        raise MigrationError(
            f"pipeline {name} has no SQLite state at {path}: nothing to migrate",
            way_out="Give the state folder it used with `connectors --state-dir DIR state migrate ...`.",
        )
    sqlite_pipeline = source_store.pipeline(name, read_only=True)
    try:
        with sqlite_pipeline.procedure_lock():
            source = read_source(source_store, name)
            redact.add(resolved_secrets(source.config()))
            target = _target_store(project, name, redact)
            try:
                with PostgresPipelineState(target, name, read_only=True, create=False).procedure_lock():
                    return _copy(target, name, source, force)
            finally:
                target.close()
    finally:
        sqlite_pipeline.close()


def _target_store(project: Project, name: str, redact: Callable[[str], str]) -> PostgresStateStore:
    """The PostgreSQL store of the pipeline's ``state`` key, connected (``CONNECTION_FAILED`` otherwise)."""
    from connector_core.state_postgres import PostgresStateStore

    spec = project.pipeline(name)
    assert isinstance(spec.state, PostgresStateSpec)
    connection = spec.connections[spec.state.connection]
    assert isinstance(connection, PostgresConnection)  # the project file's checks make sure of it
    way_out = f"Check connection {spec.state.connection} of pipeline {name} (its dsn) and that the server is reachable."
    try:
        store = PostgresStateStore(connection.dsn.resolve(), spec.state.db_schema, redact=redact)
        store.connection()
    except (SecretNotSetError, StateError) as exc:
        raise MigrationError(
            f"cannot reach the PostgreSQL state: {exc}", ResponseCode.CONNECTION_FAILED, way_out
        ) from None
    return store


def _copy(store: PostgresStateStore, name: str, source: SourceState, force: bool) -> MigrationReport:
    """Write and verify the copy in one transaction of ``store``'s connection (rolled back on any exception)."""
    conn = store.connection()
    with conn.transaction():
        store.ensure_schema()  # a savepoint of this transaction: a failure leaves no schema behind either
        replaced = _clear_target(conn, name, source, force)
        conn.execute("INSERT INTO pipelines (pipeline) VALUES (%s)", (name,))
        for table, target in PIPELINE_TABLES.items():
            _insert(conn, target, "pipeline", name, source.pipeline.columns[table], source.pipeline.rows[table])
        for connector in source.connectors:
            if connector.tables is None:
                continue
            for table, target in CONNECTOR_TABLES.items():
                columns, rows = connector.tables.columns[table], connector.tables.rows[table]
                _insert(conn, target, "connector_id", connector.connector_id, columns, rows)
        counts = _verify(conn, name, source)
    app_state = source.app_state()
    return MigrationReport(
        pipeline=name,
        pipeline_id=app_state.get("pipeline_id"),
        status=app_state.get("status"),
        configuration_status=app_state.get("configuration_status"),
        source=str(source.folder),
        target=f"PostgreSQL schema {store.schema}",
        replaced=replaced,
        rows=counts,
        connectors=[_connector_copy(c) for c in source.connectors],
        ignored=source.ignored,
    )


def _connector_copy(connector: ConnectorSource) -> ConnectorCopy:
    tables = connector.tables
    position = tables.value("offsets", "position") if tables else None
    return ConnectorCopy(
        endpoint=connector.endpoint,
        connector_id=connector.connector_id,
        state=_runtime(tables.records("runtime")).get("state") if tables else None,
        position=json.loads(position) if position else None,
        batch_seq=(tables.value("offsets", "batch_seq") or 0) if tables else 0,
        total_records=(tables.value("metrics", "total_records") or 0) if tables else 0,
        copied=tables is not None,
    )


def _runtime(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {row["key"]: row["value"] for row in records}


def _clear_target(conn: psycopg.Connection[Any], name: str, source: SourceState, force: bool) -> bool:
    """Refuse when the schema holds state of the pipeline or of its connectors (unless ``force``: delete it);
    whether something was replaced. A connector id that another pipeline holds is always refused."""
    ids = [c.connector_id for c in source.connectors]
    taken = conn.execute(
        "SELECT pipeline, table_name, connector_name, connector_id FROM connectors "
        "WHERE connector_id = ANY(%s) AND pipeline <> %s",
        (ids, name),
    ).fetchall()
    if taken:
        owners = ", ".join(f"{c} ({p}: {t}.{n})" for p, t, n, c in taken)
        raise MigrationError(f"connector ids of pipeline {name} belong to another pipeline in PostgreSQL: {owners}")
    held = [row[0] for row in conn.execute("SELECT connector_id FROM connectors WHERE pipeline = %s", (name,))]
    every_id = sorted(set(ids) | set(held))
    found = {
        "pipelines": _count(conn, "SELECT count(*) FROM pipelines WHERE pipeline = %s", name),
        "app_state": _count(conn, "SELECT count(*) FROM app_state WHERE pipeline = %s", name),
        "connectors": len(held),
        "offsets": _count(conn, "SELECT count(*) FROM offsets WHERE connector_id = ANY(%s)", every_id),
        "identity": _count(conn, "SELECT count(*) FROM identity WHERE connector_id = ANY(%s)", every_id),
    }
    if not any(found.values()):
        return False
    if not force:
        status = conn.execute("SELECT value FROM app_state WHERE pipeline = %s AND key = 'status'", (name,)).fetchone()
        rows = ", ".join(f"{table}: {count}" for table, count in found.items() if count)
        raise MigrationError(
            f"the PostgreSQL schema already holds state of pipeline {name} (status {status[0] if status else None}; "
            f"rows {rows}); nothing was written",
            ResponseCode.INTERNAL_ERROR,
            f"If the SQLite state is the one to keep, run `{MIGRATE_COMMAND.format(pipeline=name)} --force` to "
            "replace it; otherwise the pipeline already runs on PostgreSQL and there is nothing to migrate.",
        )
    for table in ("app_state", "app_config", "prerequisites", "connectors", "pipeline_events", "pipelines"):
        conn.execute(f"DELETE FROM {table} WHERE pipeline = %s", (name,))
    for table in CONNECTOR_TABLES.values():
        conn.execute(f"DELETE FROM {table} WHERE connector_id = ANY(%s)", (every_id,))
    return True


def _count(conn: psycopg.Connection[Any], statement: str, key: Any) -> int:
    return int(conn.execute(statement, (key,)).fetchone()[0])


def _insert(
    conn: psycopg.Connection[Any],
    table: str,
    key_column: str,
    key: str,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """Insert ``rows`` (of ``columns``) into ``table`` in their order, keyed by ``key`` (unless a column is it)."""
    from psycopg import sql

    if not rows:
        return
    keyed = key_column not in columns
    names = [key_column, *columns] if keyed else list(columns)
    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(sql.Placeholder() * len(names)),
    )
    with conn.cursor() as cursor:
        cursor.executemany(statement, [(key, *row) if keyed else row for row in rows])


# ------------------------------------------------------------------------------------------------ verification
def _verify(conn: psycopg.Connection[Any], name: str, source: SourceState) -> dict[str, int]:
    """Read the copy back inside the transaction and compare it with the SQLite rows; a :class:`MigrationError`
    names the first difference (the transaction then rolls back). Returns the rows per PostgreSQL table."""
    counts: dict[str, int] = {"pipelines": _count(conn, "SELECT count(*) FROM pipelines WHERE pipeline = %s", name)}
    if counts["pipelines"] != 1:
        _differs("the row of table pipelines", 1, counts["pipelines"])
    copied = {t: _target_rows(conn, PIPELINE_TABLES[t], "pipeline", name, source.pipeline) for t in PIPELINE_TABLES}
    for table, rows in copied.items():
        counts[PIPELINE_TABLES[table]] = len(rows)
        if len(rows) != len(source.pipeline.rows[table]):
            _differs(f"the row count of table {PIPELINE_TABLES[table]}", len(source.pipeline.rows[table]), len(rows))
    stored = {row[0]: row[1] for row in copied["app_state"]}
    for key in ("pipeline_id", "status", "configuration_status"):
        if stored.get(key) != source.app_state().get(key):
            _differs(f"app_state {key}", source.app_state().get(key), stored.get(key))
    ids = {tuple(row) for row in source.pipeline.rows["connectors"]}
    if {tuple(row) for row in copied["connectors"]} != ids:
        _differs("the connector ids", sorted(ids), sorted(tuple(row) for row in copied["connectors"]))
    for connector in source.connectors:
        tables = connector.tables
        for table, target in CONNECTOR_TABLES.items():
            expected = tables.rows[table] if tables else []
            rows = _target_rows(conn, target, "connector_id", connector.connector_id, tables, table)
            counts[target] = counts.get(target, 0) + len(rows)
            what = f"table {target} of connector {connector.endpoint} ({connector.connector_id})"
            if len(rows) != len(expected):
                _differs(f"the row count of {what}", len(expected), len(rows))
            if tables is None:
                continue
            if table == "runtime":
                _same(
                    f"the state of connector {connector.endpoint}", _runtime(tables.records(table)), dict(rows), "state"
                )
            if table in ("offsets", "metrics"):
                columns = ("position", "batch_seq") if table == "offsets" else ("total_records",)
                for column in columns:
                    index = tables.columns[table].index(column)
                    if [r[index] for r in rows] != [r[index] for r in expected]:
                        _differs(f"{column} of connector {connector.endpoint}", expected[0][index], rows[0][index])
            _same_rows(what, target, expected, rows)
    for table, rows in copied.items():
        _same_rows(f"table {PIPELINE_TABLES[table]}", PIPELINE_TABLES[table], source.pipeline.rows[table], rows)
    return counts


def _target_rows(
    conn: psycopg.Connection[Any],
    target: str,
    key_column: str,
    key: str,
    tables: SQLiteTables | None,
    table: str | None = None,
) -> list[tuple[Any, ...]]:
    """The copied columns of ``target``'s rows for ``key`` (in their order, for an ordered table)."""
    from psycopg import sql

    source_table = table or next(t for t, tt in PIPELINE_TABLES.items() if tt == target)
    columns = tables.columns[source_table] if tables else [key_column]
    order = sql.SQL(" ORDER BY {}").format(sql.Identifier(ORDERED_BY[target])) if target in ORDERED_BY else sql.SQL("")
    statement = sql.SQL("SELECT {} FROM {} WHERE {} = %s{}").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(target), sql.Identifier(key_column), order
    )
    return [tuple(row) for row in conn.execute(statement, (key,)).fetchall()]


def _same(what: str, expected: Mapping[str, Any], got: Mapping[str, Any], key: str) -> None:
    if expected.get(key) != got.get(key):
        _differs(what, expected.get(key), got.get(key))


def _same_rows(what: str, target: str, expected: Sequence[tuple[Any, ...]], got: Sequence[tuple[Any, ...]]) -> None:
    """Every row equal (in order for an ordered table, else as sets)."""
    want, have = [tuple(r) for r in expected], [tuple(r) for r in got]
    if target not in ORDERED_BY:
        want, have = sorted(want, key=repr), sorted(have, key=repr)
    for index, (a, b) in enumerate(zip(want, have, strict=False)):
        if a != b:
            _differs(f"row {index + 1} of {what}", a, b)
    if len(want) != len(have):
        _differs(f"the row count of {what}", len(want), len(have))


def _differs(what: str, sqlite_value: Any, postgres_value: Any) -> NoReturn:
    raise MigrationError(
        f"verification failed, the copy was rolled back (nothing written): {what} differs: SQLite {sqlite_value!r}, "
        f"PostgreSQL {postgres_value!r}",
        ResponseCode.INTERNAL_ERROR,
        "Report it with this message; the SQLite state is untouched and the pipeline can go back to "
        "`state: {kind: sqlite}` meanwhile.",
    )
