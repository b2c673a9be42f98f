"""Lifecycle procedures of a pipeline and of its connectors (DESIGN §3, §4).

Every procedure answers a :class:`Response`; ``Response.as_dict()`` is the JSON object users see:
``{"response_code": "OK", "message": ...}`` or an error code with a message. A procedure runs these phases in
order, under a per-pipeline lock so that two processes racing on one pipeline run one after the other:

1. privileges validation: the state database is writable (``REQUIRED_PRIVILEGES_MISSING``);
2. status validation: ``status`` and ``configurationStatus`` allow the procedure (cannot be replaced);
3. state validation: the procedure's own checks (fields allowed, connections reachable...), then the
   replaceable ``<procedure>_validator`` hook;
4. intermediate status (STARTING/PAUSING, for resume and pause), committed with its event;
5. internal callback: the replaceable ``<procedure>_callback`` hook;
6. scheduling switch (the orchestration sensor stops or starts launching runs) and
7. final status — 6 and 7 commit in one transaction together with any configuration the step stores.

A callback that answers ``ROLLBACK_CODE`` (or any other non-OK code) or raises puts the status back and the
answer is ``ROLLBACK_CODE`` (or its own code) with its message. When putting the status back fails too, the
pipeline goes to ERROR and the answer is ``UNKNOWN_ERROR_CODE``, naming ``recover`` as the way out.
"""

from __future__ import annotations

import importlib
import os
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from connector_core.clients import ConnectionClients
from connector_core.pipeline import ConnectorHandle, Pipeline
from connector_core.project import Connection, Project
from connector_core.secrets import literal_secret_keys, refusal
from connector_core.state import StateError

OK = "OK"
INVALID_CONNECTOR_STATUS = "INVALID_CONNECTOR_STATUS"
INVALID_CONNECTOR_CONFIGURATION_STATUS = "INVALID_CONNECTOR_CONFIGURATION_STATUS"
CONNECTOR_STATUS_NOT_FOUND = "CONNECTOR_STATUS_NOT_FOUND"
REQUIRED_PRIVILEGES_MISSING = "REQUIRED_PRIVILEGES_MISSING"
ROLLBACK_CODE = "ROLLBACK_CODE"
INTERNAL_ERROR = "INTERNAL_ERROR"
UNKNOWN_ERROR_CODE = "UNKNOWN_ERROR_CODE"
INVALID_NEW_CONNECTOR_STATUS = "INVALID_NEW_CONNECTOR_STATUS"
PREREQUISITE_NOT_FOUND = "PREREQUISITE_NOT_FOUND"
PREREQUISITES_INCOMPLETE = "PREREQUISITES_INCOMPLETE"
CONNECTOR_CONFIGURATION_PARSING_ERROR = "CONNECTOR_CONFIGURATION_PARSING_ERROR"
CONNECTION_FAILED = "CONNECTION_FAILED"
INVALID_IDENTIFIER = "INVALID_IDENTIFIER"
WAREHOUSE_ALREADY_USED = "WAREHOUSE_ALREADY_USED"
INACCESSIBLE_WAREHOUSE = "INACCESSIBLE_WAREHOUSE"

CONFIGURING, STARTING, STARTED, PAUSING, PAUSED, ERROR = (
    "CONFIGURING",
    "STARTING",
    "STARTED",
    "PAUSING",
    "PAUSED",
    "ERROR",
)
INSTALLED, PREREQUISITES_DONE, CONFIGURED, CONNECTED, FINALIZED = (
    "INSTALLED",
    "PREREQUISITES_DONE",
    "CONFIGURED",
    "CONNECTED",
    "FINALIZED",
)
WIZARD_STEPS_BEFORE_FINAL = (INSTALLED, PREREQUISITES_DONE, CONFIGURED, CONNECTED)

#: Sink fields the ``configure`` step accepts, per sink kind.
SINK_FIELDS = {"duckdb": ("path", "schema"), "snowflake": ("connection", "database", "schema", "warehouse")}
#: Connection fields ``update_connection`` accepts, per connection kind (kafka: any librdkafka dotted key).
CONNECTION_FIELDS = {
    "postgres": ("dsn",),
    "s3": ("endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key"),
    "snowflake": ("account", "user", "password", "role", "host", "port", "protocol"),
}
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,254}$")


