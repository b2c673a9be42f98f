"""An opened pipeline: its spec from the project file joined with its state databases."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector_core.hints import connector_start_command, status_way_out, with_way_out
from connector_core.project import ConnectorSpec, PipelineSpec, PostgresStateSpec, Project, connector_labels
from connector_core.secrets import Redactor, SecretNotSetError, mask_secrets, resolved_secrets
from connector_core.state import (
    ConnectorSnapshot,
    ConnectorState,
    PipelineState,
    SQLiteStateStore,
    StateError,
    StateStore,
)
from connector_core.vocabulary import RunState, Status


def open_store(
    project: Project, name: str, state_dir: str | os.PathLike[str] | None, redact: Callable[[str], str]
) -> StateStore:
    """The state backend of pipeline ``name``: its ``state`` key (SQLite files under the state folder by default;
    a PostgreSQL schema reached through one of its postgres connections)."""
    spec = project.pipeline(name).state
    if isinstance(spec, PostgresStateSpec):
        from connector_core.state_postgres import PostgresStateStore

        connection = project.pipeline(name).connections[spec.connection]
        try:
            dsn = connection.dsn.resolve()  # type: ignore[union-attr]
        except SecretNotSetError as exc:
            raise StateError(
                f"pipeline {name} keeps its state in PostgreSQL through connection {spec.connection}: {exc}"
            ) from None
        return PostgresStateStore(dsn, spec.db_schema, redact=redact)
    return SQLiteStateStore(project.resolve_state_dir(state_dir), redact=redact)


@dataclass
class ConnectorHandle:
    """One connector of an opened pipeline: spec, id and state database."""

    table: str
    spec: ConnectorSpec
    connector_id: str | None  #: ``None`` until the first write creates the connector's database
    #: The database; in a pipeline opened ``read_only`` (a sensor tick), a snapshot read once.
    state: ConnectorState | ConnectorSnapshot

    @property
    def starts_paused(self) -> bool:
        """Created paused, or waiting for ``start_after``."""
        return self.spec.starts_paused

    @property
    def endpoint(self) -> str:
        """``table.connector``, the connector's address inside its pipeline."""
        return f"{self.table}.{self.spec.name}"

    @property
    def labels(self) -> list[str]:
        """Its own labels plus the implicit ``table.connector``."""
        return connector_labels(self.table, self.spec)


