"""A :class:`connector_core.clients.ConnectionClients` over real clients, and helpers to build transport contexts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from connector_core.project import ConnectorSpec
from connector_core.transports.base import TransportContext


class RealClients:
    """Builds real clients from plain settings: psycopg from a DSN, boto3 through dagster-aws ``S3Resource``."""

    def __init__(
        self,
        kafka: dict[str, dict[str, Any]] | None = None,
        postgres: dict[str, str] | None = None,
        s3_endpoint: str | None = None,
    ) -> None:
        self.kafka = kafka or {}
        self.postgres = postgres or {}
        self.s3_endpoint = s3_endpoint
        self._s3: Any = None

    def kafka_settings(self, connection: str) -> dict[str, Any]:
        """librdkafka settings of the named kafka connection."""
        return dict(self.kafka[connection])

    @contextmanager
    def _postgres(self, connection: str) -> Iterator[Any]:
        import psycopg

        with psycopg.connect(self.postgres[connection], connect_timeout=5) as conn:
            yield conn

    def postgres_connection(self, connection: str) -> AbstractContextManager[Any]:
        """A psycopg connection to the named postgres DSN (closed on exit)."""
        return self._postgres(connection)

    def s3_client(self, connection: str | None) -> Any:
        """A boto3 S3 client from ``dagster_aws.s3.S3Resource`` pointed at the test endpoint (built once)."""
        from dagster_aws.s3 import S3Resource

        if self._s3 is None:
            resource = S3Resource(endpoint_url=self.s3_endpoint, region_name="us-east-1", max_attempts=1)
            self._s3 = resource.get_client()
        return self._s3

    def snowflake_connection(self, connection: str) -> AbstractContextManager[Any]:
        raise NotImplementedError("no snowflake in transport tests")

    def duckdb_connection(self) -> AbstractContextManager[Any]:
        raise NotImplementedError("no duckdb in transport tests")

    def test_connection(self, connection: str) -> None:
        raise NotImplementedError


def make_context(
    connector: dict[str, Any],
    clients: Any = None,
    base_dir: Path | None = None,
    log: Any = print,
    pipeline: str = "p",
    table: str = "t",
) -> TransportContext:
    """A :class:`TransportContext` for a connector given as its project-file mapping."""
    spec = ConnectorSpec.model_validate({"name": "c", **connector})
    return TransportContext(
        pipeline=pipeline,
        table=table,
        connector=spec,
        columns=None,
        base_dir=base_dir or Path.cwd(),
        clients=clients or RealClients(),
        log=log,
    )
