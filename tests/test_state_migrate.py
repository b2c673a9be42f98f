"""``connectors state migrate P --to postgres``: a pipeline's SQLite state copied into PostgreSQL in one verified
transaction (connector_core/state_migrate.py, connector_cli/state.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
from click.testing import CliRunner
from clients_for_tests import DuckDBClients, run_to_end

from connector_cli.main import cli
from connector_core import state_migrate
from connector_core.ingest import IngestSession
from connector_core.lifecycle import Lifecycle
from connector_core.pipeline import Pipeline
from connector_core.project import load_project
from resources import build_clients

DSN_VAR = "MIGRATE_TEST_STATE_DSN"
SCHEMA = "connectors"
BACKFILL_RECORDS = 45
BATCH = 10


def project_data(tmp_path: Path, postgres: bool) -> dict[str, Any]:
    """Pipeline ``p``: DuckDB sink, a datagen backfill in batches of 10, a paused connector and one waiting for the
    backfill; its state in ``tmp_path/state`` (SQLite) or, with ``postgres``, in the database of ``$DSN_VAR``."""
    pipeline: dict[str, Any] = {
        "org_slug": "acme",
        "sink": {"kind": "duckdb", "path": str(tmp_path / "warehouse.duckdb")},
        "prerequisites": [{"id": "acl", "title": "Grant READ"}, {"id": "net", "title": "Open the firewall"}],
        "tables": {
            "price": {
                "columns": {"part": "BIGINT", "price": "INTEGER"},
                "connectors": [
                    {
                        "name": "backfill",
                        "max_batch_size": BATCH,
                        "transport": {"name": "datagen", "config": {"seed": 1, "plan": [{"limit": BACKFILL_RECORDS}]}},
                    },
                    {"name": "held", "paused": True, "transport": {"name": "datagen"}},
                    {
                        "name": "live",
                        "start_after": "price.backfill",
                        "transport": {"name": "datagen", "config": {"plan": [{"limit": 5}]}},
                    },
                ],
            }
        },
    }
    if postgres:
        pipeline["connections"] = {"state_db": {"kind": "postgres", "dsn": {"env": DSN_VAR}}}
        pipeline["state"] = {"kind": "postgres", "connection": "state_db", "schema": SCHEMA}
    return {"state_dir": str(tmp_path / "state"), "pipelines": {"p": pipeline}}


def write_project(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))  # JSON is YAML
    return path


def migrate(project: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    """Run ``connectors --project-file PROJECT state migrate p --to postgres EXTRA``: exit code and JSON answer."""
    result = CliRunner().invoke(
        cli, ["--project-file", str(project), "state", "migrate", "p", "--to", "postgres", *extra]
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.output)


def snapshot(pipeline: Pipeline) -> dict[str, Any]:
    """Everything the migration must keep, read through the state interface."""
    return {
        "pipeline_id": pipeline.pipeline_id,
        "status": pipeline.state.status,
        "configuration_status": pipeline.state.configuration_status,
        "scheduling": pipeline.state.scheduling_enabled,
        "config": pipeline.state.config(),
        "prerequisites": pipeline.state.prerequisites(),
        "events": [{k: v for k, v in e.items() if k != "id"} for e in pipeline.state.events(1000)][::-1],
        "connectors": {
            handle.endpoint: {
                "id": handle.connector_id,
                "identity": handle.state.identity() if handle.state.exists else None,
                "state": handle.state.run_state,
                "position": handle.state.position(),
                "reads": handle.state.reads(),
                "metrics": handle.state.metrics(),
                "hourly": handle.state.hourly_stats(),
                "parse_errors": handle.state.parse_errors(),
                "events": [{k: v for k, v in e.items() if k != "id"} for e in handle.state.events(1000)][::-1],
            }
            for handle in pipeline.connectors()
        },
    }


def file_digests(folder: Path) -> dict[str, str]:
    """The content of every database file under ``folder``. A read-only connection to a WAL database may leave an
    empty ``-wal`` and a ``-shm`` beside it (as the sensor's snapshots do): no content, so not compared."""
    assert all(path.stat().st_size == 0 for path in folder.rglob("*-wal")), "no write is pending in a WAL"
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.suffix in (".sqlite", ".db")
    }


def sink_rows(tmp_path: Path) -> int:
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        return con.execute("SELECT count(*) FROM price").fetchone()[0]


