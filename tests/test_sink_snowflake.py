"""Snowflake sink over the real snowflake connector, against fakesnow's HTTP server, through dagster-snowflake's
``SnowflakeResource.get_connection`` (what production wires in)."""

from __future__ import annotations

import datetime as dt
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from clients_for_tests import keeps_only_the_first_batch, run_to_end
from dagster_snowflake import SnowflakeResource
from fixtures_services import SNOWFLAKE_DATABASE as DATABASE

from connector_core.column_types import arrow_schema
from connector_core.ingest import IngestSession
from connector_core.pipeline import Pipeline
from connector_core.project import parse_project
from connector_core.sinks import SinkError, SinkMark, open_sink, prepare_tables
from connector_core.sinks.snowflake import STAGE, SnowflakeSink

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

COLUMNS = {"id": "BIGINT", "name": "VARCHAR", "price": "DOUBLE", "day": "DATE", "at": "TIMESTAMP", "ok": "BOOLEAN"}


@pytest.fixture(scope="module")
def snowflake_resource(fakesnow_server: dict[str, Any]) -> SnowflakeResource:
    extra = {key: fakesnow_server[key] for key in ("host", "port", "protocol", "session_parameters")}
    return SnowflakeResource(
        account=fakesnow_server["account"],
        user=fakesnow_server["user"],
        password=fakesnow_server["password"],
        additional_snowflake_connection_args=extra,
    )


@pytest.fixture
def schema_name() -> str:
    """A schema of its own per test (fakesnow's server shares one database between connections)."""
    return f"S_{uuid.uuid4().hex[:10].upper()}"


@pytest.fixture
def sink(snowflake_resource: SnowflakeResource, schema_name: str) -> SnowflakeSink:
    return SnowflakeSink(snowflake_resource.get_connection, DATABASE, schema_name, warehouse="LOAD_WH")


def rows(ids: list[int]) -> pa.Table:
    return pa.table(
        {
            "id": ids,
            "name": [f"o'neil {i}" for i in ids],
            "price": [i / 4 for i in ids],
            "day": [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in ids],
            "at": [dt.datetime(2024, 1, 1, 12, 0, i % 60) for i in ids],
            "ok": [i % 2 == 0 for i in ids],
        },
        schema=arrow_schema(COLUMNS),
    )


def test_table_created_from_columns_and_described_back(sink: SnowflakeSink) -> None:
    sink.check()
    assert sink.table_schema("price") is None
    schema = sink.ensure_table("price", COLUMNS, None)
    assert schema.names == list(COLUMNS)
    assert [f.type for f in schema] == [
        pa.int64(),
        pa.string(),
        pa.float64(),
        pa.date32(),
        pa.timestamp("us"),
        pa.bool_(),
    ]
    inferred = sink.ensure_table("inferred", None, pa.schema([("n", pa.int32()), ("s", pa.string())]))
    assert inferred == pa.schema([("n", pa.int64()), ("s", pa.string())])


def test_rows_and_mark_commit_together(sink: SnowflakeSink) -> None:
    sink.ensure_table("price", COLUMNS, None)
    assert sink.mark("c1") is None
    sink.write("price", rows([1, 2, 3]), SinkMark("c1", {"offset": 3}, 1, 3, 30))
    sink.write("price", rows([4, 5]), SinkMark("c1", {"offset": 5}, 2, 5, 50))
    assert sink.mark("c1") == SinkMark("c1", {"offset": 5}, 2, 5, 50)
    assert sink.row_count("price") == 5
    frame = sink.read_table("price").sort_values("id")
    assert list(frame["id"]) == [1, 2, 3, 4, 5]
    assert list(frame["name"])[0] == "o'neil 1"
    assert list(frame["day"])[4] == dt.date(2024, 1, 6)
    assert list(frame["at"])[2] == dt.datetime(2024, 1, 1, 12, 0, 3)
    assert list(frame["price"]) == [0.25, 0.5, 0.75, 1.0, 1.25] and list(frame["ok"]) == [False, True] * 2 + [False]
    with sink._cursor("list the stage") as cursor:  # the rows went through the stage; PURGE removed the files
        cursor.execute(f"LIST @{sink._name(STAGE)}")
        assert cursor.fetchall() == []


def test_a_failed_insert_rolls_back_rows_and_mark(sink: SnowflakeSink) -> None:
    bad = pa.table({"id": ["two", "three"]})  # COPY INTO cannot load text into NUMBER
    with keeps_only_the_first_batch(sink, "price", COLUMNS, rows([1])), pytest.raises(SinkError):
        sink.write("price", bad, SinkMark("c1", 3, 2, 3, 30))


def test_rows_already_inserted_are_rolled_back_when_the_mark_cannot_be_written(sink: SnowflakeSink) -> None:
    with keeps_only_the_first_batch(sink, "price", COLUMNS, rows([1])), pytest.raises(TypeError):
        sink.write("price", rows([2, 3]), SinkMark("c1", object(), 2, 3, 30))  # position is not JSON


def test_a_mark_that_does_not_follow_the_stored_one_is_refused(sink: SnowflakeSink) -> None:
    with keeps_only_the_first_batch(sink, "price", COLUMNS, rows([1])):
        with pytest.raises(SinkError, match="does not follow"):
            sink.write("price", rows([2]), SinkMark("c1", 2, 1, 2, 20))


