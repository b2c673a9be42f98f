"""Sinks: where tables land. Rows and the source position they came from commit in one transaction.

``base``: the :class:`Sink` protocol; ``marks``: the exactly-once mark protocol both databases share; ``duckdb`` and
``snowflake``: the database sinks; ``kafka``: the channel writer (topics of JSON lines, marks in the connectors'
state, see ``docs/channels.md``); ``command``: a program acknowledging each batch (marks in the state too);
``state_marks``: what those two share.
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
    batches; the file stays locked by this process meanwhile). A kafka sink keeps its producer until ``close()``.
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
    if kind == "kafka":
        from connector_core.sinks.kafka import open_kafka_sink

        return open_kafka_sink(pipeline, clients, settings)
    if kind == "command":
        from connector_core.sinks.command import open_command_sink

        return open_command_sink(pipeline, settings)
    raise SinkError(f"pipeline {pipeline.name}: unknown sink kind {kind!r}; use duckdb, snowflake, kafka or command")


def prepare_tables(sink: Sink, pipeline: Pipeline) -> list[str]:
    """Create every table of ``pipeline`` that declares ``columns`` and does not exist yet; return the names of
    the tables created here (those a rolled-back step may :meth:`~Sink.drop_table` again)."""
    created = []
    for name, table in pipeline.spec.tables.items():
        if table.columns and sink.table_schema(name) is None:
            sink.ensure_table(name, table.columns, None)
            created.append(name)
    return created