def pipeline_rows(dsn: str) -> dict[str, int]:
    """Rows of pipeline ``p`` and of any connector in the schema (empty when the schema does not exist)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.pipelines",)).fetchone()[0] is None:
            return {}
        tables = ["pipelines", "app_state", "app_config", "prerequisites", "connectors", "pipeline_events"]
        counts = {
            t: conn.execute(f"SELECT count(*) FROM {SCHEMA}.{t} WHERE pipeline = 'p'").fetchone()[0] for t in tables
        }
        for table in ("identity", "runtime", "offsets", "metrics", "parse_errors", "hourly_stats", "connector_events"):
            counts[table] = conn.execute(f"SELECT count(*) FROM {SCHEMA}.{table}").fetchone()[0]
        return counts


@pytest.fixture
def sqlite_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_dsn: str) -> dict[str, Any]:
    """Pipeline ``p`` set up on SQLite state with three batches of its backfill ingested (and one transport error
    recorded); the project files of both backends, and a snapshot of the SQLite state."""
    monkeypatch.setenv(DSN_VAR, postgres_dsn)
    sqlite_file = write_project(tmp_path / "sqlite" / "connectors.yaml", project_data(tmp_path, postgres=False))
    postgres_file = write_project(tmp_path / "postgres" / "connectors.yaml", project_data(tmp_path, postgres=True))
    pipeline = Pipeline(load_project(sqlite_file), "p")
    try:
        assert Lifecycle(pipeline, build_clients(pipeline)).setup(confirm_prerequisites=True).ok
        with IngestSession(pipeline, DuckDBClients(tmp_path / "warehouse.duckdb"), log=lambda _: None) as session:
            for _ in range(3):
                assert session.ingest_table("price").row_count
        pipeline.connector("price", "held").state.record_transport_error("a transport error to keep")
        before = snapshot(pipeline)
    finally:
        pipeline.close()
    assert before["connectors"]["price.backfill"]["position"][1] == 3 and sink_rows(tmp_path) == 3 * BATCH
    return {"sqlite": sqlite_file, "postgres": postgres_file, "dsn": postgres_dsn, "before": before}


# ------------------------------------------------------------------------------------------------ migration
def test_migrate_copies_verifies_and_ingestion_continues(tmp_path: Path, sqlite_pipeline: dict[str, Any]) -> None:
    state_dir = tmp_path / "state"
    digests = file_digests(state_dir)
    code, answer = migrate(sqlite_pipeline["postgres"])
    assert code == 0 and answer["response_code"] == "OK", answer
    before = sqlite_pipeline["before"]
    assert answer["pipeline_id"] == before["pipeline_id"] and answer["status"] == "STARTED"
    assert "left untouched" in answer["message"] and "archive" in answer["message"]
    assert {c["endpoint_name"]: c["connector_id"] for c in answer["connectors"]} == {
        endpoint: c["id"] for endpoint, c in before["connectors"].items()
    }
    assert answer["rows"]["pipeline_events"] == len(before["events"]) and answer["rows"]["pipelines"] == 1
    assert file_digests(state_dir) == digests, "the SQLite files are only read"

    pipeline = Pipeline(load_project(sqlite_pipeline["postgres"]), "p")
    try:
        assert pipeline.store.kind == "postgres"
        assert snapshot(pipeline) == before, "every value read through the state interface is the same"
        logs: list[str] = []
        with IngestSession(pipeline, DuckDBClients(tmp_path / "warehouse.duckdb"), log=logs.append) as session:
            reports = run_to_end(session, "price")
        assert reports and not [line for line in logs if "caught up with the sink" in line], logs
        backfill = pipeline.connector("price", "backfill").state
        assert backfill.metrics().total_records == BACKFILL_RECORDS
        assert backfill.position()[1] == -(-BACKFILL_RECORDS // BATCH), "batch numbers go on from the migrated one"
        total = sum(h.state.metrics().total_records for h in pipeline.connectors())
        assert sink_rows(tmp_path) == total >= BACKFILL_RECORDS, "no batch was ingested twice"
    finally:
        pipeline.close()
    assert file_digests(state_dir) == digests, "ingestion on PostgreSQL writes no SQLite file"


def test_second_migrate_refuses_without_force_and_replaces_with_it(sqlite_pipeline: dict[str, Any]) -> None:
    project, dsn = sqlite_pipeline["postgres"], sqlite_pipeline["dsn"]
    assert migrate(project)[0] == 0
    with psycopg.connect(dsn, autocommit=True) as conn:  # something done on PostgreSQL since
        conn.execute(f"UPDATE {SCHEMA}.app_state SET value = 'PAUSED' WHERE pipeline = 'p' AND key = 'status'")
    counts = pipeline_rows(dsn)

    code, answer = migrate(project)
    assert code == 1 and answer["response_code"] == "INTERNAL_ERROR"
    assert "already holds state of pipeline p" in answer["message"] and "--force" in answer["message"]
    assert "status PAUSED" in answer["message"] and "nothing was written" in answer["message"]
    assert pipeline_rows(dsn) == counts

    code, answer = migrate(project, "--force")
    assert code == 0 and answer["replaced"] is True and answer["status"] == "STARTED", answer
    assert pipeline_rows(dsn) == counts
    pipeline = Pipeline(load_project(project), "p")
    try:
        assert snapshot(pipeline) == sqlite_pipeline["before"]
    finally:
        pipeline.close()


def test_migrate_onto_a_sqlite_project_says_to_add_the_state_key(
    tmp_path: Path, sqlite_pipeline: dict[str, Any]
) -> None:
    code, answer = migrate(sqlite_pipeline["sqlite"])
    assert code == 1 and answer["response_code"] == "INTERNAL_ERROR"
    assert "keeps its state in SQLite" in answer["message"]
    assert "state: {kind: postgres, connection: NAME, schema: connectors}" in answer["message"]
    assert pipeline_rows(sqlite_pipeline["dsn"]) == {}


def test_a_failure_before_commit_leaves_nothing_in_postgres(
    tmp_path: Path, sqlite_pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: Any) -> None:
        raise RuntimeError(f"the check broke down on {sqlite_pipeline['dsn']}")

    monkeypatch.setattr(state_migrate, "_verify", fail)
    code, answer = migrate(sqlite_pipeline["postgres"])
    assert code == 1 and answer["response_code"] == "INTERNAL_ERROR" and "the check broke down" in answer["message"]
    assert sqlite_pipeline["dsn"] not in answer["message"] and "*****" in answer["message"], "the DSN is a secret"
    assert pipeline_rows(sqlite_pipeline["dsn"]) == {}, "not even the schema is left"
    monkeypatch.undo()
    monkeypatch.setenv(DSN_VAR, sqlite_pipeline["dsn"])
    assert migrate(sqlite_pipeline["postgres"])[0] == 0, "nothing left behind blocks the next attempt"


def test_a_difference_found_by_the_verification_is_named_and_rolled_back(
    sqlite_pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_insert = state_migrate._insert

    def insert_but_lose_one_event(conn: Any, table: str, *rest: Any) -> None:
        *head, rows = rest
        real_insert(conn, table, *head, rows[:-1] if table == "pipeline_events" else rows)

    monkeypatch.setattr(state_migrate, "_insert", insert_but_lose_one_event)
    code, answer = migrate(sqlite_pipeline["postgres"])
    assert code == 1 and "verification failed" in answer["message"]
    assert "the row count of table pipeline_events" in answer["message"]
    assert pipeline_rows(sqlite_pipeline["dsn"]) == {}


def test_state_dir_option_and_an_unreachable_server_keep_the_secret(
    tmp_path: Path, sqlite_pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "Sup3rSecretPassw0rd"
    monkeypatch.setenv(DSN_VAR, f"postgresql://postgres:{password}@127.0.0.1:1/nowhere?connect_timeout=2")
    args = ["--project-file", str(sqlite_pipeline["postgres"]), "--state-dir", str(tmp_path / "state")]
    result = CliRunner().invoke(cli, [*args, "state", "migrate", "p", "--to", "postgres"])
    answer = json.loads(result.output)
    assert result.exit_code == 1 and answer["response_code"] == "CONNECTION_FAILED", answer
    assert password not in result.output and "Check connection state_db" in answer["message"]

    result = CliRunner().invoke(
        cli, [*args[:2], "--state-dir", str(tmp_path / "elsewhere"), "state", "migrate", "p", "--to", "postgres"]
    )
    answer = json.loads(result.output)
    assert result.exit_code == 1 and "nothing to migrate" in answer["message"]


def test_unknown_pipeline_and_target_are_usage_errors(sqlite_pipeline: dict[str, Any]) -> None:
    args = ["--project-file", str(sqlite_pipeline["postgres"]), "state", "migrate"]
    assert CliRunner().invoke(cli, [*args, "nope", "--to", "postgres"]).exit_code == 2
    assert CliRunner().invoke(cli, [*args, "p", "--to", "sqlite"]).exit_code == 2
    assert CliRunner().invoke(cli, [*args, "p"]).exit_code == 2


def test_an_older_connector_schema_is_copied_and_unnamed_folders_are_reported(
    tmp_path: Path, sqlite_pipeline: dict[str, Any]
) -> None:
    import shutil
    import sqlite3

    connectors = sqlite_pipeline["before"]["connectors"]
    folder = tmp_path / "state" / "p" / "connector"
    old = folder / connectors["price.backfill"]["id"] / "sqlite.db"
    with sqlite3.connect(old) as conn:  # as version 2 left it: no consecutive_failures yet
        conn.execute("ALTER TABLE metrics DROP COLUMN consecutive_failures")
        conn.execute("PRAGMA user_version = 2")
    conn.close()
    shutil.copytree(old.parent, folder / "left-over")
    code, answer = migrate(sqlite_pipeline["postgres"])
    assert code == 0, answer
    assert answer["ignored"] == [str(folder / "left-over")] and "left-over" in answer["message"]
    pipeline = Pipeline(load_project(sqlite_pipeline["postgres"]), "p")
    try:
        state = pipeline.connector("price", "backfill").state
        assert state.metrics() == connectors["price.backfill"]["metrics"], "the newer column takes its default"
        assert state.position() == connectors["price.backfill"]["position"]
    finally:
        pipeline.close()