class SnowflakeClients:
    """The part of ConnectionClients the Snowflake sink uses, from a SnowflakeResource."""

    def __init__(self, resource: SnowflakeResource):
        self.resource = resource
        self.asked_for: list[str] = []

    def snowflake_connection(self, connection: str) -> AbstractContextManager[Any]:
        self.asked_for.append(connection)
        return self.resource.get_connection()


def test_open_sink_and_prepare_tables_for_a_snowflake_pipeline(
    snowflake_resource: SnowflakeResource, schema_name: str, tmp_path: Path
) -> None:
    project = parse_project(
        {
            "pipelines": {
                "p": {
                    "sink": {
                        "kind": "snowflake",
                        "connection": "snow",
                        "database": DATABASE,
                        "schema": schema_name,
                        "warehouse": "LOAD_WH",
                    },
                    "connections": {"snow": {"kind": "snowflake", "account": "a", "user": "u"}},
                    "tables": {
                        "price": {
                            "columns": {"part": "BIGINT", "price": "INTEGER"},
                            "connectors": [{"name": "gen", "transport": {"name": "datagen"}}],
                        },
                        "free": {"connectors": [{"name": "gen", "transport": {"name": "datagen"}}]},
                    },
                }
            }
        }
    )
    pipeline = Pipeline(project, "p", state_dir=tmp_path)
    clients = SnowflakeClients(snowflake_resource)
    sink = open_sink(pipeline, clients)  # type: ignore[arg-type]
    assert isinstance(sink, SnowflakeSink) and sink.schema == schema_name and sink.warehouse == "LOAD_WH"
    assert prepare_tables(sink, pipeline) == ["price"]
    assert sink.table_schema("price") == pa.schema([("part", pa.int64()), ("price", pa.int64())])
    assert sink.table_schema("free") is None
    assert prepare_tables(sink, pipeline) == []  # only what it really created: nothing the second time
    assert clients.asked_for and set(clients.asked_for) == {"snow"}
    pipeline.close()


def test_drop_table_drops_a_table_once(sink: SnowflakeSink) -> None:
    sink.ensure_table("price", COLUMNS, None)
    sink.write("price", rows([1]), SinkMark("c1", 1, 1, 1, 10))
    sink.drop_table("price")
    assert sink.table_schema("price") is None and sink.row_count("price") == 0
    sink.drop_table("price")  # gone already: nothing to do
    assert sink.mark("c1") == SinkMark("c1", 1, 1, 1, 10)  # the marks stay


def test_ingesting_json_files_into_snowflake_counts_bad_records_and_resumes_exactly(
    snowflake_resource: SnowflakeResource, schema_name: str, tmp_path: Path
) -> None:
    (tmp_path / "price.json").write_text(
        "".join(f'{{"id": {i}, "name": "n{i}", "price": {i / 2}}}\n' for i in range(40)) + '{"id": "bad"}\n'
    )
    (tmp_path / "free.json").write_text('{"a": 1, "b": "x"}\n{"a": 2, "b": "y"}\n')

    def file_connector(path: str) -> dict[str, Any]:
        return {
            "name": "file",
            "max_batch_size": 15,
            "format": {"name": "json"},
            "transport": {"name": "file_input", "config": {"path": path}},
        }

    project = parse_project(
        {
            "pipelines": {
                "p": {
                    "sink": {"kind": "snowflake", "connection": "snow", "database": DATABASE, "schema": schema_name},
                    "connections": {"snow": {"kind": "snowflake", "account": "a", "user": "u"}},
                    "tables": {
                        "price": {
                            "columns": {"id": "BIGINT", "name": "VARCHAR", "price": "DOUBLE"},
                            "connectors": [file_connector("price.json")],
                        },
                        "free": {"connectors": [file_connector("free.json")]},
                    },
                }
            }
        },
        path=tmp_path / "connectors.yaml",
    )
    pipeline = Pipeline(project, "p", state_dir=tmp_path / "state")
    with pipeline.state.transaction() as conn:
        pipeline.state.put(conn, "status", "STARTED")
    clients = SnowflakeClients(snowflake_resource)
    with IngestSession(pipeline, clients, log=lambda _: None) as session:  # type: ignore[arg-type]
        for table in ("price", "free"):
            run_to_end(session, table)
        sink = session.sink
        assert sink.row_count("price") == 40 and sink.row_count("free") == 2
        assert sorted(sink.read_table("price")["id"]) == list(range(40))
        assert sink.table_schema("free") == pa.schema([("a", pa.int64()), ("b", pa.string())])
    handle = pipeline.connector("price", "file")
    metrics = handle.state.metrics()
    assert (metrics.total_records, metrics.num_parse_errors, metrics.end_of_input) == (40, 1, True)
    mark = sink.mark(handle.connector_id)
    assert mark is not None and mark.total_records == 40 and mark.position == (tmp_path / "price.json").stat().st_size

    # A new session (as after a restart) finds every connector finished: nothing is loaded twice.
    with IngestSession(pipeline, clients, log=lambda _: None) as session:  # type: ignore[arg-type]
        assert run_to_end(session, "price") == [] and session.sink.row_count("price") == 40
    pipeline.close()
