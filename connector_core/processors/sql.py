"""``kind: sql``: one DuckDB ``SELECT`` over the batch, registered as the table ``batch``.

Each connector's step holds its own in-memory DuckDB connection for the run. The query's ``$name`` parameters
are bound to the use's args (only those the query names; every one it names must be a declared param).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from connector_core.locate import query_parameters
from connector_core.processors.base import ProcessorError, ProcessorStep
from connector_core.project import ProcessorUse


class SqlStep(ProcessorStep):
    """A DuckDB query from ``batch`` to the processed batch."""

    def __init__(self, use: ProcessorUse, who: str):
        import duckdb

        self._who = who
        self._query = use.definition.query or ""
        try:
            named = query_parameters(self._query)
        except (duckdb.Error, IndexError) as exc:
            raise ProcessorError(f"{who}: the query is not one SELECT: {exc}") from None
        missing = sorted(named - set(use.args))
        if missing:
            raise ProcessorError(f"{who}: the query uses ${', $'.join(missing)} but no such argument is given")
        self._params: dict[str, Any] | None = {name: use.args[name] for name in named} or None
        self._connection: Any = duckdb.connect(":memory:")
        self._error: type[Exception] = duckdb.Error

    def __call__(self, table: pa.Table) -> pa.Table:
        if self._connection is None:
            raise ProcessorError(f"{self._who}: the step was closed")
        self._connection.register("batch", table)
        try:
            return self._connection.sql(self._query, params=self._params).to_arrow_table()
        except self._error as exc:
            raise ProcessorError(f"{self._who} failed: {exc}") from exc
        finally:
            self._connection.unregister("batch")

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
