"""Dagster resources: one per connection kind, plus the clients adapter handed to ``connector_core``.

Connections of the project file become resources keyed ``{pipeline}__{connection}``; the sink becomes
``{pipeline}__sink`` (names: ``connector_assets.names``). Secrets written as ``{env: NAME}`` become
``dagster.EnvVar(NAME)``, read when the resource is initialized, for every connection kind. Dagster shows a
resource's class docstring as its description, so each class bound here has a short one written for users
(the S3, Snowflake and DuckDB ones are subclasses of dagster-aws', dagster-snowflake's and dagster-duckdb's
resources that only change it).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from connector_core.pipeline import Pipeline
from connector_core.secrets import is_env_reference

__all__ = [
    "DuckDBSinkResource",
    "KafkaResource",
    "PipelineResources",
    "PostgresResource",
    "ResourceClients",
    "build_clients",
    "build_pipeline_resources",
    "connection_resource",
    "initialize",
    "s3_resource_class",
    "snowflake_resource_class",
]


def _secret(value: Any) -> Any:
    """``{env: NAME}`` (as dumped by pydantic) -> ``dg.EnvVar(NAME)``; anything else unchanged."""
    return dg.EnvVar(value["env"]) if is_env_reference(value) else value


class KafkaResource(dg.ConfigurableResource):
    """A Kafka connection of the project file: the cluster its Kafka connectors read (or its Kafka sink writes)."""

    config: dict[str, str] = Field(description="librdkafka settings without secrets, e.g. bootstrap.servers.")
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="Secret librdkafka settings, e.g. sasl.password; give each value as EnvVar (read at run time).",
    )

    def settings(self) -> dict[str, Any]:
        """The full librdkafka settings, secrets included."""
        return {**self.config, **self.secrets}

    def test(self) -> None:
        """Ask the cluster for its metadata."""
        from confluent_kafka.admin import AdminClient

        settings = {**self.settings(), "socket.timeout.ms": 5000}
        AdminClient(settings).list_topics(timeout=5)


class PostgresResource(dg.ConfigurableResource):
    """A PostgreSQL connection of the project file: the database its postgres connectors read."""

    dsn: str = Field(description="libpq connection string or URL (a secret: give it as EnvVar).")
    connect_timeout_seconds: int = Field(default=5, description="Seconds to wait for a connection.")

    @contextlib.contextmanager
    def get_connection(self) -> Iterator[Any]:
        """A psycopg connection, closed on exit."""
        import psycopg

        with psycopg.connect(self.dsn, connect_timeout=self.connect_timeout_seconds) as conn:
            yield conn

    def test(self) -> None:
        """Run ``SELECT 1``."""
        with self.get_connection() as conn:
            conn.execute("SELECT 1").fetchone()


def connection_resource(settings: dict[str, Any]) -> dg.ConfigurableResource:
    """The resource of one connection, from its settings as dumped from the project file."""
    settings = dict(settings)
    kind = settings.pop("kind")
    if kind == "kafka":
        config = settings["config"]
        return KafkaResource(
            config={k: str(v) for k, v in config.items() if not is_env_reference(v)},
            secrets={k: _secret(v) for k, v in config.items() if is_env_reference(v)},
        )
    if kind == "postgres":
        return PostgresResource(dsn=_secret(settings["dsn"]))
    if kind == "s3":
        return s3_resource_class()(**{k: _secret(v) for k, v in settings.items()})
    if kind == "snowflake":
        extra = {k: settings.pop(k) for k in ("host", "port", "protocol", "session_parameters") if k in settings}
        return snowflake_resource_class()(
            **{k: _secret(v) for k, v in settings.items()}, additional_snowflake_connection_args=extra or None
        )
    raise ValueError(f"unknown connection kind {kind!r}")


@functools.cache
def s3_resource_class() -> type[dg.ConfigurableResource]:
    """dagster-aws' ``S3Resource`` described for users (imported when first needed: it is slow to load)."""
    from dagster_aws.s3 import S3Resource

    class S3ConnectionResource(S3Resource):
        """An S3 connection of the project file: the buckets its s3_input connectors read or its backups go to."""

    return S3ConnectionResource


@functools.cache
def snowflake_resource_class() -> type[dg.ConfigurableResource]:
    """dagster-snowflake's ``SnowflakeResource`` described for users (imported when first needed)."""
    from dagster_snowflake import SnowflakeResource

    class SnowflakeConnectionResource(SnowflakeResource):
        """A Snowflake connection of the project file: the account its Snowflake sink loads the tables into."""

    return SnowflakeConnectionResource


class DuckDBSinkResource(DuckDBResource):
    """The pipeline's sink: the DuckDB database file its tables are loaded into."""

    def get_connection(self) -> Any:  # noqa: D102 - DuckDBResource's, with the file's folder created first
        if self.database not in ("", ":memory:") and not self.database.startswith("md:"):
            Path(self.database).parent.mkdir(parents=True, exist_ok=True)
        return super().get_connection()


@dataclass(frozen=True)
class PipelineResources:
    """The resources of one pipeline: one per connection (by connection name) and the DuckDB sink, if any."""

    connections: dict[str, dg.ConfigurableResource]
    sink: DuckDBResource | None


