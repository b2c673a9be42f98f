"""Secret hygiene on failure paths: a driver's error text that quotes a password (a PostgreSQL DSN whose password
holds ``%`` or a space) is redacted before it is printed, stored, logged or attached; URLs with credentials are
secrets; child programs get a minimal environment, not the process's secrets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner
from clients_for_tests import open_reader, read_until_end
from dagster_helpers import opened_pipeline
from psycopg.conninfo import conninfo_to_dict

from connector_assets import build_definitions
from connector_cli.main import cli
from connector_core.project import ProjectFileError, parse_project
from connector_core.secrets import Redactor, child_environment

#: A password psycopg refuses and quotes whole in its error ("invalid percent-encoded token: ...").
SENTINEL = "hyg%zzS3ntinel"
#: The same kind of secret for the settings an update tests.
NEW_SENTINEL = "new S3ntinel pw"

PROJECT = """
pipelines:
  shop:
    sink: {kind: duckdb, path: shop.duckdb}
    connections:
      db: {kind: postgres, dsn: {env: HYGIENE_DSN}}
    tables:
      orders:
        columns: {id: BIGINT}
        connectors:
          - name: history
            transport: {name: postgres_input, config: {connection: db, table: orders}}
"""


def dsn_with(postgres_dsn: str, password: str) -> str:
    params = conninfo_to_dict(postgres_dsn)
    return f"postgresql://{params.get('user', 'postgres')}:{password}@127.0.0.1:5432/{params['dbname']}"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_dsn: str) -> Path:
    monkeypatch.setenv("HYGIENE_DSN", dsn_with(postgres_dsn, SENTINEL))
    monkeypatch.setenv("HYGIENE_NEW_DSN", dsn_with(postgres_dsn, NEW_SENTINEL))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    path = tmp_path / "connectors.yaml"
    path.write_text(PROJECT)
    return path


def connectors(project: Path, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["--project-file", str(project), *args])
    assert result.exit_code == code, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def force_status(project: Path, pipeline_name: str, status: str) -> None:
    """Put a pipeline in ``status`` directly (past the wizard's checks, to reach a failure path)."""
    with opened_pipeline(project, pipeline_name) as pipeline:
        pipeline.ensure_created()
        with pipeline.state.transaction() as conn:
            pipeline.state.put(conn, "status", status)


def leaks(folder: Path, texts: list[str]) -> list[str]:
    """Files under ``folder`` and texts holding any form of a sentinel (raw or percent-decoded)."""
    forms = [form.encode() for secret in (SENTINEL, NEW_SENTINEL) for form in (secret, secret.replace("%zz", ""))]
    found = [str(p) for p in folder.rglob("*") if p.is_file() and any(f in p.read_bytes() for f in forms)]
    return found + [t for t in texts if any(f.decode() in t for f in forms)]


def test_a_driver_error_quoting_a_password_is_redacted_everywhere(project: Path) -> None:
    outputs = [connectors(project, "setup", "shop", "--confirm-prerequisites", code=1)]
    assert "CONNECTION_FAILED" in outputs[0] and "********" in outputs[0], "psycopg quoted the password"
    outputs.append(connectors(project, "wizard", "shop", "configure"))
    for _ in range(2):  # connect fails the same way; then skip the wizard's check to ingest through the error
        outputs.append(connectors(project, "wizard", "shop", "connect", code=1))
    assert "********" in outputs[-1]

    force_status(project, "shop", "STARTED")  # ingestion meets the broken DSN: each read fails, the third is fatal
    outputs.append(connectors(project, "run", "shop", code=1))
    assert "CONNECTOR_FATAL_ERROR" in outputs[-1] and "********" in outputs[-1]
    outputs.append(connectors(project, "pipeline", "shop", "stats", "--format", "json"))
    outputs.append(connectors(project, "connector", "shop", "orders", "history", "start"))

    defs = build_definitions(project)
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("shop__ingest").execute_in_process(instance=instance, raise_on_error=False)
        outputs += [str(event) for event in result.all_events]
    assert any("********" in text for text in outputs[-len(result.all_events) :]), "the error was reported"

    outputs.append(connectors(project, "pipeline", "shop", "pause"))
    refused = connectors(
        project, "pipeline", "shop", "update-connection", "db", "--set", "dsn=env:HYGIENE_NEW_DSN", code=1
    )
    assert "CONNECTION_FAILED" in refused and "********" in refused
    outputs.append(refused)
    assert leaks(project.parent, outputs) == [], "no sentinel in any file (state, sink, Dagster storage) or output"


def test_urls_with_credentials_are_secrets(tmp_path: Path) -> None:
    with pytest.raises(ProjectFileError, match=r"connections.lake.endpoint_url.*credentials"):
        parse_project(
            {
                "pipelines": {
                    "p": {
                        "connections": {"lake": {"kind": "s3", "endpoint_url": "http://key:pw@127.0.0.1:9000"}},
                        "tables": {"t": {"connectors": [{"name": "c", "transport": {"name": "datagen"}}]}},
                    }
                }
            }
        )
    project = tmp_path / "connectors.yaml"
    project.write_text(
        "pipelines:\n  p:\n    connections:\n      lake: {kind: s3, endpoint_url: 'http://127.0.0.1:9000'}\n"
        "    tables:\n      t:\n        connectors: [{name: c, transport: {name: datagen}}]\n"
    )
    force_status(project, "p", "PAUSED")
    answer = json.loads(
        connectors(
            project, "pipeline", "p", "update-connection", "lake", "--set", "endpoint_url=http://u:pw9@h", code=1
        )
    )
    assert answer["response_code"] == "CONNECTOR_CONFIGURATION_PARSING_ERROR" and "env:NAME" in answer["message"]
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and b"pw9" in p.read_bytes()]


