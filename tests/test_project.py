"""The project file: typed models, errors that name the key path and the fix, start_after graph checks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from connector_core.project import ProjectFileError, load_project, parse_project
from connector_core.secrets import EnvSecret, SecretNotSetError

EXAMPLE = Path(__file__).parent.parent / "connectors.yaml"


def base() -> dict[str, Any]:
    return {
        "pipelines": {
            "example": {
                "connections": {"pg": {"kind": "postgres", "dsn": {"env": "PG_DSN"}}},
                "tables": {
                    "price": {
                        "connectors": [
                            {"name": "backfill", "labels": ["price.backfill"], "transport": {"name": "datagen"}},
                            {
                                "name": "live",
                                "start_after": "price.backfill",
                                "transport": {"name": "file_input", "config": {"path": "p.json"}},
                                "format": {"name": "json"},
                            },
                        ]
                    }
                },
            }
        }
    }


def problems(data: dict[str, Any]) -> str:
    with pytest.raises(ProjectFileError) as info:
        parse_project(data)
    return str(info.value)


def connector(data: dict[str, Any], index: int) -> dict[str, Any]:
    return data["pipelines"]["example"]["tables"]["price"]["connectors"][index]


def problems_with(index: int, key: str, value: Any) -> str:
    """The problems of :func:`base` once ``key`` of its ``index``-th connector is set to ``value``."""
    data = base()
    connector(data, index)[key] = value
    return problems(data)


def test_the_example_project_loads() -> None:
    project = load_project(EXAMPLE)
    pipeline = project.pipeline("example")
    assert pipeline.sink.kind == "duckdb"
    live = pipeline.connector("price", "live")
    assert live.start_after == ["price.backfill"] and live.starts_paused
    assert project.base_dir == EXAMPLE.parent


def test_start_after_string_or_list() -> None:
    data = base()
    connector(data, 1)["start_after"] = ["price.backfill", "other"]
    assert parse_project(data).pipeline("example").connector("price", "live").start_after == ["price.backfill", "other"]


def test_unknown_key_names_its_path() -> None:
    message = problems_with(1, "strat_after", "x")
    assert "pipelines.example.tables.price.connectors[1].strat_after: unknown key" in message


def test_unknown_key_in_a_connection_names_its_path() -> None:
    data = base()
    data["pipelines"]["example"]["connections"]["pg"]["pasword"] = "x"
    assert "pipelines.example.connections.pg.pasword: unknown key" in problems(data)


def test_errors_give_the_line(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("labels: [price.backfill]", "labels: [price.backfill]\n            colour: red")
    path = tmp_path / "connectors.yaml"
    path.write_text(text)
    with pytest.raises(ProjectFileError) as info:
        load_project(path)
    line = text.splitlines().index("            colour: red") + 1
    assert f"pipelines.example.tables.price.connectors[0].colour (line {line}): unknown key" in str(info.value)
    assert str(path) in str(info.value)


def test_empty_start_after_is_an_error() -> None:
    message = problems_with(1, "start_after", [])
    assert "pipelines.example.tables.price.connectors[1].start_after" in message and "empty list" in message


def test_duplicate_connector_names() -> None:
    message = problems_with(1, "name", "backfill")
    assert "pipelines.example.tables.price.connectors" in message and "'backfill'" in message


def test_bad_connector_name() -> None:
    assert "connectors[0].name" in problems_with(0, "name", "has space")


def test_start_after_cycle_names_endpoints_and_labels() -> None:
    message = problems_with(0, "start_after", "price.live")
    assert "start_after cycle" in message
    assert "price.backfill waits for label 'price.live' carried by price.live" in message
    assert "price.live waits for label 'price.backfill' carried by price.backfill" in message


def test_start_after_self_loop() -> None:
    message = problems_with(0, "start_after", "price.backfill")
    assert "price.backfill waits for label 'price.backfill' carried by price.backfill" in message


def test_longer_cycle_across_tables_through_custom_labels() -> None:
    data = base()
    tables = data["pipelines"]["example"]["tables"]
    tables["vendor"] = {
        "connectors": [{"name": "v", "labels": ["vend"], "start_after": "price.live", "transport": {"name": "datagen"}}]
    }
    connector(data, 0)["start_after"] = "vend"
    message = problems(data)
    assert "'vend' carried by vendor.v" in message and "'price.live' carried by price.live" in message


def test_a_label_nobody_carries_is_not_a_cycle() -> None:
    data = base()
    connector(data, 1)["start_after"] = "nobody.carries.this"
    parse_project(data)


def test_format_on_datagen_and_missing_format() -> None:
    data = base()
    connector(data, 0)["format"] = {"name": "json"}
    del connector(data, 1)["format"]
    message = problems(data)
    assert "connectors[0]" in message and "produces records itself" in message
    assert "connectors[1]" in message and "needs a 'format'" in message


def test_transport_config_keys_are_checked() -> None:
    data = base()
    connector(data, 1)["transport"]["config"]["folow"] = True
    assert "connectors[1].transport.config.folow: unknown key" in problems(data)


def test_datagen_unknown_key_and_bad_range() -> None:
    data = base()
    connector(data, 0)["transport"]["config"] = {
        "plan": [{"limit": 5, "fields": {"a": {"range": [5, 5]}, "b": {"stratgy": "uniform"}}}]
    }
    message = problems(data)
    assert "transport.config.plan[0].fields.b.stratgy: unknown key" in message
    assert "transport.config.plan[0].fields.a" in message and "empty" in message


def test_unknown_transport_and_format_names() -> None:
    data = base()
    connector(data, 0)["transport"]["name"] = "ftp"
    connector(data, 1)["format"]["name"] = "xml"
    message = problems(data)
    assert "connectors[0].transport.name" in message and "datagen" in message
    assert "connectors[1].format.name" in message


def test_format_config_keys_and_json_reader_are_checked() -> None:
    problems = problems_with(1, "format", {"name": "json", "config": {"arrays": True}})
    assert "connectors[1].format.config.arrays: unknown key 'arrays'; did you mean 'array'?" in problems
    message = problems_with(1, "format", {"name": "json", "config": {"reader": "yyjson"}})
    assert "connectors[1].format" in message and "'yyjson' is not one of auto, arrow" in message


def test_unknown_hook_name() -> None:
    data = base()
    data["pipelines"]["example"]["hooks"] = {"pause_callbak": "m:f"}
    message = problems(data)
    assert "pipelines.example.hooks" in message and "pause_callbak" in message


def test_secrets_are_env_references(monkeypatch: pytest.MonkeyPatch) -> None:
    project = parse_project(base())
    dsn = project.pipeline("example").connections["pg"].dsn
    assert isinstance(dsn, EnvSecret) and dsn.env == "PG_DSN"
    monkeypatch.delenv("PG_DSN", raising=False)
    with pytest.raises(SecretNotSetError, match="PG_DSN"):
        dsn.resolve()
    monkeypatch.setenv("PG_DSN", "postgresql://u:secret@h/db")
    assert dsn.resolve() == "postgresql://u:secret@h/db"


def test_snowflake_password_must_be_a_reference() -> None:
    data = base()
    data["pipelines"]["example"]["connections"]["snow"] = {
        "kind": "snowflake",
        "account": "a",
        "user": "u",
        "password": "plain-text",
    }
    assert "pipelines.example.connections.snow.password" in problems(data)


def test_missing_file_and_bad_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ProjectFileError, match="file not found; pass --project-file"):
        load_project(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipelines: [unclosed")
    with pytest.raises(ProjectFileError, match="not valid YAML"):
        load_project(bad)


def test_project_file_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = copy.deepcopy(base())
    in_cwd = tmp_path / "connectors.yaml"
    in_cwd.write_text(yaml.safe_dump(data))
    data["pipelines"]["from_env"] = data["pipelines"].pop("example")
    from_env = tmp_path / "other.yaml"
    from_env.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONNECTORS_PROJECT_FILE", raising=False)
    assert list(load_project().pipelines) == ["example"]
    monkeypatch.setenv("CONNECTORS_PROJECT_FILE", str(from_env))
    assert list(load_project().pipelines) == ["from_env"]
    assert list(load_project(in_cwd).pipelines) == ["example"]  # an explicit path wins


def test_a_kafka_channel_chooses_its_encoding_and_a_postgres_state_names_a_postgres_connection() -> None:
    data = base()
    pipeline = data["pipelines"]["example"]
    pipeline["connections"]["bus"] = {"kind": "kafka", "config": {"bootstrap.servers": "127.0.0.1:9092"}}
    pipeline["sink"] = {"kind": "kafka", "connection": "bus"}
    assert parse_project(copy.deepcopy(data)).pipeline("example").sink.encoding == "arrow"  # type: ignore[union-attr]
    pipeline["sink"]["encoding"] = "json"
    assert parse_project(copy.deepcopy(data)).pipeline("example").sink.encoding == "json"  # type: ignore[union-attr]
    pipeline["sink"]["encoding"] = "avro"
    assert "pipelines.example.sink.encoding: Input should be 'arrow' or 'json'" in problems(copy.deepcopy(data))

    state = base()
    state["pipelines"]["example"]["state"] = {"kind": "postgres", "connection": "pg", "schema": "connectors"}
    assert parse_project(copy.deepcopy(state)).pipeline("example").state.kind == "postgres"
    state["pipelines"]["example"]["state"]["connection"] = "nope"
    assert "state.connection: no connection 'nope' (connections: pg); add it with kind: postgres" in problems(state)
