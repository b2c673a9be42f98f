"""The engine every procedure runs on: responses, hooks, steps and their phases (see the package docstring)."""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from connector_core.backups import RestoreError, restore_before_write, run_backup_check
from connector_core.clients import ConnectionClients
from connector_core.hints import configuration_way_out, status_way_out, with_way_out
from connector_core.pipeline import ConnectorHandle, Pipeline
from connector_core.project import Project
from connector_core.state import PipelineState, StateError, StateObject, Transaction
from connector_core.vocabulary import ConfigurationStatus, ResponseCode, Status

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
        return self.response_code == ResponseCode.OK

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of the response (data keys merged in), in plain JSON types (the vocabulary's members
        become their text)."""
        return json.loads(json.dumps({"response_code": self.response_code, "message": self.message, **self.data}))

    def redacted(self, redact: Callable[[str], str]) -> Response:
        """This response with ``redact`` applied to its message and to every text in its data."""
        return Response(self.response_code, redact(self.message), _redact_texts(self.data, redact))

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
            return cls(ResponseCode.INTERNAL_ERROR, f"hook answered {answer!r}; expected None or a response object")
        return None if response.ok else response


@dataclass
class HookContext:
    """What a validator or callback is given."""

    pipeline: Pipeline
    procedure: str
    values: dict[str, Any] = field(default_factory=dict)


Hook = Callable[[HookContext], Any]


def expected(kind: str, allowed: Sequence[str], current: str | None) -> str:
    return f"Invalid connector {kind}. Expected {kind}: [{', '.join(allowed)}]. Current {kind}: {current}."


class ProcedureStopped(Exception):
    """Ends a procedure early with a response."""

    def __init__(self, response: Response):
        self.response = response


@dataclass
class Step:
    """How one procedure moves the state (see the module docstring for the phases)."""

    procedure: str
    statuses: Sequence[str]
    configuration_statuses: Sequence[str] | None = None
    intermediate: str | None = None
    final_status: str | Callable[[str], str] | None = None
    final_configuration: Callable[[str], str] | None = None
    scheduling: bool | None = None
    check: Callable[[], Response | None] | None = None
    store: Callable[[Transaction], None] | None = None
    #: Undoes what ``check`` did outside the state database (e.g. sink tables it created) when a later phase
    #: refuses or fails, so that a procedure that does not answer OK leaves nothing behind.
    undo: Callable[[], None] | None = None
    values: dict[str, Any] = field(default_factory=dict)
    done_message: str = ""


class ProcedureEngine:
    """Runs a :class:`Step` through the phases, under the pipeline's procedure lock.

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
    def state(self) -> PipelineState:
        """The pipeline state database."""
        return self.pipeline.state

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
            raise ProcedureStopped(
                Response(ResponseCode.INTERNAL_ERROR, f"hook {name} = {hook!r} cannot be loaded: {exc}")
            ) from None
        self.hooks[name] = target
        return target

    def _call_hook(self, name: str, step: Step) -> Response | None:
        hook = self._hook(name)
        if hook is None:
            return None
        return Response.from_hook(hook(HookContext(self.pipeline, step.procedure, dict(step.values))))

    def _run(self, procedure: str, statuses: Sequence[str], **fields: Any) -> Response:
        """Run the procedure ``procedure``, allowed in ``statuses``, as the :class:`Step` of ``fields``; the answer
        holds none of the pipeline's secrets (a driver's error text may quote one)."""
        step = Step(procedure, statuses, **fields)
        refused = self._privileges_missing()
        if refused is not None:
            return refused
        try:
            with self.state.procedure_lock(self.lock_timeout_seconds):
                restore_before_write(self.pipeline, self.clients)
                response = self._run_locked(step)
        except ProcedureStopped as stop:
            response = stop.response
        except (StateError, RestoreError) as exc:
            response = Response(ResponseCode.INTERNAL_ERROR, str(exc))
        return response.redacted(self.pipeline.redact)

    def prerequisites_open(self) -> bool:
        """Whether the wizard still waits for prerequisites (so ``setup`` needs ``--confirm-prerequisites``)."""
        if self.state.configuration_status != ConfigurationStatus.INSTALLED:
            return False
        return any(not item["done"] for item in self.state.prerequisites())

    def _check_backups(self, response: Response) -> Response:
        """After a (re)start: the 24-hour backup rule. What it uploaded, or why it failed, is added to the answer
        (and recorded as an event); a failed upload never fails the procedure, the next check retries it."""
        if response.ok:
            report = run_backup_check(self.pipeline, self.clients)
            if report.uploaded:
                response.data["backups_uploaded"] = report.uploaded
            if not report.ok:
                response.data["backup_warning"] = self.pipeline.redact(report.message)
        return response

    def _privileges_missing(self, state: StateObject | None = None) -> Response | None:
        """Phase 1: ``REQUIRED_PRIVILEGES_MISSING`` unless this process may write the (pipeline) state database."""
        state = state or self.state
        if state.writable():
            return None
        return Response(
            ResponseCode.REQUIRED_PRIVILEGES_MISSING, f"this process cannot write the state ({state.location})"
        )

    def _run_locked(self, step: Step) -> Response:
        state = self.state
        status, configuration = state.status, state.configuration_status
        if status is None or configuration is None:
            return Response(
                ResponseCode.CONNECTOR_STATUS_NOT_FOUND, f"pipeline {self.pipeline.name} has no state record"
            )
        if status not in step.statuses:
            way_out = status_way_out(self.pipeline.name, status, step.statuses, self.prerequisites_open())
            message = with_way_out(expected("status", step.statuses, status), way_out)
            return Response(ResponseCode.INVALID_CONNECTOR_STATUS, message)
        if step.configuration_statuses is not None and configuration not in step.configuration_statuses:
            way_out = configuration_way_out(self.pipeline.name, configuration, step.configuration_statuses)
            message = with_way_out(
                expected("configuration status", step.configuration_statuses, configuration), way_out
            )
            return Response(ResponseCode.INVALID_CONNECTOR_CONFIGURATION_STATUS, message)
        try:
            refused = step.check() if step.check else None
        except ProcedureStopped:
            raise
        except Exception as exc:  # a check that raises refuses; nothing has changed
            return Response(ResponseCode.INTERNAL_ERROR, f"{step.procedure} validation failed: {exc}")
        if refused is not None:
            return refused
        try:
            refused = self._call_hook(f"{step.procedure}_validator", step)
        except ProcedureStopped as stop:
            refused = stop.response
        except Exception as exc:  # a validator that raises refuses
            refused = Response(ResponseCode.INTERNAL_ERROR, f"{step.procedure} validation failed: {exc}")
        if refused is not None:
            return self._undo(step, refused)

        self.pipeline.ensure_created()  # the first procedure that gets this far creates the state databases
        if step.intermediate:
            with state.transaction() as conn:
                state.put(conn, "status", step.intermediate)
                state.add_event(conn, step.procedure, status, step.intermediate, ResponseCode.OK, "intermediate status")

        try:
            answer = self._call_hook(f"{step.procedure}_callback", step)
        except ProcedureStopped as stop:
            answer = stop.response
        except Exception as exc:
            answer = Response(ResponseCode.ROLLBACK_CODE, f"{step.procedure} callback failed: {exc}")
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
                    conn,
                    step.procedure,
                    before,
                    final_status or status,
                    ResponseCode.OK,
                    step.done_message,
                    step.values,
                )
        except StateError as exc:
            return self._roll_back(
                step, status, Response(ResponseCode.ROLLBACK_CODE, f"could not store the new state: {exc}")
            )
        message = step.done_message or f"{step.procedure} done"
        return Response(
            ResponseCode.OK,
            message,
            {"status": final_status or status, "configurationStatus": final_configuration or configuration},
        )

    def _roll_back(self, step: Step, status: str, answer: Response) -> Response:
        """Undo the step and put the status back after a failed callback; ERROR and UNKNOWN_ERROR_CODE when
        that fails too."""
        answer = self._undo(step, answer)
        if not step.intermediate:
            return answer  # nothing was changed yet
        try:
            self._put_status_back(step, status, answer)
        except Exception as exc:
            failure = f"{answer.message}; putting the status back to {status} failed too ({exc})"
            try:
                with self.state.transaction() as conn:
                    self.state.put(conn, "status", Status.ERROR)
                    self.state.add_event(  # the cause, as `run --resume` shows it when it recovers
                        conn, step.procedure, step.intermediate, Status.ERROR, ResponseCode.UNKNOWN_ERROR_CODE, failure
                    )
            except Exception:  # noqa: S110 - the answer below says what to do
                pass
            return Response(
                ResponseCode.UNKNOWN_ERROR_CODE,
                f"{failure}. The pipeline is in ERROR: run `connectors pipeline {self.pipeline.name} recover --to "
                "STARTED|PAUSED` to leave it.",
            )
        return answer

    @staticmethod
    def _undo(step: Step, answer: Response) -> Response:
        """Run the step's ``undo``; a failure there is added to the answer's message."""
        if step.undo is None:
            return answer
        try:
            step.undo()
        except Exception as exc:
            return Response(answer.response_code, f"{answer.message}; undoing it failed too: {cause(exc)}", answer.data)
        return answer

    def _put_status_back(self, step: Step, status: str, answer: Response) -> None:
        with self.state.transaction() as conn:
            self.state.put(conn, "status", status)
            self.state.add_event(conn, step.procedure, step.intermediate, status, answer.response_code, answer.message)

    def _require_clients(self) -> ConnectionClients:
        if self.clients is None:
            raise ProcedureStopped(
                Response(ResponseCode.INTERNAL_ERROR, "this step needs the pipeline's connections; none were given")
            )
        return self.clients

    def _sink(self) -> Any:
        from connector_core.sinks import open_sink

        return open_sink(self.pipeline, self._require_clients())

    def _handle(self, table: str, connector: str) -> ConnectorHandle:
        try:
            return self.pipeline.connector(table, connector)
        except LookupError as exc:
            raise ProcedureStopped(
                Response(ResponseCode.CONNECTOR_STATUS_NOT_FOUND, f"pipeline {self.pipeline.name}: {exc}")
            ) from None


def check_identifiers(values: dict[str, Any]) -> Response | None:
    bad = sorted(k for k, v in values.items() if not isinstance(v, str) or not IDENTIFIER.match(v))
    if bad:
        shown = ", ".join(f"{k}={values[k]!r}" for k in bad)
        return Response(
            ResponseCode.INVALID_IDENTIFIER,
            f"Invalid identifier {shown}: use letters, digits, _ and $, starting with a letter or _.",
        )
    return None


def cause(exc: BaseException) -> str:
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
        return Response(ResponseCode.INTERNAL_ERROR, f"cannot open pipeline {pipeline_name}: {cause(exc)}")
    try:
        response = call(pipeline)
    except Exception as exc:
        response = Response(
            ResponseCode.INTERNAL_ERROR, f"pipeline {pipeline_name}: {type(exc).__name__}: {cause(exc)}"
        )
    try:
        return response.redacted(pipeline.redact)
    finally:
        pipeline.close()


def _redact_texts(value: Any, redact: Callable[[str], str]) -> Any:
    """``value`` (JSON-like) with ``redact`` applied to every string in it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redact_texts(item, redact) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_texts(item, redact) for item in value]
    return value