def test_redaction_covers_raw_decoded_and_dsn_forms() -> None:
    redact = Redactor(["postgresql://u:p%41ss%zz@h/db", "host=h password='q w e' user=u", "tok3n-value"])
    text = "p%41ss%zz | pAss%zz | postgresql://u:p%41ss%zz@h/db | q w e | Bearer tok3n-value | user u"
    assert redact(text) == "******** | ******** | ******** | ******** | Bearer ******** | user u"


def test_child_programs_get_a_minimal_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNRELATED_SECRET", "do-not-pass")
    monkeypatch.setenv("CHILD_TOKEN", "given-on-purpose")
    assert "UNRELATED_SECRET" not in child_environment({})
    script = "import json, os; print(json.dumps({'names': ' '.join(sorted(os.environ))}))"
    reader = open_reader(
        "command",
        {"command": [sys.executable, "-c", script], "env": {"MODE": "test", "API_TOKEN": {"env": "CHILD_TOKEN"}}},
        {"name": "json"},
        base_dir=tmp_path,
    )
    output = b"".join(r.data for r in read_until_end(reader) if r.data)
    reader.close()
    names = set(json.loads(output)["names"].split())
    assert {"MODE", "API_TOKEN", "PATH"} <= names and "UNRELATED_SECRET" not in names and "CHILD_TOKEN" not in names
    with pytest.raises(ProjectFileError, match="API_TOKEN.*env:NAME"):
        parse_project(
            {
                "pipelines": {
                    "p": {
                        "tables": {
                            "t": {
                                "connectors": [
                                    {
                                        "name": "c",
                                        "transport": {
                                            "name": "command",
                                            "config": {"command": ["x"], "env": {"API_TOKEN": "lit"}},
                                        },
                                        "format": {"name": "json"},
                                    }
                                ]
                            }
                        }
                    }
                }
            }
        )


def test_command_processors_get_a_minimal_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    from connector_core.ingest import load_processor
    from connector_core.pipeline import Pipeline
    from connector_core.project import Processor

    monkeypatch.setenv("UNRELATED_SECRET", "do-not-pass")
    monkeypatch.setenv("CHILD_TOKEN", "given-on-purpose")
    script = (
        "import json, os, sys\n"
        "for line in sys.stdin:\n"
        "    print(json.dumps({**json.loads(line), 'names': ' '.join(sorted(os.environ))}))\n"
    )
    project = parse_project(
        {"pipelines": {"p": {"tables": {"t": {"connectors": [{"name": "c", "transport": {"name": "datagen"}}]}}}}}
    )
    processor = Processor(
        kind="command", command=[sys.executable, "-c", script], env={"MODE": "x", "API_TOKEN": {"env": "CHILD_TOKEN"}}
    )
    step = load_processor(processor, Pipeline(project, "p", tmp_path / "state"))
    names = set(step(pa.table({"n": [1, 2], "names": ["", ""]})).column("names")[0].as_py().split())
    assert {"MODE", "API_TOKEN", "PATH"} <= names and not names & {"UNRELATED_SECRET", "CHILD_TOKEN"}
