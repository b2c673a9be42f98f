"""The PostgreSQL state backend on its own: a sensor tick in a constant number of queries, readers that create
nothing, the lifecycle lock across processes, row locks between writers, schema versions, and backups that say
they are the database's job. (The lifecycle, ingestion and orchestration modules run on both backends through
the ``state_backend`` fixture.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fixtures_services import STATE_DSN_ENV, STATE_SCHEMA_ENV, with_state_backend

from connector_core import orchestration
from connector_core.lifecycle import Lifecycle
from connector_core.pipeline import Pipeline
from connector_core.project import parse_project
from connector_core.state import BatchCommit, StateError
from connector_core.state_postgres import MIGRATIONS, PostgresStateStore
from resources import build_clients

pytestmark = pytest.mark.parametrize("state_backend", ["postgres"], indirect=True)


@pytest.fixture
def postgres_state(state_backend: str) -> str:
    """The schema of this test's PostgreSQL state."""
    return os.environ[STATE_SCHEMA_ENV]


def project(tmp_path: Path, connectors: int) -> Any:
    """``connectors`` datagen connectors in two tables, the second ones waiting for the first (start_after)."""
    tables: dict[str, Any] = {"a": {"connectors": []}, "b": {"connectors": []}}
    for number in range(connectors):
        tables["a"]["connectors"].append({"name": f"c{number}", "transport": {"name": "datagen"}})
    tables["b"]["connectors"].append(
        {"name": "late", "start_after": "a.c0", "transport": {"name": "datagen", "config": {"plan": [{"limit": 5}]}}}
    )
    data = {"pipelines": {"p": {"sink": {"kind": "duckdb", "path": str(tmp_path / "w.duckdb")}, "tables": tables}}}
    return parse_project(with_state_backend(data), path=tmp_path / "connectors.yaml")


def set_up(tmp_path: Path, connectors: int) -> Any:
    loaded = project(tmp_path, connectors)
    pipeline = Pipeline(loaded, "p")
    try:
        assert Lifecycle(pipeline, build_clients(pipeline)).setup(confirm_prerequisites=True).ok
        for handle in pipeline.connectors("a"):
            handle.state.commit_batch(
                BatchCommit(position={"n": 1}, batch_seq=1, records=3, bytes=9, end_of_input=False)
            )
    finally:
        pipeline.close()
    return loaded


