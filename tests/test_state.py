"""State databases: layout, WAL, schema version and migrations, transactions, identity, metrics."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from connector_core.pipeline import Pipeline
from connector_core.project import parse_project
from connector_core.secrets import mask_secrets
from connector_core.state import (
    CONNECTOR_MIGRATIONS,
    MAX_PARSE_ERRORS_KEPT,
    BatchCommit,
    SQLiteConnectorState,
    SQLitePipelineState,
    SQLiteStateStore,
    StateError,
)


def make_pipeline(tmp_path: Path) -> Pipeline:
    project = parse_project(
        {
            "pipelines": {
                "p": {
                    "org_slug": "acme",
                    "tables": {"t": {"connectors": [{"name": "c", "transport": {"name": "datagen"}}]}},
                }
            }
        }
    )
    pipeline = Pipeline(project, "p", tmp_path)
    pipeline.ensure_created()
    return pipeline


def test_layout_and_wal(tmp_path: Path) -> None:
    pipeline = make_pipeline(tmp_path)
    handle = pipeline.connector("t", "c")
    assert pipeline.state.path == tmp_path / "p" / "pipeline.sqlite"
    assert handle.state.path == tmp_path / "p" / "connector" / handle.connector_id / "sqlite.db"
    for db in (pipeline.state, handle.state):
        assert db.query("PRAGMA journal_mode")[0][0] == "wal"
        assert db.query("PRAGMA busy_timeout")[0][0] >= 1000


def test_identity_row_and_event_source(tmp_path: Path) -> None:
    pipeline = make_pipeline(tmp_path)
    handle = pipeline.connector("t", "c")
    identity = handle.state.identity()
    assert identity["connector_id"] == handle.connector_id and identity["pipeline_id"] == pipeline.pipeline_id
    assert identity["type"] == "datagen" and identity["name"] == "t.c" and identity["tags"] == ["t.c"]
    assert identity["metadata"]["org_slug"] == "acme"
    source = json.loads(handle.state.events()[0]["source"])
    assert source["connector_id"] == handle.connector_id and source["pipeline_id"] == pipeline.pipeline_id


def test_migration_from_an_older_schema(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(CONNECTOR_MIGRATIONS[0])  # a database written by version 1 of the schema
    conn.execute("INSERT INTO runtime VALUES ('state', 'Paused')")
    conn.execute("PRAGMA user_version = 1")  # written before migration 2 added offsets.reads
    conn.commit()
    conn.close()
    newer = (*CONNECTOR_MIGRATIONS, "ALTER TABLE runtime ADD COLUMN note TEXT")
    from connector_core.state import StateDB

    db = StateDB(path, newer)
    assert db.schema_version == len(newer)
    assert db.query("SELECT value, note FROM runtime")[0][:] == ("Paused", None)  # data kept, column added
    assert db.query("SELECT reads FROM offsets")[0][0] == 0


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SQLiteConnectorState(path)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StateError, match="schema version 99"):
        SQLiteConnectorState(path)


def test_a_failed_transaction_changes_nothing(tmp_path: Path) -> None:
    state = SQLitePipelineState(tmp_path / "p.sqlite")
    state.initialize()
    with pytest.raises(RuntimeError), state.transaction() as conn:
        state.put(conn, "status", "STARTED")
        state.add_event(conn, "x", "CONFIGURING", "STARTED", "OK")
        raise RuntimeError("crash between the status and the commit")
    assert state.status == "CONFIGURING" and state.events() == []


def test_read_only_state_is_not_writable(tmp_path: Path) -> None:
    state = SQLitePipelineState(tmp_path / "p.sqlite")
    state.initialize()
    assert state.writable()
    assert not SQLitePipelineState(tmp_path / "p.sqlite", read_only=True).writable()
    with pytest.raises(StateError, match="does not exist"):
        SQLitePipelineState(tmp_path / "missing.sqlite", read_only=True)


def test_opening_a_pipeline_creates_no_file_and_reads_the_initial_state(tmp_path: Path) -> None:
    project = parse_project(
        {
            "pipelines": {
                "p": {
                    "prerequisites": [{"id": "acl", "title": "Grant READ"}],
                    "tables": {
                        "t": {
                            "connectors": [
                                {"name": "c", "transport": {"name": "datagen"}},
                                {"name": "later", "start_after": "t.c", "transport": {"name": "datagen"}},
                            ]
                        }
                    },
                }
            }
        }
    )
    pipeline = Pipeline(project, "p", tmp_path / "state")
    assert (pipeline.state.status, pipeline.state.configuration_status) == ("CONFIGURING", "INSTALLED")
    assert pipeline.pipeline_id is None and not pipeline.state.scheduling_enabled
    assert [(p["id"], p["done"]) for p in pipeline.state.prerequisites()] == [("acl", False)]
    now, later = pipeline.connectors()
    assert now.state.running and not later.state.running and now.state.metrics().total_records == 0
    assert pipeline.stats(now)["connector_id"] is None and pipeline.hourly_stats() == []
    assert not (tmp_path / "state").exists(), "reading writes nothing"
    pipeline.ensure_created()
    assert pipeline.pipeline_id and now.connector_id and now.state.path.exists()
    assert (pipeline.state.status, later.state.running) == ("CONFIGURING", False)
    ids = (pipeline.pipeline_id, now.connector_id)
    pipeline.close()
    reopened = Pipeline(project, "p", tmp_path / "state")
    assert (reopened.pipeline_id, reopened.connector("t", "c").connector_id) == ids
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "state").rglob("*.sqlite*")}
    reopened.ensure_created()
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "state").rglob("*.sqlite*")} == files, (
        "creating what exists writes nothing"
    )


def test_batches_metrics_hourly_stats_and_parse_errors(tmp_path: Path) -> None:
    state = SQLiteStateStore(tmp_path).connector("p", "id-1")
    state.initialize("id-1", "pipe-1", "t.c", "file_input", {}, [], starts_paused=False)
    errors = [(i, f"bad record {i}") for i in range(150)]
    state.commit_batch(BatchCommit(position={"offset": 10}, batch_seq=1, records=5, bytes=50, end_of_input=False))
    state.commit_batch(
        BatchCommit(position={"offset": 20}, batch_seq=2, records=7, bytes=70, end_of_input=True, parse_errors=errors)
    )
    assert state.position() == ({"offset": 20}, 2)
    metrics = state.metrics()
    assert (metrics.total_records, metrics.total_bytes, metrics.num_parse_errors) == (12, 120, 150)
    assert metrics.finished
    kept = state.parse_errors()
    assert len(kept) == MAX_PARSE_ERRORS_KEPT and kept[-1]["message"] == "bad record 149"
    assert kept[0]["index"] == 150 - MAX_PARSE_ERRORS_KEPT
    [hour] = state.hourly_stats()
    assert (hour["records"], hour["bytes"], hour["parse_errors"]) == (12, 120, 150)
    state.record_transport_error("connection refused", fatal=True)
    assert state.metrics().num_transport_errors == 1 and state.metrics().fatal_error == "connection refused"
    state.clear_fatal_error()
    assert state.metrics().fatal_error is None and state.hourly_stats()[0]["transport_errors"] == 1


def test_consecutive_failed_reads_become_a_fatal_error_and_a_good_read_resets_them(tmp_path: Path) -> None:
    state = SQLiteStateStore(tmp_path).connector("p", "id-1")
    state.initialize("id-1", "pipe-1", "t.c", "url_input", {}, [], starts_paused=False)
    assert state.record_failed_read("refused", fatal_after=3) is None
    assert state.record_failed_read("refused", fatal_after=3) is None
    state.update_progress(0, False)  # a read that worked, even one that found nothing, breaks the series
    assert state.metrics().consecutive_failures == 0
    assert [state.record_failed_read(f"refused {i}", fatal_after=3) for i in range(2)] == [None, None]
    fatal = state.record_failed_read("refused 2", fatal_after=3)
    assert fatal is not None and "3 consecutive failed reads" in fatal and "refused 2" in fatal
    assert state.metrics().fatal_error == fatal and state.metrics().num_transport_errors == 5
    assert state.reads() == 6 and state.events()[0]["kind"] == "fatal_error"
    state.clear_fatal_error()
    assert state.metrics().fatal_error is None and state.metrics().consecutive_failures == 0


def test_secrets_are_masked() -> None:
    config = {"dsn": "postgresql://u:pw@h/db", "sasl.password": "pw", "token": "t", "user": "u", "x": {"env": "PG"}}
    masked = mask_secrets(config)
    assert masked == {
        "dsn": "********",
        "sasl.password": "********",
        "token": "********",
        "user": "u",
        "x": "{env: PG}",
    }
