"""A :class:`connector_core.clients.ConnectionClients` over real clients, helpers to open and read transports, a
check the sink tests share, and a test pipeline with DuckDB clients for ingest tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from dagster_duckdb import DuckDBResource

from connector_core.ingest import IngestSession
from connector_core.pipeline import Pipeline
from connector_core.project import ConnectorSpec, parse_project
from connector_core.sinks import Sink, SinkMark
from connector_core.transports import open_transport
from connector_core.transports.base import ReadResult, TransportContext, TransportReader


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


def open_reader(
    transport: str,
    config: dict[str, Any],
    fmt: dict[str, Any] | None = None,
    name: str = "c",
    **context: Any,
) -> TransportReader:
    """Open the ``transport`` named with its ``config`` (and format), in a context from :func:`make_context`."""
    connector: dict[str, Any] = {"name": name, "transport": {"name": transport, "config": config}}
    if fmt is not None:
        connector["format"] = fmt
    return open_transport(make_context(connector, **context))


def read_until_end(
    reader: TransportReader,
    position: Any = None,
    max_records: int = 10_000,
    *,
    as_stored: bool = False,
    seconds: float = 20,
) -> list[ReadResult]:
    """Read from ``position`` until end of input, each read from the position the last one returned.

    ``as_stored`` passes every position through JSON first, as the sink stores it. Fails after ``seconds``.
    """
    results: list[ReadResult] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = reader.read(position, max_records)
        results.append(result)
        position = json.loads(json.dumps(result.position)) if as_stored else result.position
        if result.end_of_input:
            return results
    raise AssertionError(f"no end of input; last position {position}")


def json_lines(result: ReadResult) -> list[Any]:
    """The JSON values of the lines of a read."""
    return [json.loads(line) for line in (result.data or b"").splitlines()]


def read_until_count(
    reader: TransportReader,
    count: int,
    position: Any = None,
    max_records: int = 100,
    *,
    seconds: float = 20,
    may_end: bool = True,
    records: Callable[[ReadResult], list[Any]] = json_lines,
) -> tuple[list[Any], Any]:
    """Read until ``count`` records came or ``seconds`` passed: the records and the last position.

    With ``may_end=False`` a read at the end of input fails the test (the source must not end on the way).
    """
    got: list[Any] = []
    deadline = time.monotonic() + seconds
    while len(got) < count and time.monotonic() < deadline:
        result = reader.read(position, max_records)
        assert may_end or not result.end_of_input
        got += records(result)
        position = result.position
    return got, position


FIRST_MARK = SinkMark("c1", 1, 1, 1, 10)


@contextmanager
def keeps_only_the_first_batch(
    sink: Sink, table: str, columns: dict[str, str], first_rows: Any, *, check_mark: bool = True
) -> Iterator[None]:
    """Around writes the sink must refuse: before, ``table`` is created and gets ``first_rows`` under
    :data:`FIRST_MARK`; after, it still holds just those rows (and, with ``check_mark``, connector c1 that mark)."""
    sink.ensure_table(table, columns, None)
    sink.write(table, first_rows, FIRST_MARK)
    yield
    assert sink.row_count(table) == first_rows.num_rows
    if check_mark:
        assert sink.mark("c1") == FIRST_MARK


class DuckDBClients:
    """The part of ConnectionClients a DuckDB pipeline needs, from dagster-duckdb's DuckDBResource."""

    def __init__(self, database: Path, config: dict[str, Any] | None = None):
        self.resource = DuckDBResource(database=str(database), connection_config=config or {})

    def duckdb_connection(self) -> AbstractContextManager[Any]:
        return self.resource.get_connection()


def open_pipeline(tmp_path: Path, tables: dict[str, Any], status: str = "STARTED") -> Pipeline:
    """Pipeline ``p`` with ``tables``, its state in ``tmp_path/state`` (or PostgreSQL, in the PostgreSQL turn of
    ``state_backend``), in ``status``."""
    from fixtures_services import with_state_backend  # imported late: pytest loads it as a plugin first

    data = with_state_backend({"pipelines": {"p": {"tables": tables}}})
    project = parse_project(data, path=tmp_path / "connectors.yaml")
    pipeline = Pipeline(project, "p", state_dir=tmp_path / "state")
    with pipeline.state.transaction() as conn:
        pipeline.state.put(conn, "status", status)
    return pipeline


def run_to_end(session: IngestSession, table: str, max_batches: int = 1_000) -> list[Any]:
    """Ingest ``table`` batch after batch until no connector has anything left; the table reports."""
    reports = []
    for _ in range(max_batches):
        report = session.ingest_table(table)
        if not report.batches:
            return reports
        reports.append(report)
    raise AssertionError("never finished")
