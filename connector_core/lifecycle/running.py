"""Running a pipeline and its connectors (DESIGN §3, §4): status, pause, resume, recover, start/pause a connector."""

from __future__ import annotations

from connector_core.backups import RestoreError, restore_before_write
from connector_core.lifecycle.engine import ProcedureEngine, ProcedureStopped, Response
from connector_core.state import StateError
from connector_core.vocabulary import ResponseCode, Status


class RunningProcedures(ProcedureEngine):
    """Status and the procedures that start and stop ingestion."""

    def status(self) -> Response:
        """Status, configurationStatus, prerequisites and every connector's state."""
        state = self.state
        if state.status is None:
            return Response(
                ResponseCode.CONNECTOR_STATUS_NOT_FOUND, f"pipeline {self.pipeline.name} has no state record"
            )
        connectors = [
            {
                "endpoint_name": h.endpoint,
                "connector_id": h.connector_id,
                "state": h.state.run_state,
                "active": self.pipeline.is_active(h),
                "finished": h.state.metrics().finished,
            }
            for h in self.pipeline.connectors()
        ]
        return Response(
            ResponseCode.OK,
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

    def pause(self) -> Response:
        """STARTED (or a stuck PAUSING) → PAUSING → PAUSED; the sensor stops launching runs."""
        return self._switch("pause", Status.STARTED, Status.PAUSING, Status.PAUSED, "pipeline paused")

    def resume(self) -> Response:
        """PAUSED (or a stuck STARTING) → STARTING → STARTED; the sensor launches runs again."""
        response = self._switch("resume", Status.PAUSED, Status.STARTING, Status.STARTED, "pipeline resumed")
        return self._check_backups(response)

    def _switch(self, procedure: str, settled: Status, intermediate: Status, final: Status, message: str) -> Response:
        """From ``settled`` (or a stuck ``intermediate``, retried) through ``intermediate`` to ``final``; scheduling
        follows (on when ``final`` is STARTED)."""
        return self._run(
            procedure,
            [settled, intermediate],
            intermediate=intermediate,
            final_status=final,
            scheduling=final is Status.STARTED,
            done_message=message,
        )

    def recover(self, to: str) -> Response:
        """The way out of ERROR or a stuck STARTING/PAUSING: to the STARTED or PAUSED the user names."""
        target = str(to).upper()

        def check() -> Response | None:
            if target not in (Status.STARTED, Status.PAUSED):
                return Response(
                    ResponseCode.INVALID_NEW_CONNECTOR_STATUS,
                    f"Cannot recover to {to}. Expected new status: [STARTED, PAUSED].",
                )
            return None

        return self._run(
            "recover",
            [Status.ERROR, Status.STARTING, Status.PAUSING],
            check=check,
            final_status=target,
            scheduling=target == Status.STARTED,
            values={"to": target},
            done_message=f"pipeline recovered to {target}",
        )

    def _set_connector(self, table: str, connector: str, running: bool) -> Response:
        verb = "started" if running else "paused"
        try:
            handle = self._handle(table, connector)
            refused = self._privileges_missing()
            if refused is not None:
                return refused
            restore_before_write(self.pipeline, self.clients)
            self.pipeline.ensure_created()
            refused = self._privileges_missing(handle.state)
            if refused is not None:
                return refused
            fatal_error = handle.state.metrics().fatal_error
            changed = handle.state.set_running(running, f"{verb} by the user")
            if running:
                handle.state.clear_fatal_error()
        except ProcedureStopped as stop:
            return stop.response
        except (StateError, RestoreError) as exc:
            return Response(ResponseCode.INTERNAL_ERROR, self.pipeline.redact(str(exc)))
        if running and fatal_error:
            message = f"connector {handle.endpoint} started again: its fatal error is cleared ({fatal_error})"
        elif changed:
            message = f"connector {handle.endpoint} {verb}"
        else:
            message = f"connector {handle.endpoint} was already {verb}"
        return Response(
            ResponseCode.OK,
            message,
            {
                "endpoint_name": handle.endpoint,
                "state": handle.state.run_state,
                "active": self.pipeline.is_active(handle),
            },
        )

    def start_connector(self, table: str, connector: str) -> Response:
        """Set one connector Running (idempotent); it ingests while the pipeline is STARTED. A start checks the
        24-hour backup rule."""
        return self._check_backups(self._set_connector(table, connector, True))

    def pause_connector(self, table: str, connector: str) -> Response:
        """Set one connector Paused (idempotent)."""
        return self._set_connector(table, connector, False)