@dataclass
class Response:
    """The answer of a procedure."""

    response_code: str
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the procedure succeeded."""
        return self.response_code == OK

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of the response (data keys merged in)."""
        return {"response_code": self.response_code, "message": self.message, **self.data}

    @classmethod
    def from_hook(cls, answer: Any) -> Response | None:
        """A hook's answer as a response; ``None`` when it says go on (None or OK)."""
        if answer is None:
            return None
        if isinstance(answer, Response):
            response = answer
        elif isinstance(answer, dict) and "response_code" in answer:
            extra = {k: v for k, v in answer.items() if k not in ("response_code", "message")}
            response = cls(str(answer["response_code"]), str(answer.get("message", "")), extra)
        else:
            return cls(INTERNAL_ERROR, f"hook answered {answer!r}; expected None or a response object")
        return None if response.ok else response


@dataclass
class HookContext:
    """What a validator or callback is given."""

    pipeline: Pipeline
    procedure: str
    values: dict[str, Any] = field(default_factory=dict)


Hook = Callable[[HookContext], Any]


def _expected(kind: str, allowed: Sequence[str], current: str | None) -> str:
    return f"Invalid connector {kind}. Expected {kind}: [{', '.join(allowed)}]. Current {kind}: {current}."


class _Stop(Exception):
    """Ends a procedure early with a response."""

    def __init__(self, response: Response):
        self.response = response


@dataclass
class _Step:
    """How one procedure moves the state (see the module docstring for the phases)."""

    procedure: str
    statuses: Sequence[str]
    configuration_statuses: Sequence[str] | None = None
    intermediate: str | None = None
    final_status: str | Callable[[str], str] | None = None
    final_configuration: Callable[[str], str] | None = None
    scheduling: bool | None = None
    check: Callable[[], Response | None] | None = None
    store: Callable[[sqlite3.Connection], None] | None = None
    values: dict[str, Any] = field(default_factory=dict)
    done_message: str = ""


