"""Updates of a paused pipeline (DESIGN §3): a connection's settings, the Snowflake warehouse."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from connector_core.lifecycle.engine import ProcedureEngine, ProcedureStopped, Response, cause, check_identifiers
from connector_core.project import Connection
from connector_core.secrets import literal_secret_keys, refusal, resolved_secrets
from connector_core.state import Transaction
from connector_core.vocabulary import ResponseCode, Status

#: Connection fields ``update_connection`` accepts, per connection kind (kafka: any librdkafka dotted key).
CONNECTION_FIELDS = {
    "postgres": ("dsn",),
    "s3": ("endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key"),
    "snowflake": ("account", "user", "password", "role", "host", "port", "protocol"),
}


class UpdateProcedures(ProcedureEngine):
    """Procedures that store new settings once they have been tested for real."""

    def update_connection(self, connection: str, values: dict[str, Any]) -> Response:
        """Store new settings of a connection (Status.PAUSED only) once they have been tested for real.

        Secret fields are accepted only as ``{"env": NAME}`` references, never as values.
        """
        values = dict(values)

        def check() -> Response | None:
            connections = self.pipeline.spec.connections
            if connection not in connections:
                return Response(
                    ResponseCode.CONNECTOR_CONFIGURATION_PARSING_ERROR,
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
                    ResponseCode.CONNECTOR_CONFIGURATION_PARSING_ERROR,
                    f"Fields {', '.join(refused)} are not allowed in configuration. A {kind} connection takes: "
                    f"{allowed}.",
                )
            literal_secrets = literal_secret_keys(values)
            if literal_secrets:
                return Response(ResponseCode.CONNECTOR_CONFIGURATION_PARSING_ERROR, refusal(literal_secrets))
            settings = self.pipeline.connection_settings(connection)
            if kind == "kafka":
                settings["config"] = {**settings["config"], **values}
            else:
                settings.update(values)
            try:
                TypeAdapter(Connection).validate_python(settings)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
                return Response(
                    ResponseCode.CONNECTOR_CONFIGURATION_PARSING_ERROR, f"Invalid configuration: {problems}"
                )
            try:
                self._require_clients().test_connection(connection, settings)
            except ProcedureStopped:
                raise
            except Exception as exc:  # the new settings' secrets may be in the driver's text too
                redact = self.pipeline.redactor.with_secrets(resolved_secrets(values))
                return Response(
                    ResponseCode.CONNECTION_FAILED, redact(f"Connection {connection!r} failed: {cause(exc)}")
                )
            return None

        def store(conn: Transaction) -> None:
            self.state.merge_config(conn, f"connection.{connection}", values)

        return self._run(
            "update_connection",
            [Status.PAUSED],
            check=check,
            store=store,
            values={"connection": connection, "fields": sorted(values)},
            done_message=f"connection {connection} updated",
        )

    def update_warehouse(self, warehouse: str) -> Response:
        """Load through another Snowflake warehouse (PAUSED only)."""

        def check() -> Response | None:
            settings = self.pipeline.sink_settings()
            if settings["kind"] != "snowflake":
                return Response(
                    ResponseCode.CONNECTOR_CONFIGURATION_PARSING_ERROR,
                    f"Field warehouse is not allowed in configuration: the sink is {settings['kind']}, "
                    "and only a snowflake sink has a warehouse.",
                )
            refused = check_identifiers({"warehouse": warehouse})
            if refused:
                return refused
            if str(settings.get("warehouse") or "").upper() == warehouse.upper():
                return Response(
                    ResponseCode.WAREHOUSE_ALREADY_USED, f"Warehouse {warehouse} is already used by this pipeline."
                )
            try:
                with self._require_clients().snowflake_connection(settings["connection"]) as conn:
                    conn.cursor().execute(f"USE WAREHOUSE {warehouse}")
            except ProcedureStopped:
                raise
            except Exception as exc:
                return Response(
                    ResponseCode.INACCESSIBLE_WAREHOUSE, f"Warehouse {warehouse} is not accessible: {cause(exc)}"
                )
            return None

        def store(conn: Transaction) -> None:
            self.state.merge_config(conn, "sink", {"warehouse": warehouse})

        return self._run(
            "update_warehouse",
            [Status.PAUSED],
            check=check,
            store=store,
            values={"warehouse": warehouse},
            done_message=f"warehouse set to {warehouse}",
        )
