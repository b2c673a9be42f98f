"""Sinks: where tables land. Rows and the source position they came from commit in one transaction.

``base``: the :class:`Sink` protocol; ``marks``: the exactly-once mark protocol both databases share; ``duckdb`` and
``snowflake``: the sinks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector_core.clients import ConnectionClients
from connector_core.sinks.base import JsonReadingSink, Sink, SinkError, SinkMark

if TYPE_CHECKING:
    from connector_core.pipeline import Pipeline

__all__ = ["JsonReadingSink", "Sink", "SinkError", "SinkMark", "open_sink", "prepare_tables"]


def open_sink(pipeline: Pipeline, clients: ConnectionClients, hold_connection: bool = False) -> Sink:
    """The sink of ``pipeline`` (project file overlaid with stored settings), reached through ``clients``.

    ``hold_connection`` keeps a DuckDB database open between calls until the sink's ``close()`` (faster
    batches; the file stays locked by this process meanwhile).
    """
    settings = pipeline.sink_settings()
    kind = settings.get("kind")
    if kind == "duckdb":
        from connector_core.sinks.duckdb import DuckDBSink

        return DuckDBSink(clients.duckdb_connection, settings.get("schema") or "main", hold_connection)
    if kind == "snowflake":
        from connector_core.sinks.snowflake import SnowflakeSink

        connection = settings["connection"]
        return SnowflakeSink(
            lambda: clients.snowflake_connection(connection),
            settings["database"],
            settings["schema"],
            settings.get("warehouse"),
        )
    raise SinkError(f"pipeline {pipeline.name}: unknown sink kind {kind!r}; use duckdb or snowflake")


def prepare_tables(sink: Sink, pipeline: Pipeline) -> list[str]:
    """Create every table of ``pipeline`` that declares ``columns`` and does not exist yet; return the names of
    the tables created here (those a rolled-back step may :meth:`~Sink.drop_table` again)."""
    created = []
    for name, table in pipeline.spec.tables.items():
        if table.columns and sink.table_schema(name) is None:
            sink.ensure_table(name, table.columns, None)
            created.append(name)
    return created
