"""Secrets never land anywhere: with a sentinel value in every ``{env: ...}`` secret of a project (a PostgreSQL
DSN's password, a Kafka SASL password, an S3 secret key, an HTTP bearer token), every procedure and a successful
ingestion, through the command line and through Dagster jobs and assets, leave the sentinels in no state database,
sink, event, materialization metadata, Dagster storage or output. A secret typed as a value is refused by both
front ends with the same rule, and stored nowhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import duckdb
import psycopg
import pytest
from click.testing import CliRunner
from fixtures_services import HttpTestServer, topic_with
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from connector_assets import build_definitions
from connector_cli.main import cli

SENTINELS = {
    "SENTINEL_PG_DSN": "pgS3ntinelPassw0rd",
    "SENTINEL_PG_DSN_NEW": "pgS3ntinelN3wPassw0rd",
    "SENTINEL_KAFKA_PASSWORD": "kafkaS3ntinelPassw0rd",
    "SENTINEL_S3_SECRET": "s3S3ntinelSecretKey",
    "SENTINEL_FEED_TOKEN": "feedS3ntinelT0ken",
}
TYPED_SECRET = "typedS3ntinelSecret"  # given as a value: refused, never stored

PROJECT = """
pipelines:
  shop:
    sink: {{kind: duckdb, path: shop.duckdb}}
    connections:
      events:
        kind: kafka
        config: {{bootstrap.servers: "{bootstrap}", sasl.password: {{env: SENTINEL_KAFKA_PASSWORD}}}}
      db: {{kind: postgres, dsn: {{env: SENTINEL_PG_DSN}}}}
      lake:
        kind: s3
        endpoint_url: "{s3_endpoint}"
        region_name: us-east-1
        aws_access_key_id: testing
        aws_secret_access_key: {{env: SENTINEL_S3_SECRET}}
    tables:
      orders:
        columns: {{id: BIGINT}}
        connectors:
          - name: stream
            transport: {{name: kafka_input, config: {{connection: events, topic: {topic}, enable.partition.eof: true}}}}
            format: {{name: json}}
          - name: history
            transport: {{name: postgres_input, config: {{connection: db, table: old_orders}}}}
          - name: archive
            transport: {{name: s3_input, config: {{connection: lake, bucket: {bucket}, prefix: orders/}}}}
            format: {{name: csv}}
          - name: feed
            transport:
              name: url_input
              config: {{path: "{url}", headers: {{Authorization: {{env: SENTINEL_FEED_TOKEN}}}}}}
            format: {{name: json}}