def queries_of_a_tick(loaded: Any, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many statements one read-only tick sends (open, rules, work keys)."""
    sent: list[str] = []
    real = PostgresStateStore.query

    def counting(self: PostgresStateStore, statement: str, *args: Any, **kwargs: Any) -> list[Any]:
        sent.append(statement)
        return real(self, statement, *args, **kwargs)

    monkeypatch.setattr(PostgresStateStore, "query", counting)
    pipeline, released = orchestration.open_for_tick(loaded, "p")
    try:
        assert released == []
        work = orchestration.tables_with_work(pipeline)
        keys = [orchestration.work_key(pipeline, table, handles) for table, handles in work.items()]
        assert keys and all(keys)
    finally:
        pipeline.close()
        monkeypatch.setattr(PostgresStateStore, "query", real)
    return len(sent)


def test_a_tick_reads_every_connector_in_a_constant_number_of_queries(
    tmp_path: Path, postgres_state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = set_up(tmp_path / "small", 3)
    monkeypatch.setenv(STATE_SCHEMA_ENV, postgres_state + "_large")
    large = set_up(tmp_path / "large", 60)
    counts = queries_of_a_tick(small, monkeypatch), queries_of_a_tick(large, monkeypatch)
    assert counts[0] == counts[1] <= 6


def test_readers_create_nothing_and_the_first_write_creates_the_schema(tmp_path: Path, postgres_state: str) -> None:
    loaded = project(tmp_path, 2)
    pipeline = Pipeline(loaded, "p")
    assert pipeline.state.status == "CONFIGURING" and not pipeline.state.exists
    assert [h.state.running for h in pipeline.connectors()] == [True, True, False]
    with psycopg.connect(os.environ[STATE_DSN_ENV]) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (postgres_state,)).fetchall()
    assert found == [], "opening and reading a pipeline creates no schema"
    pipeline.ensure_created()
    with psycopg.connect(os.environ[STATE_DSN_ENV]) as conn:
        count = conn.execute(f'SELECT count(*) FROM "{postgres_state}".connectors').fetchone()[0]
    pipeline.close()
    assert count == 3
    assert not list(tmp_path.rglob("*.sqlite")) and not list(tmp_path.rglob("*.db")), "no SQLite file anywhere"


def test_the_lifecycle_lock_is_an_advisory_lock_across_processes(tmp_path: Path, postgres_state: str) -> None:
    loaded = set_up(tmp_path, 1)
    holder = textwrap.dedent(
        f"""
        import sys, time
        sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parents[1])]!r}
        from connector_core.pipeline import Pipeline
        from connector_core.project import load_project
        pipeline = Pipeline(load_project({str(tmp_path / "connectors.yaml")!r}), "p")
        with pipeline.state.procedure_lock():
            print("locked", flush=True)
            sys.stdin.readline()
        """
    )
    (tmp_path / "connectors.yaml").write_text(_yaml(loaded))
    child = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        pipeline = Pipeline(loaded, "p")
        with pytest.raises(StateError, match="another procedure holds the lock of pipeline p"):
            with pipeline.state.procedure_lock(timeout_seconds=0.3):
                pass
        child.kill()  # a dead holder: PostgreSQL ends its session and its lock with it
        child.wait(timeout=10)
        with pipeline.state.procedure_lock(timeout_seconds=10):
            pass
        pipeline.close()
    finally:
        child.kill()


def _yaml(loaded: Any) -> str:
    import yaml

    return yaml.safe_dump(loaded.model_dump(mode="json", by_alias=True, exclude_none=True))


def test_writers_of_one_connector_never_interleave(tmp_path: Path, postgres_state: str) -> None:
    loaded = set_up(tmp_path, 1)
    errors: list[BaseException] = []

    def commit_many() -> None:
        pipeline = Pipeline(loaded, "p")
        try:
            handle = pipeline.connector("a", "c0")
            for _ in range(40):
                handle.state.commit_batch(
                    BatchCommit(position=None, batch_seq=0, records=1, bytes=1, end_of_input=False)
                )
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            pipeline.close()

    threads = [threading.Thread(target=commit_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    pipeline = Pipeline(loaded, "p")
    metrics = pipeline.connector("a", "c0").state.metrics()
    hourly = sum(row["records"] for row in pipeline.connector("a", "c0").state.hourly_stats())
    pipeline.close()
    assert metrics.total_records == 3 + 4 * 40 == hourly, "every increment counted once"


def test_a_schema_newer_than_the_program_is_refused(tmp_path: Path, postgres_state: str) -> None:
    set_up(tmp_path, 1)
    with psycopg.connect(os.environ[STATE_DSN_ENV], autocommit=True) as conn:
        conn.execute(f'UPDATE "{postgres_state}".state_version SET version = %s', (len(MIGRATIONS) + 1,))
    with pytest.raises(StateError, match="newer than this program knows"):
        Pipeline(project(tmp_path, 1), "p")


def test_backup_and_restore_say_the_database_keeps_postgres_state(tmp_path: Path, postgres_state: str) -> None:
    loaded = set_up(tmp_path, 1)
    pipeline = Pipeline(loaded, "p")
    life = Lifecycle(pipeline, build_clients(pipeline))
    backup = life.backup(force=True)
    assert backup.ok and "keeps its state in PostgreSQL" in backup.message and "pg_dump" in backup.message
    assert not backup.data["databases"]
    from connector_core.lifecycle.backups import RestoreSource

    refused = life.restore("a", "c0", RestoreSource(pipeline_id="x" * 36, connector_id="y" * 36))
    assert refused.response_code == "INTERNAL_ERROR" and "keeps its state in PostgreSQL" in refused.message
    pipeline.close()
    assert not (tmp_path / ".connectors-backups").exists() and not (tmp_path / ".connectors").exists()


def test_no_secret_lands_in_the_postgres_state(
    tmp_path: Path, postgres_state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentinel = "Sentinel-Pa55word-7f3c"
    dsn = os.environ[STATE_DSN_ENV].replace("user=postgres", f"user=postgres password={sentinel}")
    assert sentinel in dsn, "the state DSN carries the password (trust auth ignores it)"
    monkeypatch.setenv(STATE_DSN_ENV, dsn)
    monkeypatch.setenv("BROKEN_DSN", f"postgresql://postgres:{sentinel}@127.0.0.1:1/postgres")
    data = with_state_backend(
        {
            "pipelines": {
                "p": {
                    "sink": {"kind": "duckdb", "path": str(tmp_path / "w.duckdb")},
                    "connections": {"broken": {"kind": "postgres", "dsn": {"env": "BROKEN_DSN"}}},
                    "tables": {"a": {"connectors": [{"name": "c", "transport": {"name": "datagen"}}]}},
                }
            }
        }
    )
    pipeline = Pipeline(parse_project(data, path=tmp_path / "connectors.yaml"), "p")
    life = Lifecycle(pipeline, build_clients(pipeline))
    assert life.configure().ok
    failed = life.connect()  # the broken connection's error is stored as an event
    assert failed.response_code == "CONNECTION_FAILED" and sentinel not in failed.message
    pipeline.connector("a", "c").state.record_transport_error(f"could not reach {dsn}")
    pipeline.close()
    with psycopg.connect(os.environ[STATE_DSN_ENV]) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (postgres_state,))
        ]
        stored = " ".join(
            str(row) for table in tables for row in conn.execute(f'SELECT * FROM "{postgres_state}"."{table}"')
        )
    assert "could not reach" in stored, "the message was stored (its secret masked)"
    assert sentinel not in stored, "no secret in any table of the PostgreSQL state"


def test_an_unset_state_dsn_is_a_state_error_naming_the_variable(
    tmp_path: Path, postgres_state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = project(tmp_path, 1)
    monkeypatch.delenv(STATE_DSN_ENV)
    with pytest.raises(
        StateError, match=f"through connection state_db: environment variable {STATE_DSN_ENV} is not set"
    ):
        Pipeline(loaded, "p")


def test_an_unreachable_state_server_is_a_state_error_without_the_password(
    tmp_path: Path, postgres_state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = project(tmp_path, 1)
    monkeypatch.setenv(STATE_DSN_ENV, "postgresql://postgres:Sentinel-Unreachable-9@127.0.0.1:1/postgres")
    with pytest.raises(StateError, match="cannot connect to the PostgreSQL state") as raised:
        Pipeline(loaded, "p")
    assert "Sentinel-Unreachable-9" not in str(raised.value)
