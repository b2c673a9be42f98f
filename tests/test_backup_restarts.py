"""Backups at (re)starts and the automatic restore, through the command line: `connectors run` checks the 24-hour
rule when it starts, a resume too; a lost state folder is restored before the next run reads it, and the sink's
marks keep every record exactly once; a corrupt backup is refused naming its key, and nothing is created instead."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
from click.testing import CliRunner

from connector_cli.main import cli

PROJECT = """
pipelines:
  demo:
    org_slug: acme
    sink: {kind: duckdb, path: demo.duckdb}
    tables:
      numbers:
        columns: {n: BIGINT}
        connectors:
          - name: gen
            max_batch_size: 300
            transport: {name: datagen, config: {plan: [{limit: 1000}]}}
"""


def connectors(project: Path, *args: str, code: int = 0) -> dict:
    result = CliRunner().invoke(cli, ["--project-file", str(project), *args])
    assert result.exit_code == code, f"{args}: {result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def sink_numbers(project: Path) -> list[int]:
    with duckdb.connect(str(project.parent / "demo.duckdb"), read_only=True) as conn:
        return [row[0] for row in conn.execute("SELECT n FROM numbers ORDER BY n").fetchall()]


def test_restarts_back_up_and_a_lost_state_folder_comes_back(tmp_path: Path) -> None:
    project = tmp_path / "connectors.yaml"
    project.write_text(PROJECT)
    backups = tmp_path / ".connectors-backups" / "acme" / "datahub"
    assert connectors(project, "setup", "demo", "--confirm-prerequisites")["response_code"] == "OK"
    assert connectors(project, "run", "demo")["records"] == 1000
    stored = sorted(p.relative_to(backups) for p in backups.rglob("*.db")) + sorted(backups.rglob("*.sqlite"))
    assert len(stored) == 2, "the run's start backed up the pipeline and its connector"

    assert connectors(project, "pipeline", "demo", "pause")["response_code"] == "OK"
    resumed = connectors(project, "pipeline", "demo", "resume")
    assert "backups_uploaded" not in resumed and "backup_warning" not in resumed, "backups younger than 24 h stay"

    shutil.rmtree(tmp_path / ".connectors")  # the disk with the state is lost
    status = connectors(project, "pipeline", "demo", "status")
    assert status["status"] == "CONFIGURING" and not (tmp_path / ".connectors").exists(), "reading restores nothing"
    again = connectors(project, "run", "demo")
    assert again["records"] == 0, "restored, caught up from the sink's mark: nothing is read twice"
    assert sink_numbers(project) == list(range(1000))
    stats = connectors(project, "connector", "demo", "numbers", "gen", "stats", "--format", "json")
    assert stats["metrics"]["total_records"] == 1000 and stats["metrics"]["end_of_input"]

    shutil.rmtree(tmp_path / ".connectors")
    [connector_backup] = backups.rglob("sqlite.db")
    data = bytearray(connector_backup.read_bytes())
    data[len(data) // 2] ^= 0xFF
    connector_backup.write_bytes(bytes(data))
    refused = connectors(project, "run", "demo", code=1)
    assert refused["response_code"] == "INTERNAL_ERROR" and "connector/" in refused["message"]
    assert not list((tmp_path / ".connectors").rglob("sqlite.db")), "no empty connector database replaces the backup"
