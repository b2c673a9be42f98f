""" "Configure connection" really reaches every connection kind (DESIGN §3): a Kafka metadata request to tansu,
``HeadBucket`` on moto's S3 server, a query through the real Snowflake connector against fakesnow, ``SELECT 1`` on
PostgreSQL (tests/test_lifecycle.py); and the Snowflake warehouse update."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from fixtures_services import SNOWFLAKE_DATABASE, free_port
from test_lifecycle import open_lifecycle as open_test_lifecycle
from test_lifecycle import statuses

from connector_core.lifecycle import Lifecycle
from resources import KafkaResource, connection_resource, initialize

SECRET = "pw-0f9e8d"


@pytest.fixture
def snowflake_password(monkeypatch: pytest.MonkeyPatch, fakesnow_server: dict[str, Any]) -> str:
    """The name of the variable holding the Snowflake password (secrets are only given as env:NAME; fakesnow
    accepts any password)."""
    monkeypatch.setenv("TEST_SNOWFLAKE_PASSWORD", SECRET)
    return "TEST_SNOWFLAKE_PASSWORD"


def snowflake_connection(fakesnow_server: dict[str, Any], password_env: str, port: int | None = None) -> dict[str, Any]:
    return {
        "kind": "snowflake",
        "account": fakesnow_server["account"],
        "user": fakesnow_server["user"],
        "password": {"env": password_env},
        "host": fakesnow_server["host"],
        "port": port or fakesnow_server["port"],
        "protocol": fakesnow_server["protocol"],
    }


def open_lifecycle(tmp_path: Path, connections: dict[str, Any], bucket: str, **pipeline_extra: Any) -> Lifecycle:
    """test_lifecycle's pipeline with ``connections``, whose one table reads ``bucket`` through ``s3``."""
    connector = {
        "name": "files",
        "transport": {"name": "s3_input", "config": {"connection": "s3", "bucket": bucket, "prefix": "orders/"}},
        "format": {"name": "json"},
    }
    tables = {"orders": {"columns": {"id": "BIGINT"}, "connectors": [connector]}}
    return open_test_lifecycle(tmp_path, connections=connections, tables=tables, **pipeline_extra)


@pytest.fixture
def good_connections(
    kafka_bootstrap: str, s3_endpoint: str, fakesnow_server: dict[str, Any], snowflake_password: str
) -> dict[str, Any]:
    return {
        "events": {"kind": "kafka", "config": {"bootstrap.servers": kafka_bootstrap}},
        "s3": {"kind": "s3", "endpoint_url": s3_endpoint, "region_name": "us-east-1"},
        "sf": snowflake_connection(fakesnow_server, snowflake_password),
    }


def test_connect_reaches_kafka_s3_and_snowflake(
    tmp_path: Path, good_connections: dict[str, Any], s3_bucket: str
) -> None:
    life = open_lifecycle(tmp_path, good_connections, s3_bucket)
    assert life.configure().ok
    response = life.connect()
    assert response.ok, response
    assert "3 connection(s)" in response.message
    assert statuses(life) == ("CONFIGURING", "CONNECTED")


@pytest.mark.parametrize(
    ("broken", "cause"),
    [
        ("events", "Connection 'events' failed"),
        ("s3", "Connection 's3' failed"),
        ("sf", "Connection 'sf' failed"),
    ],
)
def test_connect_names_the_connection_that_cannot_be_reached(
    tmp_path: Path, good_connections: dict[str, Any], s3_bucket: str, broken: str, cause: str
) -> None:
    closed = free_port()
    connections = dict(good_connections)
    if broken == "events":
        connections["events"] = {"kind": "kafka", "config": {"bootstrap.servers": f"127.0.0.1:{closed}"}}
    elif broken == "sf":
        connections["sf"] = {**connections["sf"], "port": closed}
    life = open_lifecycle(tmp_path, connections, s3_bucket if broken != "s3" else "no-such-bucket")
    assert life.configure().ok
    response = life.connect()
    assert response.response_code == "CONNECTION_FAILED"
    assert response.message.startswith(cause), response.message
    if broken == "s3":
        assert "404" in response.message or "Not Found" in response.message
    assert statuses(life) == ("CONFIGURING", "CONFIGURED"), "a failed step changes nothing"
    assert SECRET not in response.message, "the password is never printed"


def test_update_warehouse_on_a_snowflake_sink(tmp_path: Path, good_connections: dict[str, Any], s3_bucket: str) -> None:
    schema = f"S_{uuid.uuid4().hex[:8].upper()}"
    sink = {
        "kind": "snowflake",
        "connection": "sf",
        "database": SNOWFLAKE_DATABASE,
        "schema": schema,
        "warehouse": "LOAD_WH",
    }
    life = open_lifecycle(tmp_path, good_connections, s3_bucket, sink=sink)
    assert life.setup(confirm_prerequisites=True).ok
    assert life.update_warehouse("OTHER_WH").response_code == "INVALID_CONNECTOR_STATUS", "only while paused"
    assert life.pause().ok

    response = life.update_warehouse("load_wh")
    assert response.response_code == "WAREHOUSE_ALREADY_USED" and "already used" in response.message
    response = life.update_warehouse("bad-name; DROP TABLE x")
    assert response.response_code == "INVALID_IDENTIFIER" and "bad-name" in response.message

    response = life.update_warehouse("OTHER_WH")
    assert response.ok, response
    assert life.pipeline.sink_settings()["warehouse"] == "OTHER_WH"
    assert life.state.status == "PAUSED"
    assert life.resume().ok, "the pipeline loads through the new warehouse after resume"


def test_kafka_secrets_are_env_vars_read_when_the_resource_is_initialized(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {"bootstrap.servers": "127.0.0.1:9092", "retries": 3, "sasl.password": {"env": "TEST_KAFKA_PASSWORD"}}
    resource = connection_resource({"kind": "kafka", "config": settings})
    assert isinstance(resource, KafkaResource)
    assert resource.secrets == {"sasl.password": "TEST_KAFKA_PASSWORD"}, "only the variable's name is held"
    monkeypatch.delenv("TEST_KAFKA_PASSWORD", raising=False)
    with pytest.raises(RuntimeError, match="TEST_KAFKA_PASSWORD not set"):
        initialize(resource)
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", SECRET)
    assert initialize(resource).settings() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "retries": "3",
        "sasl.password": SECRET,
    }
