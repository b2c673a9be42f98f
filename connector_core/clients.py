"""What the core needs from the outside world, handed in by a front end (Dagster resources or the CLI).

The core never builds connections itself: ``resources.ResourceClients`` implements :class:`ConnectionClients`
from Dagster resources (``S3Resource``, ``SnowflakeResource``, ``DuckDBResource``, ...), for runs and for the CLI.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol


class ConnectionClients(Protocol):
    """Factories for the clients of a pipeline's named connections and of its sink."""

    def kafka_settings(self, connection: str) -> dict[str, Any]:
        """librdkafka settings of a kafka connection, secrets resolved."""
        ...

    def postgres_connection(self, connection: str) -> AbstractContextManager[Any]:
        """A psycopg connection to a postgres connection (closed on exit)."""
        ...

    def s3_client(self, connection: str | None) -> Any:
        """A boto3 S3 client for an s3 connection (``None``: the default AWS chain)."""
        ...

    def snowflake_connection(self, connection: str) -> AbstractContextManager[Any]:
        """A snowflake-connector connection (closed on exit)."""
        ...

    def duckdb_connection(self) -> AbstractContextManager[Any]:
        """A DuckDB connection to the embedded sink (closed on exit)."""
        ...

    def test_connection(self, connection: str, settings: dict[str, Any] | None = None) -> None:
        """Really reach a connection (Kafka metadata, ``SELECT 1``, ``HeadBucket``...); raise on failure.

        ``settings`` (the connection's settings as dumped from the project file) tests proposed values
        instead of the current ones.
        """
        ...
