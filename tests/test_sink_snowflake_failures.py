"""Snowflake sink failures leave as a SinkError carrying the first error (no Snowflake server needed: the
connection is a stand-in that fails where told)."""

from __future__ import annotations

import contextlib
from typing import Any

import pyarrow as pa
import pytest
import snowflake.connector.errors as sf_errors

from connector_core.sinks import SinkError, SinkMark
from connector_core.sinks import snowflake as snowflake_sink
from connector_core.sinks.snowflake import SnowflakeSink


class FailingCursor:
    """Answers every statement with an empty result, except ``fail_on`` (and, with ``close_fails``, closing)."""

    def __init__(self, fail_on: str | None, close_fails: bool) -> None:
        self.fail_on = fail_on
        self.close_fails = close_fails
        self.connection = object()

    def execute(self, sql: str, params: Any = None) -> None:
        if self.fail_on is not None and self.fail_on in sql:
            raise sf_errors.ProgrammingError(f"first error: {self.fail_on} refused")

    def fetchall(self) -> list[Any]:
        return []

    def fetchone(self) -> tuple[int]:
        return (1,)

    def close(self) -> None:
        if self.close_fails:
            raise sf_errors.OperationalError("closing failed too")


def sink_failing(fail_on: str | None = None, close_fails: bool = False) -> SnowflakeSink:
    class Connection:
        def cursor(self) -> FailingCursor:
            return FailingCursor(fail_on, close_fails)

    return SnowflakeSink(lambda: contextlib.nullcontext(Connection()), "DB", "RAW", warehouse="WH")


def test_a_cursor_that_fails_to_close_does_not_hide_the_first_error() -> None:
    with pytest.raises(SinkError, match="first error: SELECT 1 refused") as raised:
        sink_failing("SELECT 1", close_fails=True).check()
    assert "closing failed" not in str(raised.value)


def test_a_batch_that_cannot_be_staged_is_a_sink_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snowflake_sink.pq, "write_table", no_space)
    with pytest.raises(SinkError, match="No space left on device"):
        sink_failing().write("t", pa.table({"id": [1]}), SinkMark("c1", 1, 1, 1, 1))
