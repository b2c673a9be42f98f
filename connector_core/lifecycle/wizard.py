"""The setup wizard (DESIGN §3): prerequisites -> configure -> connect -> finalize, reset, and ``setup`` for all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from connector_core.hints import setup_command, status_way_out, with_way_out
from connector_core.lifecycle.engine import (
    ProcedureEngine,
    ProcedureStopped,
    Response,
    cause,
    check_identifiers,
)
from connector_core.state import Transaction
from connector_core.vocabulary import WIZARD_STEPS_BEFORE_FINAL, ConfigurationStatus, ResponseCode, Status

#: Sink fields the ``configure`` step accepts, per sink kind.
SINK_FIELDS = {
    "duckdb": ("path", "schema"),
    "snowflake": ("connection", "database", "schema", "warehouse"),
    "kafka": ("max_message_bytes", "partitions"),
    "command": ("timeout_seconds",),
}


class WizardProcedures(ProcedureEngine):
    """The wizard's steps; each stores its configuration only in its final transaction."""

    def prerequisites(self, done: list[str] | None = None, all_done: bool = False, complete: bool = False) -> Response:
        """Mark prerequisites done (by id, or all) and/or complete the step (ConfigurationStatus.INSTALLED → ConfigurationStatus.PREREQUISITES_DONE).

        With no argument it lists them. Completing with one still open answers ``PREREQUISITES_INCOMPLETE``
        and stores nothing.
        """
        known = [p["id"] for p in self.state.prerequisites()]
        marking = list(known) if all_done else list(dict.fromkeys(done or []))

        def check() -> Response | None:
            unknown = [i for i in marking if i not in known]
            if unknown:
                return Response(
                    ResponseCode.PREREQUISITE_NOT_FOUND,
                    f"No prerequisite {', '.join(unknown)}. Prerequisites: {', '.join(known) or 'none'}.",
                )
            still_open = [p["id"] for p in self.state.prerequisites() if not p["done"] and p["id"] not in marking]
            if complete and still_open:
                return Response(
                    ResponseCode.PREREQUISITES_INCOMPLETE,
                    f"Prerequisites not done: {', '.join(still_open)}. Mark them done first "
                    f"(connectors wizard {self.pipeline.name} prerequisites --done ID).",
                    {"open": still_open},
                )
            return None

        def all_marked() -> bool:
            return all(p["done"] or p["id"] in marking for p in self.state.prerequisites())

        def store(conn: Transaction) -> None:
            self.state.mark_prerequisites_done(conn, marking)

        def final_configuration(current: str) -> str:
            return (
                ConfigurationStatus.PREREQUISITES_DONE
                if current == ConfigurationStatus.INSTALLED and (complete or all_marked())
                else current
            )

        response = self._run(
            "prerequisites",
            [Status.CONFIGURING],
            configuration_statuses=WIZARD_STEPS_BEFORE_FINAL,
            check=check,
            store=store,
            final_configuration=final_configuration,
            values={"done": marking, "complete": complete},
            done_message=f"{len(marking)} prerequisite(s) marked done" if marking else "prerequisites",
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
                    ResponseCode.CONNECTOR_CONFIGURATION_PARSING_ERROR,
                    f"Fields {', '.join(refused)} are not allowed in configuration. "
                    f"A {kind} sink takes: {', '.join(allowed)}.",
                )
            return check_identifiers({k: v for k, v in values.items() if k in ("database", "schema", "warehouse")})

        def store(conn: Transaction) -> None:
            self.state.merge_config(conn, "sink", values)

        return self._run(
            "configure",
            [Status.CONFIGURING],
            configuration_statuses=WIZARD_STEPS_BEFORE_FINAL,
            check=check,
            store=store,
            final_configuration=lambda c: (
                c
                if c in (ConfigurationStatus.CONFIGURED, ConfigurationStatus.CONNECTED)
                else ConfigurationStatus.CONFIGURED
            ),
            values=values,
            done_message="sink configured",
        )

    def connect(self) -> Response:
        """Test every connection of the pipeline and its sink for real → CONNECTED."""
        return self._run(
            "connect",
            [Status.CONFIGURING],
            configuration_statuses=[ConfigurationStatus.CONFIGURED, ConfigurationStatus.CONNECTED],
            check=self._test_all_connections,
            final_configuration=lambda _: ConfigurationStatus.CONNECTED,
            done_message=f"{len(self.pipeline.spec.connections)} connection(s) and the sink reached",
        )

    def _test_all_connections(self) -> Response | None:
        clients = self._require_clients()
        for name in self.pipeline.spec.connections:
            try:
                clients.test_connection(name)
            except Exception as exc:
                return Response(ResponseCode.CONNECTION_FAILED, f"Connection {name!r} failed: {cause(exc)}")
        try:
            self._sink().check()
        except Exception as exc:
            return Response(
                ResponseCode.CONNECTION_FAILED, f"Sink ({self.pipeline.sink_settings()['kind']}) failed: {cause(exc)}"
            )
        return None

    def finalize(self) -> Response:
        """Create the sink tables (and run the custom step) → FINALIZED, status STARTED, scheduling on.

        When the validator refuses or the callback fails, the tables this call created are dropped again.
        """
        created: list[str] = []

        def check() -> Response | None:
            from connector_core.sinks import prepare_tables

            try:
                created.extend(prepare_tables(self._sink(), self.pipeline))
            except ProcedureStopped:
                raise
            except Exception as exc:
                return Response(ResponseCode.CONNECTION_FAILED, f"Could not create the sink tables: {cause(exc)}")
            return None

        def undo() -> None:
            sink = self._sink()
            for table in created:
                sink.drop_table(table)

        return self._run(
            "finalize",
            [Status.CONFIGURING],
            configuration_statuses=[ConfigurationStatus.CONNECTED],
            check=check,
            undo=undo,
            final_configuration=lambda _: ConfigurationStatus.FINALIZED,
            final_status=Status.STARTED,
            scheduling=True,
            done_message="configuration finalized; pipeline STARTED",
        )

    def reset(self) -> Response:
        """Back to INSTALLED: stored configuration cleared, prerequisites undone."""

        def store(conn: Transaction) -> None:
            self.state.clear_config(conn)
            self.state.reset_prerequisites(conn)

        return self._run(
            "reset",
            [Status.CONFIGURING],
            configuration_statuses=WIZARD_STEPS_BEFORE_FINAL,
            store=store,
            final_configuration=lambda _: ConfigurationStatus.INSTALLED,
            done_message="configuration reset",
        )

    def setup(self, confirm_prerequisites: bool = False) -> Response:
        """The whole wizard from the project file: prerequisites → configure → connect → finalize."""
        steps: list[dict[str, Any]] = []
        if self.state.configuration_status == ConfigurationStatus.FINALIZED:
            status = self.state.status
            message = f"pipeline {self.pipeline.name} is already set up"
            if status != Status.STARTED:  # an OK answer all the same; it names what brings the pipeline back
                message = with_way_out(f"{message} (it is {status}).", status_way_out(self.pipeline.name, status))
            return Response(ResponseCode.OK, message, {"steps": steps})
        calls: list[tuple[str, Callable[[], Response]]] = [
            ("prerequisites", lambda: self.prerequisites(all_done=confirm_prerequisites, complete=True)),
            ("configure", self.configure),
            ("connect", self.connect),
            ("finalize", self.finalize),
        ]
        for name, call in calls:
            response = call()
            if response.response_code == ResponseCode.PREREQUISITES_INCOMPLETE:
                flag = setup_command(self.pipeline.name, prerequisites_open=True)
                response.message += f" Once they are met, `{flag}` confirms them all."
            steps.append({"step": name, **response.as_dict()})
            if not response.ok:
                response.data["steps"] = steps
                return response
        return Response(ResponseCode.OK, f"pipeline {self.pipeline.name} set up and STARTED", {"steps": steps})
