"""Dagster resources: one per connection kind, plus the clients adapter handed to ``connector_core``.

Connections of the project file become resources keyed ``{pipeline}__{connection}``; the sink becomes
``{pipeline}__sink``. Secrets written as ``{env: NAME}`` become ``dagster.EnvVar(NAME)``, read at run time.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource
from dagster_duckdb import DuckDBResource
from dagster_snowflake import SnowflakeResource
from pydantic import Field

from connector_core.pipeline import Pipeline

__all__ = [
    "KafkaResource",
    "PostgresResource",
    "ResourceClients",
    "build_clients",
    "build_pipeline_resources",
    "connection_resource",
    "connection_resource_key",
    "sink_resource_key",
]


def connection_resource_key(pipeline: str, connection: str) -> str:
    """The resource key of a named connection of a pipeline."""
    return f"{pipeline}__{connection}"


def sink_resource_key(pipeline: str) -> str:
    """The resource key of a pipeline's sink."""
    return f"{pipeline}__sink"


def _secret(value: Any) -> Any:
    """``{env: NAME}`` (as dumped by pydantic) -> ``dg.EnvVar(NAME)``; anything else unchanged."""
    if isinstance(value, dict) and set(value) == {"env"}:
        return dg.EnvVar(value["env"])
    return value


class KafkaResource(dg.ConfigurableResource):
    """A Kafka cluster reached with confluent-kafka (librdkafka settings)."""

    config: dict[str, str] = Field(description="librdkafka settings without secrets, e.g. bootstrap.servers.")
    secret_env: dict[str, str] = Field(
        default_factory=dict, description="librdkafka setting -> name of the environment variable holding it."
    )

    def settings(self) -> dict[str, Any]:
        """The full librdkafka settings, secrets read from the environment now."""
        import os

        missing = [env for env in self.secret_env.values() if env not in os.environ]
        if missing:
            raise RuntimeError(f"environment variable(s) {', '.join(missing)} not set")
        return {**self.config, **{key: os.environ[env] for key, env in self.secret_env.items()}}

    def test(self) -> None:
        """Ask the cluster for its metadata."""
        from confluent_kafka.admin import AdminClient

        settings = {**self.settings(), "socket.timeout.ms": 5000}
        AdminClient(settings).list_topics(timeout=5)


class PostgresResource(dg.ConfigurableResource):
    """A PostgreSQL database reached with psycopg 3."""

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
            config={k: str(v) for k, v in config.items() if not isinstance(v, dict)},
            secret_env={k: v["env"] for k, v in config.items() if isinstance(v, dict)},
        )
    if kind == "postgres":
        return PostgresResource(dsn=_secret(settings["dsn"]))
    if kind == "s3":
        return S3Resource(**{k: _secret(v) for k, v in settings.items()})
    if kind == "snowflake":
        extra = {k: settings.pop(k) for k in ("host", "port", "protocol", "session_parameters") if k in settings}
        return SnowflakeResource(
            **{k: _secret(v) for k, v in settings.items()}, additional_snowflake_connection_args=extra or None
        )
    raise ValueError(f"unknown connection kind {kind!r}")


def build_pipeline_resources(pipeline: Pipeline) -> dict[str, dg.ConfigurableResource]:
    """Resources for every connection of a pipeline and for its sink (stored overrides applied)."""
    resources = {
        connection_resource_key(pipeline.name, name): connection_resource(pipeline.connection_settings(name))
        for name in pipeline.spec.connections
    }
    sink = pipeline.sink_settings()
    if sink["kind"] == "duckdb":
        path = Path(sink["path"])
        database = path if path.is_absolute() else pipeline.base_dir / path
        resources[sink_resource_key(pipeline.name)] = DuckDBResource(database=str(database))
    return resources


class ResourceClients:
    """Implements ``connector_core.clients.ConnectionClients`` over a pipeline's Dagster resources."""

    def __init__(self, pipeline: Pipeline, resources: Mapping[str, Any]):
        self.pipeline = pipeline
        self.resources = resources

    def _resource(self, connection: str, kind: str) -> Any:
        key = connection_resource_key(self.pipeline.name, connection)
        if connection not in self.pipeline.spec.connections:
            known = ", ".join(self.pipeline.spec.connections) or "none"
            raise LookupError(f"pipeline {self.pipeline.name} has no connection {connection!r} (connections: {known})")
        actual = self.pipeline.spec.connections[connection].kind
        if actual != kind:
            raise LookupError(f"connection {connection!r} is a {actual} connection, not {kind}")
        return self.resources[key]

    def kafka_settings(self, connection: str) -> dict[str, Any]:
        """librdkafka settings of a kafka connection."""
        return self._resource(connection, "kafka").settings()

    def postgres_connection(self, connection: str) -> contextlib.AbstractContextManager[Any]:
        """A psycopg connection of a postgres connection."""
        return self._resource(connection, "postgres").get_connection()

    def s3_client(self, connection: str | None) -> Any:
        """A boto3 S3 client of an s3 connection (``None``: the default AWS chain)."""
        if connection is None:
            return S3Resource().get_client()
        return self._resource(connection, "s3").get_client()

    def snowflake_connection(self, connection: str) -> contextlib.AbstractContextManager[Any]:
        """A snowflake connection of a snowflake connection."""
        return self._resource(connection, "snowflake").get_connection()

    def duckdb_connection(self) -> contextlib.AbstractContextManager[Any]:
        """A connection to the DuckDB sink."""
        return self.resources[sink_resource_key(self.pipeline.name)].get_connection()

    def test_connection(self, connection: str, settings: dict[str, Any] | None = None) -> None:
        """Reach a connection for real (``settings``: proposed values instead); raise with the cause on failure."""
        kind = self.pipeline.spec.connections[connection].kind
        if settings is not None:
            resource = connection_resource(settings).process_config_and_initialize()
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


class _ResourcesOnFirstUse(Mapping[str, Any]):
    """Resources initialized (``EnvVar``s resolved) when first used, so one connection's unset secret does not
    block steps that use other connections (or the command that repairs it)."""

    def __init__(self, resources: Mapping[str, dg.ConfigurableResource]):
        self._resources = dict(resources)
        self._initialized: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._initialized:
            try:
                self._initialized[key] = self._resources[key].process_config_and_initialize()
            except Exception as exc:
                missing = re.findall(r'environment variable "(\w+)" which is not set', str(exc))
                if missing:
                    raise RuntimeError(f"environment variable(s) {', '.join(missing)} not set") from None
                raise
        return self._initialized[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._resources)

    def __len__(self) -> int:
        return len(self._resources)


def build_clients(pipeline: Pipeline) -> ResourceClients:
    """Clients for use outside a Dagster run (the CLI): each resource is initialized when first used."""
    return ResourceClients(pipeline, _ResourcesOnFirstUse(build_pipeline_resources(pipeline)))