class Lifecycle:
    """The procedures of one pipeline.

    ``clients`` reach the pipeline's connections (needed by connect, finalize and the updates); ``hooks`` maps
    ``<procedure>_validator`` / ``<procedure>_callback`` to callables and wins over the project file's ``hooks``.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        clients: ConnectionClients | None = None,
        hooks: dict[str, Hook] | None = None,
        lock_timeout_seconds: float = 60,
    ):
        self.pipeline = pipeline
        self.clients = clients
        self.hooks: dict[str, Hook | str] = {**pipeline.spec.hooks.as_dict(), **(hooks or {})}
        self.lock_timeout_seconds = lock_timeout_seconds

    @property
    def state(self):  # noqa: ANN201 - PipelineState
        """The pipeline state database."""
        return self.pipeline.state

    # ------------------------------------------------------------------------------------------- reading
    def status(self) -> Response:
        """Status, configurationStatus, prerequisites and every connector's state."""
        state = self.state
        if state.status is None:
            return Response(CONNECTOR_STATUS_NOT_FOUND, f"pipeline {self.pipeline.name} has no state record")
        connectors = [
            {
                "endpoint_name": h.endpoint,
                "connector_id": h.connector_id,
                "state": "Running" if h.state.running else "Paused",
                "active": self.pipeline.is_active(h),
                "finished": h.state.metrics().finished,
            }
            for h in self.pipeline.connectors()
        ]
        return Response(
            OK,
            f"pipeline {self.pipeline.name} is {state.status} ({state.configuration_status})",
            {
                "pipeline": self.pipeline.name,
                "pipeline_id": self.pipeline.pipeline_id,
                "status": state.status,
                "configurationStatus": state.configuration_status,
                "scheduling": "on" if state.scheduling_enabled else "off",
                "prerequisites": state.prerequisites(),
                "connectors": connectors,
            },
        )

    # ------------------------------------------------------------------------------------------ the engine
    def _hook(self, name: str) -> Hook | None:
        hook = self.hooks.get(name)
        if hook is None or callable(hook):
            return hook
        module_name, _, attribute = hook.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise _Stop(Response(INTERNAL_ERROR, f"hook {name} = {hook!r} cannot be loaded: {exc}")) from None
        self.hooks[name] = target
        return target

    def _call_hook(self, name: str, step: _Step) -> Response | None:
        hook = self._hook(name)
        if hook is None:
            return None
        return Response.from_hook(hook(HookContext(self.pipeline, step.procedure, dict(step.values))))

    def _run(self, step: _Step) -> Response:
        try:
            with self.state.procedure_lock(self.lock_timeout_seconds):
                return self._run_locked(step)
        except _Stop as stop:
            return stop.response
        except StateError as exc:
            return Response(INTERNAL_ERROR, str(exc))

    def _run_locked(self, step: _Step) -> Response:
        state = self.state
        if not state.writable():
            return Response(REQUIRED_PRIVILEGES_MISSING, f"this process cannot write the state database {state.path}")
        status, configuration = state.status, state.configuration_status
        if status is None or configuration is None:
            return Response(CONNECTOR_STATUS_NOT_FOUND, f"pipeline {self.pipeline.name} has no state record")
        if status not in step.statuses:
            return Response(INVALID_CONNECTOR_STATUS, _expected("status", step.statuses, status))
        if step.configuration_statuses is not None and configuration not in step.configuration_statuses:
            return Response(
                INVALID_CONNECTOR_CONFIGURATION_STATUS,
                _expected("configuration status", step.configuration_statuses, configuration),
            )
        try:
            refused = (step.check() if step.check else None) or self._call_hook(f"{step.procedure}_validator", step)
        except _Stop:
            raise
        except Exception as exc:  # a validator that raises refuses; nothing has changed
            return Response(INTERNAL_ERROR, f"{step.procedure} validation failed: {exc}")
        if refused is not None:
            return refused

        self.pipeline.ensure_created()  # the first procedure that gets this far creates the state databases
        if step.intermediate:
            with state.transaction() as conn:
                state.put(conn, "status", step.intermediate)
                state.add_event(conn, step.procedure, status, step.intermediate, OK, "intermediate status")

        try:
            answer = self._call_hook(f"{step.procedure}_callback", step)
        except _Stop as stop:
            answer = stop.response
        except Exception as exc:
            answer = Response(ROLLBACK_CODE, f"{step.procedure} callback failed: {exc}")
        if answer is not None:
            return self._roll_back(step, status, answer)

        final_status = step.final_status(status) if callable(step.final_status) else step.final_status
        final_configuration = step.final_configuration(configuration) if step.final_configuration else None
        try:
            with state.transaction() as conn:
                if step.store:
                    step.store(conn)
                if final_configuration:
                    state.put(conn, "configuration_status", final_configuration)
                if step.scheduling is not None:
                    state.put(conn, "scheduling", "on" if step.scheduling else "off")
                if final_status:
                    state.put(conn, "status", final_status)
                before = step.intermediate or status
                state.add_event(
                    conn, step.procedure, before, final_status or status, OK, step.done_message, step.values
                )
        except sqlite3.Error as exc:
            return self._roll_back(step, status, Response(ROLLBACK_CODE, f"could not store the new state: {exc}"))
        message = step.done_message or f"{step.procedure} done"
        return Response(
            OK,
            message,
            {"status": final_status or status, "configurationStatus": final_configuration or configuration},
        )

    def _roll_back(self, step: _Step, status: str, answer: Response) -> Response:
        """Put the status back after a failed callback; ERROR and UNKNOWN_ERROR_CODE when that fails too."""
        if not step.intermediate:
            return answer  # nothing was changed yet
        try:
            self._put_status_back(step, status, answer)
        except Exception as exc:
            try:
                with self.state.transaction() as conn:
                    self.state.put(conn, "status", ERROR)
                    self.state.add_event(conn, step.procedure, step.intermediate, ERROR, UNKNOWN_ERROR_CODE, str(exc))
            except Exception:  # noqa: S110 - the answer below says what to do
                pass
            return Response(
                UNKNOWN_ERROR_CODE,
                f"{answer.message}; putting the status back to {status} failed too ({exc}). The pipeline is in "
                f"ERROR: run `connectors pipeline {self.pipeline.name} recover --to STARTED|PAUSED` to leave it.",
            )
        return answer

    def _put_status_back(self, step: _Step, status: str, answer: Response) -> None:
        with self.state.transaction() as conn:
            self.state.put(conn, "status", status)
            self.state.add_event(conn, step.procedure, step.intermediate, status, answer.response_code, answer.message)

    # ------------------------------------------------------------------------------------------- wizard
    def prerequisites(self, done: list[str] | None = None, all_done: bool = False, complete: bool = False) -> Response:
        """Mark prerequisites done (by id, or all) and/or complete the step (INSTALLED → PREREQUISITES_DONE).

        With no argument it lists them. Completing with one still open answers ``PREREQUISITES_INCOMPLETE``
        and stores nothing.
        """
        known = [p["id"] for p in self.state.prerequisites()]
        marking = list(known) if all_done else list(dict.fromkeys(done or []))

        def check() -> Response | None:
            unknown = [i for i in marking if i not in known]
            if unknown:
                return Response(
                    PREREQUISITE_NOT_FOUND,
                    f"No prerequisite {', '.join(unknown)}. Prerequisites: {', '.join(known) or 'none'}.",
                )
            still_open = [p["id"] for p in self.state.prerequisites() if not p["done"] and p["id"] not in marking]
            if complete and still_open:
                return Response(
                    PREREQUISITES_INCOMPLETE,
                    f"Prerequisites not done: {', '.join(still_open)}. Mark them done first "
                    f"(connectors wizard {self.pipeline.name} prerequisites --done ID).",
                    {"open": still_open},
                )
            return None

        def all_marked() -> bool:
            return all(p["done"] or p["id"] in marking for p in self.state.prerequisites())

        def store(conn: sqlite3.Connection) -> None:
            self.state.mark_prerequisites_done(conn, marking)

        def final_configuration(current: str) -> str:
            return PREREQUISITES_DONE if current == INSTALLED and (complete or all_marked()) else current

        response = self._run(
            _Step(
                "prerequisites",
                statuses=[CONFIGURING],
                configuration_statuses=WIZARD_STEPS_BEFORE_FINAL,
                check=check,
                store=store,
                final_configuration=final_configuration,
                values={"done": marking, "complete": complete},
                done_message=f"{len(marking)} prerequisite(s) marked done" if marking else "prerequisites",
            )
        )
        if response.ok:
            response.data["prerequisites"] = self.state.prerequisites()
        return response

    def configure(self, values: dict[str, Any] | None = None) -> Response:
        """Store the sink configuration (project file values overlaid with ``values``) → CONFIGURED."""
        values = dict(values or {})
        kind = self.pipeline.spec.sink.kind

        def check() -> Response | None:
            allowed = SINK_FIELDS[kind]
            refused = sorted(set(values) - set(allowed))
            if refused:
                return Response(
                    CONNECTOR_CONFIGURATION_PARSING_ERROR,
                    f"Fields {', '.join(refused)} are not allowed in configuration. "
                    f"A {kind} sink takes: {', '.join(allowed)}.",
                )
            return _check_identifiers({k: v for k, v in values.items() if k in ("database", "schema", "warehouse")})

        def store(conn: sqlite3.Connection) -> None:
            stored = self.state.config().get("sink", {})
            self.state.put_config(conn, {"sink": {**stored, **values}})

        return self._run(
            _Step(
                "configure",
                statuses=[CONFIGURING],
                configuration_statuses=WIZARD_STEPS_BEFORE_FINAL,
                check=check,
                store=store,
                final_configuration=lambda c: c if c in (CONFIGURED, CONNECTED) else CONFIGURED,
                values=values,
                done_message="sink configured",
            )
        )

    def connect(self) -> Response:
        """Test every connection of the pipeline and its sink for real → CONNECTED."""
        return self._run(
            _Step(
                "connect",
                statuses=[CONFIGURING],
                configuration_statuses=[CONFIGURED, CONNECTED],
                check=self._test_all_connections,
                final_configuration=lambda _: CONNECTED,
                done_message=f"{len(self.pipeline.spec.connections)} connection(s) and the sink reached",
            )
        )

    def _require_clients(self) -> ConnectionClients:
        if self.clients is None:
            raise _Stop(Response(INTERNAL_ERROR, "this step needs the pipeline's connections; none were given"))
        return self.clients

    def _test_all_connections(self) -> Response | None:
        clients = self._require_clients()
        for name in self.pipeline.spec.connections:
            try:
                clients.test_connection(name)
            except Exception as exc:
                return Response(CONNECTION_FAILED, f"Connection {name!r} failed: {_cause(exc)}")
        try:
            self._sink().check()
        except Exception as exc:
            return Response(CONNECTION_FAILED, f"Sink ({self.pipeline.sink_settings()['kind']}) failed: {_cause(exc)}")
        return None

    def _sink(self) -> Any:
        from connector_core.sinks import open_sink

        return open_sink(self.pipeline, self._require_clients())

    def finalize(self) -> Response:
        """Create the sink tables (and run the custom step) → FINALIZED, status STARTED, scheduling on."""

        def check() -> Response | None:
            from connector_core.sinks import prepare_tables

            try:
                prepare_tables(self._sink(), self.pipeline)
            except _Stop:
                raise
            except Exception as exc:
                return Response(CONNECTION_FAILED, f"Could not create the sink tables: {_cause(exc)}")
            return None

        return self._run(
            _Step(
                "finalize",
                statuses=[CONFIGURING],
                configuration_statuses=[CONNECTED],
                check=check,
                final_configuration=lambda _: FINALIZED,
                final_status=STARTED,
                scheduling=True,
                done_message="configuration finalized; pipeline STARTED",
            )
        )

    def reset(self) -> Response:
        """Back to INSTALLED: stored configuration cleared, prerequisites undone."""

        def store(conn: sqlite3.Connection) -> None:
            self.state.clear_config(conn)
            self.state.reset_prerequisites(conn)

        return self._run(
            _Step(
                "reset",
                statuses=[CONFIGURING],
                configuration_statuses=WIZARD_STEPS_BEFORE_FINAL,
                store=store,
                final_configuration=lambda _: INSTALLED,
                done_message="configuration reset",
            )
        )

    def setup(self, confirm_prerequisites: bool = False) -> Response:
        """The whole wizard from the project file: prerequisites → configure → connect → finalize."""
        steps: list[dict[str, Any]] = []
        if self.state.configuration_status == FINALIZED:
            return Response(OK, f"pipeline {self.pipeline.name} is already set up", {"steps": steps})
        calls: list[tuple[str, Callable[[], Response]]] = [
            ("prerequisites", lambda: self.prerequisites(all_done=confirm_prerequisites, complete=True)),
            ("configure", self.configure),
            ("connect", self.connect),
            ("finalize", self.finalize),
        ]
        for name, call in calls:
            response = call()
            steps.append({"step": name, **response.as_dict()})
            if not response.ok:
                response.data["steps"] = steps
                return response
        return Response(OK, f"pipeline {self.pipeline.name} set up and STARTED", {"steps": steps})

    # ---------------------------------------------------------------------------------------- running
    def pause(self) -> Response:
        """STARTED (or a stuck PAUSING) → PAUSING → PAUSED; the sensor stops launching runs."""
        return self._run(
            _Step(
                "pause",
                statuses=[STARTED, PAUSING],
                intermediate=PAUSING,
                final_status=PAUSED,
                scheduling=False,
                done_message="pipeline paused",
            )
        )

    def resume(self) -> Response:
        """PAUSED (or a stuck STARTING) → STARTING → STARTED; the sensor launches runs again."""
        return self._run(
            _Step(
                "resume",
                statuses=[PAUSED, STARTING],
                intermediate=STARTING,
                final_status=STARTED,
                scheduling=True,
                done_message="pipeline resumed",
            )
        )

    def recover(self, to: str) -> Response:
        """The way out of ERROR or a stuck STARTING/PAUSING: to the STARTED or PAUSED the user names."""
        target = str(to).upper()

        def check() -> Response | None:
            if target not in (STARTED, PAUSED):
                return Response(
                    INVALID_NEW_CONNECTOR_STATUS, f"Cannot recover to {to}. Expected new status: [STARTED, PAUSED]."
                )
            return None

        return self._run(
            _Step(
                "recover",
                statuses=[ERROR, STARTING, PAUSING],
                check=check,
                final_status=target,
                scheduling=target == STARTED,
                values={"to": target},
                done_message=f"pipeline recovered to {target}",
            )
        )

    # ---------------------------------------------------------------------------------------- updates
    def update_connection(self, connection: str, values: dict[str, Any]) -> Response:
        """Store new settings of a connection (PAUSED only) once they have been tested for real.

        Secret fields are accepted only as ``{"env": NAME}`` references, never as values.
        """
        values = dict(values)

        def check() -> Response | None:
            connections = self.pipeline.spec.connections
            if connection not in connections:
                return Response(
                    CONNECTOR_CONFIGURATION_PARSING_ERROR,
                    f"No connection {connection!r}. Connections: {', '.join(connections) or 'none'}.",
                )
            kind = connections[connection].kind
            if kind == "kafka":
                refused = sorted(k for k in values if "." not in k)
            else:
                refused = sorted(set(values) - set(CONNECTION_FIELDS[kind]))
            if refused:
                allowed = (
                    "librdkafka settings (dotted names)" if kind == "kafka" else ", ".join(CONNECTION_FIELDS[kind])
                )
                return Response(
                    CONNECTOR_CONFIGURATION_PARSING_ERROR,
                    f"Fields {', '.join(refused)} are not allowed in configuration. A {kind} connection takes: "
                    f"{allowed}.",
                )
            literal_secrets = literal_secret_keys(values)
            if literal_secrets:
                return Response(CONNECTOR_CONFIGURATION_PARSING_ERROR, refusal(literal_secrets))
            settings = self.pipeline.connection_settings(connection)
            if kind == "kafka":
                settings["config"] = {**settings["config"], **values}
            else:
                settings.update(values)
            try:
                TypeAdapter(Connection).validate_python(settings)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
                return Response(CONNECTOR_CONFIGURATION_PARSING_ERROR, f"Invalid configuration: {problems}")
            try:
                self._require_clients().test_connection(connection, settings)
            except _Stop:
                raise
            except Exception as exc:
                return Response(CONNECTION_FAILED, f"Connection {connection!r} failed: {_cause(exc)}")
            return None

        def store(conn: sqlite3.Connection) -> None:
            key = f"connection.{connection}"
            self.state.put_config(conn, {key: {**self.state.config().get(key, {}), **values}})

        return self._run(
            _Step(
                "update_connection",
                statuses=[PAUSED],
                check=check,
                store=store,
                values={"connection": connection, "fields": sorted(values)},
                done_message=f"connection {connection} updated",
            )
        )

    def update_warehouse(self, warehouse: str) -> Response:
        """Load through another Snowflake warehouse (PAUSED only)."""

        def check() -> Response | None:
            settings = self.pipeline.sink_settings()
            if settings["kind"] != "snowflake":
                return Response(
                    CONNECTOR_CONFIGURATION_PARSING_ERROR,
                    f"Field warehouse is not allowed in configuration: the sink is {settings['kind']}, "
                    "and only a snowflake sink has a warehouse.",
                )
            refused = _check_identifiers({"warehouse": warehouse})
            if refused:
                return refused
            if str(settings.get("warehouse") or "").upper() == warehouse.upper():
                return Response(WAREHOUSE_ALREADY_USED, f"Warehouse {warehouse} is already used by this pipeline.")
            try:
                with self._require_clients().snowflake_connection(settings["connection"]) as conn:
                    conn.cursor().execute(f"USE WAREHOUSE {warehouse}")
            except _Stop:
                raise
            except Exception as exc:
                return Response(INACCESSIBLE_WAREHOUSE, f"Warehouse {warehouse} is not accessible: {_cause(exc)}")
            return None

        def store(conn: sqlite3.Connection) -> None:
            stored = self.state.config().get("sink", {})
            self.state.put_config(conn, {"sink": {**stored, "warehouse": warehouse}})

        return self._run(
            _Step(
                "update_warehouse",
                statuses=[PAUSED],
                check=check,
                store=store,
                values={"warehouse": warehouse},
                done_message=f"warehouse set to {warehouse}",
            )
        )

    # ------------------------------------------------------------------------------------- connectors
    def _handle(self, table: str, connector: str) -> ConnectorHandle:
        try:
            return self.pipeline.connector(table, connector)
        except LookupError as exc:
            raise _Stop(Response(CONNECTOR_STATUS_NOT_FOUND, f"pipeline {self.pipeline.name}: {exc}")) from None

    def _set_connector(self, table: str, connector: str, running: bool) -> Response:
        try:
            handle = self._handle(table, connector)
            if not self.state.writable():
                return Response(
                    REQUIRED_PRIVILEGES_MISSING, f"this process cannot write the state database {self.state.path}"
                )
            self.pipeline.ensure_created()
            if not handle.state.writable():
                return Response(
                    REQUIRED_PRIVILEGES_MISSING, f"this process cannot write the state database {handle.state.path}"
                )
            verb = "started" if running else "paused"
            changed = handle.state.set_running(running, f"{verb} by the user")
            if running:
                handle.state.clear_fatal_error()
        except _Stop as stop:
            return stop.response
        except StateError as exc:
            return Response(INTERNAL_ERROR, str(exc))
        message = (
            f"connector {handle.endpoint} {verb}" if changed else f"connector {handle.endpoint} was already {verb}"
        )
        return Response(
            OK,
            message,
            {
                "endpoint_name": handle.endpoint,
                "state": "Running" if running else "Paused",
                "active": self.pipeline.is_active(handle),
            },
        )

    def start_connector(self, table: str, connector: str) -> Response:
        """Set one connector Running (idempotent); it ingests while the pipeline is STARTED."""
        return self._set_connector(table, connector, True)

    def pause_connector(self, table: str, connector: str) -> Response:
        """Set one connector Paused (idempotent)."""
        return self._set_connector(table, connector, False)