class Pipeline:
    """A pipeline of a project joined with its state databases.

    Opening one writes nothing: databases that exist are opened, missing ones answer the initial state
    (CONFIGURING, INSTALLED, connectors Running or Paused as declared, counters at zero) until the first write
    (a procedure, a batch, a ``start_after`` release) creates them through :meth:`ensure_created`. Ids are
    generated then and kept afterwards.

    Opened ``read_only`` (what a sensor tick does), the pipeline database is opened read-only and every connector
    database is read once, in one query through a read-only connection closed at once (a
    :class:`ConnectorSnapshot`): the pipeline is the state as of its opening, and it cannot write.
    """

    def __init__(
        self,
        project: Project,
        name: str,
        state_dir: str | os.PathLike[str] | None = None,
        read_only: bool = False,
    ):
        self.project = project
        self.name = name
        self.spec: PipelineSpec = project.pipeline(name)
        self._redactor: Redactor | None = None
        self.store: StateStore = open_store(project, name, state_dir, redact=self.redact)
        prerequisites = [(p.id, p.title, p.url) for p in self.spec.prerequisites]
        self.read_only = read_only
        self.state: PipelineState = self.store.pipeline(
            name, create=False, prerequisites=prerequisites, read_only=read_only
        )
        self._created = False
        self._connectors: dict[tuple[str, str], ConnectorHandle] = {}
        ids = self.state.connector_ids()
        declared = {
            (table, spec.name): (ids.get((table, spec.name)), spec) for table, spec in self.spec.iter_connectors()
        }
        snapshots = (
            self.store.connector_snapshots(name, {key: (i, spec.starts_paused) for key, (i, spec) in declared.items()})
            if read_only
            else {}
        )
        for (table, _), (connector_id, spec) in declared.items():
            state: ConnectorState | ConnectorSnapshot = snapshots.get((table, spec.name)) or self.store.connector(
                name, connector_id, create=False, starts_paused=spec.starts_paused
            )
            self._connectors[(table, spec.name)] = ConnectorHandle(table, spec, connector_id, state)

    def ensure_created(self) -> None:
        """Create every state database that does not exist yet (ids, identity rows, first states); refresh what
        the project file changed. Writes nothing when all is stored already; the write paths call it first."""
        if self._created:
            return
        if self.read_only:
            raise StateError(f"pipeline {self.name} was opened read-only; open it writable to create its databases")
        self.state.create()
        for handle in self._connectors.values():
            if handle.connector_id is None:
                handle.connector_id = self.state.ensure_connector_id(handle.table, handle.spec.name)
                handle.state.close()
                handle.state = self.store.connector(self.name, handle.connector_id, starts_paused=handle.starts_paused)
            handle.state.create()
            handle.state.initialize(
                connector_id=handle.connector_id,
                pipeline_id=str(self.pipeline_id),
                name=handle.endpoint,
                transport=handle.spec.transport.name,
                metadata={"pipeline": self.name, "table": handle.table, "org_slug": self.spec.org_slug},
                tags=handle.labels,
                starts_paused=handle.starts_paused,
            )
        self._created = True

    @property
    def redactor(self) -> Redactor:
        """Removes the pipeline's secrets from a text: the value of every ``{env: NAME}`` of its spec and of its
        stored settings (read when first needed), in every form a driver may quote it."""
        if getattr(self, "state", None) is None:  # the state is being opened: its stored settings are not known yet
            return Redactor(resolved_secrets([self.spec.model_dump(by_alias=True)]))
        if self._redactor is None:
            stored = self.state.config() if self.state.exists else {}
            self._redactor = Redactor(resolved_secrets([self.spec.model_dump(by_alias=True), stored]))
        return self._redactor

    def redact(self, text: str) -> str:
        """``text`` without any of the pipeline's secrets (applied before a text is printed, stored or logged)."""
        return self.redactor(text)

    @property
    def pipeline_id(self) -> str | None:
        """The pipeline (hub) id (``None`` until the pipeline's database is created)."""
        return self.state.pipeline_id

    @property
    def base_dir(self) -> Path:
        """The project file's folder."""
        return self.project.base_dir

    def connectors(self, table: str | None = None) -> list[ConnectorHandle]:
        """Every connector (of one table), in file order."""
        handles = [h for h in self._connectors.values() if table is None or h.table == table]
        for handle in handles:
            self._catch_up(handle)
        return handles

    def connector(self, table: str, name: str) -> ConnectorHandle:
        """The connector ``table.name``; a :class:`LookupError` names what exists otherwise."""
        self.spec.connector(table, name)
        return self._catch_up(self._connectors[(table, name)])

    def _catch_up(self, handle: ConnectorHandle) -> ConnectorHandle:
        """A connector that had no database when this pipeline was opened: open it if another process (a
        procedure, an ingestion run) has created it since. (A pipeline opened ``read_only`` is a snapshot: it
        stays as it was read.)"""
        if handle.connector_id is None and not self.read_only and self.state.open_if_created():
            handle.connector_id = self.state.connector_id(handle.table, handle.spec.name)
            if handle.connector_id is not None:
                handle.state = self.store.connector(
                    self.name, handle.connector_id, create=False, starts_paused=handle.starts_paused
                )
        return handle

    def is_started(self) -> bool:
        """Whether the pipeline's status lets connectors ingest."""
        return self.state.status is Status.STARTED

    def is_active(self, handle: ConnectorHandle) -> bool:
        """Active (DESIGN §1): the pipeline is STARTED and the connector Running."""
        return self.is_started() and handle.state.running

    def idle_reason(self, handle: ConnectorHandle) -> str | None:
        """Why a batch of this connector would ingest nothing, or ``None`` when it may ingest: the one rule of who
        ingests, shared by the sensor, ``connectors run`` and the table assets. A connector ingests when it is
        active, has not stopped on a fatal error and has not finished."""
        if not self.is_started():
            way_out = status_way_out(self.name, self.state.status)
            return with_way_out(f"pipeline {self.name} is {self.state.status}, not STARTED.", way_out)
        start = connector_start_command(self.name, handle.table, handle.spec.name)
        if not handle.state.running:
            waits = (
                f"it waits for start_after {', '.join(handle.spec.start_after)}, or " if handle.spec.start_after else ""
            )
            return f"connector {handle.endpoint} is {RunState.PAUSED}; {waits}`{start}` starts it"
        metrics = handle.state.metrics()
        if metrics.fatal_error:
            return f"connector {handle.endpoint} stopped on a fatal error ({metrics.fatal_error}); `{start}` retries it"
        if metrics.finished:
            return f"connector {handle.endpoint} has finished (end of input)"
        return None

    def sink_settings(self) -> dict[str, Any]:
        """The sink of the project file overlaid with what the wizard or ``update-warehouse`` stored."""
        settings = self.spec.sink.model_dump(by_alias=True)
        stored = self.state.config()
        settings.update(stored.get("sink", {}))
        return settings

    def connection_settings(self, name: str) -> dict[str, Any]:
        """A connection of the project file overlaid with values stored by ``update-connection``."""
        if name not in self.spec.connections:
            raise LookupError(f"no connection {name!r}; connections: {', '.join(self.spec.connections) or 'none'}")
        settings = self.spec.connections[name].model_dump(by_alias=True, exclude_none=True)
        overrides = self.state.config().get(f"connection.{name}", {})
        if settings.get("kind") == "kafka":
            settings["config"] = {**settings["config"], **overrides}
        else:
            settings.update(overrides)
        return settings

    def stats(self, handle: ConnectorHandle) -> dict[str, Any]:
        """The stats JSON of a connector (DESIGN §4), secrets masked."""
        metrics = handle.state.metrics()
        return {
            "endpoint_name": handle.endpoint,
            "connector_id": handle.connector_id,
            "config": mask_secrets(handle.spec.model_dump(mode="json", exclude_none=True)),
            "paused": not handle.state.running,
            "active": self.is_active(handle),
            "metrics": metrics.as_dict(),
            "parse_errors": handle.state.parse_errors(),
            "fatal_error": metrics.fatal_error,
        }

    def hourly_stats(self) -> list[dict[str, Any]]:
        """Hourly records, bytes and errors of every connector, and their sum per hour under ``"*"``."""
        rows: list[dict[str, Any]] = []
        totals: dict[str, dict[str, Any]] = {}
        for handle in self.connectors():
            for row in handle.state.hourly_stats():
                rows.append({"connector": handle.endpoint, **row})
                total = totals.setdefault(
                    row["hour"],
                    {
                        "connector": "*",
                        "hour": row["hour"],
                        "records": 0,
                        "bytes": 0,
                        "parse_errors": 0,
                        "transport_errors": 0,
                    },
                )
                for key in ("records", "bytes", "parse_errors", "transport_errors"):
                    total[key] += row[key]
        return sorted(rows + list(totals.values()), key=lambda r: (r["hour"], r["connector"]))

    def close(self) -> None:
        """Close every database."""
        for handle in self._connectors.values():
            handle.state.close()
        self.state.close()
        self.store.close()
