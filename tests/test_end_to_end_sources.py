"""``connectors setup`` and ``connectors run`` over every networked transport at once, through the real resources
built from the project file (connections from environment variables): Kafka (tansu), PostgreSQL, S3 (moto) and
HTTP, into the DuckDB sink. A second run ingests nothing twice; no secret reaches a state database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import duckdb
import psycopg
import pytest
from click.testing import CliRunner
from fixtures_services import HttpTestServer, topic_with

from connector_cli.main import cli

PROJECT = """
pipelines:
  shop:
    sink: {{kind: duckdb, path: shop.duckdb}}
    connections:
      events: {{kind: kafka, config: {{bootstrap.servers: {{env: E2E_KAFKA}}}}}}
      db: {{kind: postgres, dsn: {{env: E2E_PG_DSN}}}}
      lake: {{kind: s3, endpoint_url: "{s3_endpoint}", region_name: us-east-1}}
    tables:
      orders:
        columns: {{id: BIGINT, amount: DOUBLE}}
        connectors:
          - name: stream
            transport:
              name: kafka_input
              config: {{connection: events, topic: {topic}, enable.partition.eof: true}}
            format: {{name: json}}
          - name: history
            transport: {{name: postgres_input, config: {{connection: db, table: old_orders}}}}
          - name: archive
            transport: {{name: s3_input, config: {{connection: lake, bucket: {bucket}, prefix: orders/}}}}
            format: {{name: csv}}
          - name: feed
            transport: {{name: url_input, config: {{path: "{url}"}}}}
            format: {{name: json}}
"""


@pytest.fixture
def project(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kafka_bootstrap: str,
    postgres_dsn: str,
    s3_endpoint: str,
    s3_bucket: str,
    http_server: HttpTestServer,
) -> Path:
    topic = topic_with(kafka_bootstrap, [{"id": i, "amount": i / 2} for i in range(100)])

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE old_orders (id BIGINT PRIMARY KEY, amount DOUBLE PRECISION)")
        conn.execute("INSERT INTO old_orders SELECT i, i / 2.0 FROM generate_series(100, 299) AS i")

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for part, ids in enumerate((range(300, 350), range(350, 400))):
        body = "id,amount\n" + "".join(f"{i},{i / 2}\n" for i in ids)
        s3.put_object(Bucket=s3_bucket, Key=f"orders/part-{part}.csv", Body=body.encode())

    (http_server.directory / "feed.json").write_text(
        "".join(json.dumps({"id": i, "amount": i / 2}) + "\n" for i in range(400, 450))
    )

    monkeypatch.setenv("E2E_KAFKA", kafka_bootstrap)
    monkeypatch.setenv("E2E_PG_DSN", postgres_dsn)
    path = tmp_path / "connectors.yaml"
    path.write_text(
        PROJECT.format(s3_endpoint=s3_endpoint, topic=topic, bucket=s3_bucket, url=http_server.url("/feed.json"))
    )
    return path


def connectors(project: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["--project-file", str(project), *args])
    assert result.exit_code == 0, f"{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def test_every_networked_source_lands_once_through_the_cli(project: Path, postgres_dsn: str) -> None:
    assert connectors(project, "setup", "shop", "--confirm-prerequisites")["response_code"] == "OK"

    first = connectors(project, "run", "shop")
    assert first["records_by_connector"] == {
        "orders.stream": 100,
        "orders.history": 200,
        "orders.archive": 100,
        "orders.feed": 50,
    }
    with duckdb.connect(str(project.parent / "shop.duckdb"), read_only=True) as conn:
        rows = conn.execute("SELECT id, amount FROM orders ORDER BY id").fetchall()
    assert rows == [(i, i / 2) for i in range(450)], "every source record exactly once"

    assert connectors(project, "run", "shop")["records"] == 0, "finished connectors bring nothing twice"

    stats = connectors(project, "pipeline", "shop", "stats", "--format", "json")
    assert all(c["metrics"]["end_of_input"] for c in stats["connectors"])
    databases = [p for p in (project.parent / ".connectors").rglob("*") if p.name in ("pipeline.sqlite", "sqlite.db")]
    assert len(databases) == 5, "one pipeline database and one per connector"
    backups = [
        p for p in (project.parent / ".connectors-backups").rglob("*") if p.name in ("pipeline.sqlite", "sqlite.db")
    ]
    assert len(backups) == 5, "the run's start backed each of them up"
    state_bytes = b"".join(p.read_bytes() for p in project.parent.rglob("*sql*") if p.is_file())  # with WAL files
    assert b"orders.history" in state_bytes, "the state databases were read"
    assert postgres_dsn.encode() not in state_bytes, "the DSN is a secret: only its variable's name is stored"
