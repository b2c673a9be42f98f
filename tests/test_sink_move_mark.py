"""``Sink.move_mark``: a connector's mark moved to a new id in one sink transaction (a restore onto other ids, issue
14), on DuckDB through dagster-duckdb's ``DuckDBResource`` and on Snowflake through fakesnow's server and
dagster-snowflake's ``SnowflakeResource``."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from dagster_duckdb import DuckDBResource
from fixtures_services import SNOWFLAKE_DATABASE

from connector_core.sinks import Sink, SinkError, SinkMark
from connector_core.sinks.duckdb import DuckDBSink
from connector_core.sinks.snowflake import SnowflakeSink

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

COLUMNS = {"n": "BIGINT"}


@pytest.fixture(params=["duckdb", "snowflake"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Sink:
    if request.param == "duckdb":
        return DuckDBSink(DuckDBResource(database=str(tmp_path / "sink.duckdb")).get_connection)
    from dagster_snowflake import SnowflakeResource

    server: dict[str, Any] = request.getfixturevalue("fakesnow_server")
    resource = SnowflakeResource(
        account=server["account"],
        user=server["user"],
        password=server["password"],
        additional_snowflake_connection_args={k: server[k] for k in ("host", "port", "protocol", "session_parameters")},
    )
    schema = f"S_{uuid.uuid4().hex[:10].upper()}"  # fakesnow's server shares one database between connections
    return SnowflakeSink(resource.get_connection, SNOWFLAKE_DATABASE, schema)


def commit(sink: Sink, connector_id: str, values: list[int], batch_seq: int = 1) -> SinkMark:
    mark = SinkMark(connector_id, {"offset": values[-1]}, batch_seq, len(values) * batch_seq, 10 * batch_seq)
    sink.write("t", pa.table({"n": pa.array(values, pa.int64())}), mark)
    return mark


def test_nothing_to_move_answers_none_and_changes_nothing(sink: Sink) -> None:
    assert sink.move_mark("old", "new") is None  # no positions table yet
    sink.ensure_table("t", COLUMNS, None)
    commit(sink, "other", [1])
    assert sink.move_mark("old", "new") is None  # the old id has no mark
    assert sink.mark("new") is None and sink.mark("other") is not None


def test_the_old_mark_becomes_the_new_ids_and_batches_follow_it(sink: Sink) -> None:
    sink.ensure_table("t", COLUMNS, None)
    commit(sink, "old", [1, 2])
    second = commit(sink, "old", [3], batch_seq=2)
    moved = sink.move_mark("old", "new")
    assert moved == SinkMark("new", second.position, 2, second.total_records, second.total_bytes)
    assert sink.mark("new") == moved and sink.mark("old") is None
    commit(sink, "new", [4], batch_seq=3)  # the new id goes on from the moved mark
    with pytest.raises(SinkError, match="does not follow"):
        commit(sink, "old", [5], batch_seq=3)  # the old id starts from nothing: batch 3 does not follow 0
    assert sink.row_count("t") == 4


def test_a_mark_of_its_own_refuses_the_move_unless_replaced(sink: Sink) -> None:
    sink.ensure_table("t", COLUMNS, None)
    old = commit(sink, "old", [1, 2, 3])
    own = commit(sink, "new", [9])
    with pytest.raises(SinkError, match="has a mark of its own.*--force"):
        sink.move_mark("old", "new")
    assert sink.mark("old") == old and sink.mark("new") == own  # the refused move changed nothing
    replaced = sink.move_mark("old", "new", replace=True)
    assert replaced is not None and (replaced.connector_id, replaced.batch_seq, replaced.total_records) == ("new", 1, 3)
    assert sink.mark("new") == replaced and sink.mark("old") is None
    assert sink.move_mark("gone", "new", replace=True) is None and sink.mark("new") == replaced  # kept


def test_a_holding_duckdb_sink_forgets_its_cached_marks_of_both_ids(tmp_path: Path) -> None:
    sink = DuckDBSink(DuckDBResource(database=str(tmp_path / "sink.duckdb")).get_connection, hold_connection=True)
    try:
        sink.ensure_table("t", COLUMNS, None)
        commit(sink, "old", [1])
        commit(sink, "new", [2])  # both marks are now cached by the sink
        moved = sink.move_mark("old", "new", replace=True)
        assert sink.mark("old") is None and sink.mark("new") == moved
        commit(sink, "new", [3], batch_seq=2)
    finally:
        sink.close()