def build_pipeline_resources(pipeline: Pipeline) -> PipelineResources:
    """Resources for every connection of a pipeline and for its sink (stored overrides applied)."""
    connections = {name: connection_resource(pipeline.connection_settings(name)) for name in pipeline.spec.connections}
    sink = pipeline.sink_settings()
    if sink["kind"] != "duckdb":
        return PipelineResources(connections, None)
    path = Path(sink["path"])
    return PipelineResources(
        connections, DuckDBSinkResource(database=str(path if path.is_absolute() else pipeline.base_dir / path))
    )


class ResourceClients:
    """Implements ``connector_core.clients.ConnectionClients`` over a pipeline's resources: its connections by
    name, and its DuckDB sink (``None`` for a Snowflake sink, reached through its connection)."""

    def __init__(self, pipeline: Pipeline, connections: Mapping[str, Any], sink: Any | None = None):
        self.pipeline = pipeline
        self.connections = connections
        self.sink = sink

    def _resource(self, connection: str, kind: str) -> Any:
        if connection not in self.pipeline.spec.connections:
            known = ", ".join(self.pipeline.spec.connections) or "none"
            raise LookupError(f"pipeline {self.pipeline.name} has no connection {connection!r} (connections: {known})")
        actual = self.pipeline.spec.connections[connection].kind
        if actual != kind:
            raise LookupError(f"connection {connection!r} is a {actual} connection, not {kind}")
        return self.connections[connection]

    def kafka_settings(self, connection: str) -> dict[str, Any]:
        """librdkafka settings of a kafka connection."""
        return self._resource(connection, "kafka").settings()

    def postgres_connection(self, connection: str) -> contextlib.AbstractContextManager[Any]:
        """A psycopg connection of a postgres connection."""
        return self._resource(connection, "postgres").get_connection()

    def s3_client(self, connection: str | None) -> Any:
        """A boto3 S3 client of an s3 connection (``None``: the default AWS chain)."""
        if connection is None:
            from dagster_aws.s3 import S3Resource

            return S3Resource().get_client()
        return self._resource(connection, "s3").get_client()

    def snowflake_connection(self, connection: str) -> contextlib.AbstractContextManager[Any]:
        """A snowflake connection of a snowflake connection."""
        return self._resource(connection, "snowflake").get_connection()

    def duckdb_connection(self) -> contextlib.AbstractContextManager[Any]:
        """A connection to the DuckDB sink."""
        if self.sink is None:
            raise LookupError(f"pipeline {self.pipeline.name} has no DuckDB sink")
        return self.sink.get_connection()

    def test_connection(self, connection: str, settings: dict[str, Any] | None = None) -> None:
        """Reach a connection for real (``settings``: proposed values instead); raise with the cause on failure."""
        kind = self.pipeline.spec.connections[connection].kind
        if settings is not None:
            resource = initialize(connection_resource(settings))
        else:
            resource = self._resource(connection, kind)
        if kind in ("kafka", "postgres"):
            resource.test()
        elif kind == "s3":
            client = resource.get_client()
            buckets = self._buckets_of(connection)
            for bucket in buckets:
                client.head_bucket(Bucket=bucket)
            if not buckets:
                client.list_buckets()
        elif kind == "snowflake":
            with resource.get_connection() as conn:
                conn.cursor().execute("SELECT 1").fetchone()

    def _buckets_of(self, connection: str) -> list[str]:
        buckets = []
        backup = self.pipeline.spec.backup
        if backup.bucket and backup.connection == connection:
            buckets.append(backup.bucket)
        for _, connector in self.pipeline.spec.iter_connectors():
            config = connector.transport.config
            if connector.transport.name == "s3_input" and config.get("connection") == connection:
                buckets.append(config["bucket"])
        return sorted(set(buckets))


def initialize(resource: dg.ConfigurableResource) -> Any:
    """A resource outside a Dagster run, ``EnvVar``s read now; an unset one is named in one short message."""
    try:
        return resource.process_config_and_initialize()
    except Exception as exc:
        missing = re.findall(r'environment variable "(\w+)" which is not set', str(exc))
        if missing:
            raise RuntimeError(f"environment variable(s) {', '.join(missing)} not set") from None
        raise


class _ResourcesOnFirstUse(Mapping[str, Any]):
    """Resources initialized (``EnvVar``s resolved) when first used, so one connection's unset secret does not
    block steps that use other connections (or the command that repairs it)."""

    def __init__(self, resources: Mapping[str, dg.ConfigurableResource]):
        self._resources = dict(resources)
        self._initialized: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._initialized:
            self._initialized[key] = initialize(self._resources[key])
        return self._initialized[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._resources)

    def __len__(self) -> int:
        return len(self._resources)


def build_clients(pipeline: Pipeline) -> ResourceClients:
    """Clients for use outside a Dagster run (the CLI): each resource is initialized when first used."""
    resources = build_pipeline_resources(pipeline)
    return ResourceClients(pipeline, _ResourcesOnFirstUse(resources.connections), resources.sink)