"""


def with_password(dsn: str, password: str) -> str:
    return make_conninfo(**{**conninfo_to_dict(dsn), "password": password})  # trust auth ignores it


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
    topic = topic_with(kafka_bootstrap, [{"id": i} for i in range(10)])
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE old_orders (id BIGINT PRIMARY KEY)")
        conn.execute("INSERT INTO old_orders SELECT i FROM generate_series(10, 19) AS i")
    s3 = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    s3.put_object(
        Bucket=s3_bucket, Key="orders/part-0.csv", Body=b"id\n" + b"".join(b"%d\n" % i for i in range(20, 30))
    )
    (http_server.directory / "feed.json").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(30, 40)))

    for name, value in SENTINELS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SENTINEL_PG_DSN", with_password(postgres_dsn, SENTINELS["SENTINEL_PG_DSN"]))
    monkeypatch.setenv("SENTINEL_PG_DSN_NEW", with_password(postgres_dsn, SENTINELS["SENTINEL_PG_DSN_NEW"]))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    path = tmp_path / "connectors.yaml"
    url = http_server.url("/feed.json")
    path.write_text(
        PROJECT.format(bootstrap=kafka_bootstrap, s3_endpoint=s3_endpoint, topic=topic, bucket=s3_bucket, url=url)
    )
    return path


PRINTED: list[str] = []  # everything the command line printed, on stdout and stderr


def connectors(project: Path, *args: str, code: int = 0) -> str:
    """Run the command line; its stdout (stdout and stderr are kept in :data:`PRINTED` too)."""
    result = CliRunner().invoke(cli, ["--project-file", str(project), *args])
    assert result.exit_code == code, f"{args}: {result.stdout}\n{result.stderr}"
    PRINTED.extend((result.stdout, result.stderr))
    return result.stdout


def found_in(folder: Path, secrets: list[str]) -> list[tuple[str, str]]:
    """(file, secret) for every file under ``folder`` holding a secret (SQLite WAL files and Dagster storage too)."""
    return [
        (str(path.relative_to(folder)), secret)
        for path in folder.rglob("*")
        if path.is_file() and path.name != "connectors.yaml"
        for secret in secrets
        if secret.encode() in path.read_bytes()
    ]


def test_no_secret_lands_anywhere(project: Path, http_server: HttpTestServer) -> None:
    outputs = [
        connectors(project, "setup", "shop", "--confirm-prerequisites"),
        connectors(project, "pipeline", "shop", "pause"),
        connectors(project, "pipeline", "shop", "update-connection", "db", "--set", "dsn=env:SENTINEL_PG_DSN_NEW"),
        connectors(
            project,
            "pipeline",
            "shop",
            "update-connection",
            "events",
            "--set",
            f"sasl.oauthbearer.client.secret={TYPED_SECRET}",
            code=1,
        ),
        connectors(project, "pipeline", "shop", "resume"),
        connectors(project, "connector", "shop", "orders", "feed", "pause"),
        connectors(project, "connector", "shop", "orders", "feed", "start"),
    ]
    assert "env:NAME" in outputs[3], "the refusal says how to give a secret"

    defs = build_definitions(project)
    with dg.DagsterInstance.get() as instance:  # storage under DAGSTER_HOME, inside the project folder

        def job(name: str, config: dict[str, Any] | None = None) -> None:
            run_config = {"ops": {f"shop__{name}_op": {"config": config}}} if config is not None else None
            result = defs.resolve_job_def(f"shop__{name}").execute_in_process(run_config=run_config, instance=instance)
            assert result.success, name
            outputs.extend(str(event) for event in result.all_events)

        job("pause")
        job("update_connection", {"connection": "db", "values": {"dsn": "env:SENTINEL_PG_DSN"}})
        job("resume")
        job("ingest")
    with duckdb.connect(str(project.parent / "shop.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 40, "a batch of each source landed"
    assert any(
        headers.get("Authorization") == SENTINELS["SENTINEL_FEED_TOKEN"] for _, headers in http_server.requests
    ), "the token was really sent"
    outputs += [
        connectors(project, "run", "shop"),
        connectors(project, "connector", "shop", "orders", "feed", "stats"),
        connectors(project, "pipeline", "shop", "stats", "--format", "json"),
        connectors(project, "pipeline", "shop", "status"),
    ]

    # After every procedure and ingestion the sentinels are in no file under the project folder (state databases
    # with their WAL files, the DuckDB sink, Dagster's storage and logs) and in no output.
    secrets = list(SENTINELS.values())
    assert found_in(project.parent, secrets) == []
    assert [s for s in [*secrets, TYPED_SECRET] if any(s in text for text in outputs + PRINTED)] == []
    state = [p for p in project.parent.rglob("*") if p.is_file() and ".connectors" in p.parts]
    assert state and not [p for p in state if TYPED_SECRET.encode() in p.read_bytes()]


def test_a_secret_typed_into_the_launchpad_is_refused_and_stored_nowhere(project: Path) -> None:
    connectors(project, "setup", "shop", "--confirm-prerequisites")
    connectors(project, "pipeline", "shop", "pause")
    defs = build_definitions(project)
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("shop__update_connection").execute_in_process(
            run_config={
                "ops": {
                    "shop__update_connection_op": {
                        "config": {"connection": "events", "values": {"sasl.oauthbearer.client.secret": TYPED_SECRET}}
                    }
                }
            },
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    response = failure.step_failure_data.user_failure_data.metadata["response"].value
    assert response["response_code"] == "CONNECTOR_CONFIGURATION_PARSING_ERROR"
    assert "env:NAME" in response["message"] and TYPED_SECRET not in json.dumps(response)
    state = [p for p in project.parent.rglob("*") if p.is_file() and ".connectors" in p.parts]
    assert state and not [p for p in state if TYPED_SECRET.encode() in p.read_bytes()]