def _check_identifiers(values: dict[str, Any]) -> Response | None:
    bad = sorted(k for k, v in values.items() if not isinstance(v, str) or not IDENTIFIER.match(v))
    if bad:
        shown = ", ".join(f"{k}={values[k]!r}" for k in bad)
        return Response(
            INVALID_IDENTIFIER,
            f"Invalid identifier {shown}: use letters, digits, _ and $, starting with a letter or _.",
        )
    return None


def _cause(exc: BaseException) -> str:
    """An exception as one readable line: its type when it has no text, long texts cut to 500 characters."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def run_procedure(
    project: Project,
    pipeline_name: str,
    call: Callable[[Pipeline], Response],
    state_dir: str | os.PathLike[str] | None = None,
) -> Response:
    """Open a pipeline, run one procedure on it, close it: the one way every front end runs a procedure.

    An unknown pipeline raises :class:`LookupError` naming the pipelines (a usage error for the front end). A
    state database that cannot be opened, and any exception escaping the procedure, answer ``INTERNAL_ERROR``
    with a message naming the pipeline and the cause, the same on the command line and in Dagster.
    """
    project.pipeline(pipeline_name)
    try:
        pipeline = Pipeline(project, pipeline_name, state_dir)
    except Exception as exc:  # a state database that cannot be opened, created or migrated
        return Response(INTERNAL_ERROR, f"cannot open pipeline {pipeline_name}: {_cause(exc)}")
    try:
        return call(pipeline)
    except Exception as exc:
        return Response(INTERNAL_ERROR, f"pipeline {pipeline_name}: {type(exc).__name__}: {_cause(exc)}")
    finally:
        pipeline.close()
