"""Backups and restores of the state databases (issue 14) on real parts: the folder store, moto in server mode
through dagster-aws ``S3Resource``, another process writing while snapshots are taken, DuckDB as the sink."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from clients_for_tests import DuckDBClients, RealClients, run_to_end
from fixtures_services import free_port

from connector_core.backups import (
    DEFAULT_BACKUP_FOLDER,
    BackupError,
    BackupStore,
    FolderStore,
    RestoreError,
    S3Store,
    check_backups,
    connector_key,
    list_backups,
    open_store,
    pipeline_key,
    restore_connector,
    restore_missing,
    run_backup_check,
    run_restore_missing,
    take_snapshot,
)
from connector_core.ingest import IngestSession
from connector_core.pipeline import Pipeline
from connector_core.project import Project, parse_project
from connector_core.sinks import SinkError, SinkMark
from connector_core.state import BatchCommit, stored_ids
from connector_core.vocabulary import RunState

ROWS = 500


def s3_client(endpoint: str) -> Any:
    """A boto3 client as the Dagster resource builds it (one attempt: an unreachable store fails at once)."""
    from dagster_aws.s3 import S3Resource

    return S3Resource(
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        max_attempts=1,
    ).get_client()


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BackupStore:
    if request.param == "folder":
        return FolderStore(tmp_path / "backups")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Store(s3_client(endpoint), request.getfixturevalue("s3_bucket"))


def project(tmp_path: Path, connectors: int = 2, org: str = "acme", name: str = "p", **table: Any) -> Project:
    specs = [{"name": f"c{i}", "transport": {"name": "datagen"}} for i in range(connectors)]
    data = {"pipelines": {name: {"org_slug": org, "tables": {"t": {"connectors": specs, **table}}}}}
    return parse_project(data, path=tmp_path / "connectors.yaml")


def created(tmp_path: Path, state: str = "state", **kwargs: Any) -> Pipeline:
    """A pipeline whose databases exist, each with some state written."""
    pipeline = Pipeline(project(tmp_path, **kwargs), kwargs.get("name", "p"), tmp_path / state)
    pipeline.ensure_created()
    for number, handle in enumerate(pipeline.connectors()):
        handle.state.commit_batch(
            BatchCommit(position=number + 10, batch_seq=1, records=5, bytes=50, end_of_input=False)
        )
        handle.state.record_transport_error(f"error of {handle.endpoint}")
    return pipeline


def counting(client: Any) -> list[str]:
    """The S3 operations ``client`` makes from now on."""
    calls: list[str] = []
    client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    return calls


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dump(path: Path) -> str:
    """Every row of a database file as SQL text (read immutable)."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def live_dump(path: Path) -> str:
    """Every row of a database in use (its WAL included) as SQL text."""
    conn = sqlite3.connect(path)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------ stores and keys
def test_keys_metadata_and_no_half_written_file(tmp_path: Path, store: BackupStore) -> None:
    pipeline = created(tmp_path)
    report = check_backups(pipeline, store)
    assert report.ok and len(report.uploaded) == 3, report.as_dict()
    pid = str(pipeline.pipeline_id)
    expected = {pipeline_key("acme", pid): ("pipeline", pipeline.state.path)}
    for handle in pipeline.connectors():
        expected[connector_key("acme", pid, str(handle.connector_id))] = (handle.endpoint, handle.state.path)
    assert set(store.list("acme/datahub/")) == set(expected)
    assert {d.key for d in report.databases} == set(expected)
    assert f"acme/datahub/{pid}/pipeline/pipeline.sqlite" in expected
    for key, (label, _) in expected.items():
        found = store.head(key)
        assert found is not None and found.meta is not None
        assert found.meta.pipeline_name == "p" and found.meta.endpoint == ("" if label == "pipeline" else label)
        entry = next(d for d in report.databases if d.key == key)
        assert (entry.sha256, entry.bytes) == (found.meta.sha256, found.size)
        copy = tmp_path / f"got-{label}"
        store.get(key, copy)
        assert sha256(copy) == found.meta.sha256 and stored_ids(copy)["pipeline_id"] == pid
    if isinstance(store, FolderStore):
        files = sorted(p.relative_to(store.directory).as_posix() for p in store.directory.rglob("*") if p.is_file())
        assert files == sorted([*expected, *(f"{k}.meta.json" for k in expected)])  # no temporary file left
        assert json.loads((store.directory / f"{next(iter(expected))}.meta.json").read_text())["sha256"]
    assert not list((tmp_path / "state").rglob(".*tmp-*"))  # no scratch file left beside the state
    assert [b["key"] for b in list_backups(pipeline, store)] == sorted(expected)


def test_a_large_database_goes_to_s3_as_a_multipart_upload(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    pipeline = created(tmp_path, connectors=1)
    handle = pipeline.connectors()[0]
    for number in range(100):
        handle.state.record_transport_error(f"{number} " + "y" * 100_000)
    store = S3Store(s3_client(s3_endpoint), s3_bucket)
    calls = counting(store.client)
    report = check_backups(pipeline, store)
    assert report.ok and calls.count("CreateMultipartUpload") == 1 and calls.count("CompleteMultipartUpload") == 1
    entry = report.databases[1]
    assert entry.key is not None and entry.bytes is not None and entry.bytes > 8 * 1024 * 1024
    found = store.get(entry.key, tmp_path / "copy.db")
    assert found.meta is not None and found.meta.sha256 == entry.sha256 == sha256(tmp_path / "copy.db")
    assert found.meta.endpoint == "t.c0" and found.size == entry.bytes


def test_default_store_is_a_folder_beside_the_state_folder(tmp_path: Path) -> None:
    pipeline = Pipeline(project(tmp_path), "p", tmp_path / "somewhere" / "state")
    store = open_store(pipeline)
    assert isinstance(store, FolderStore) and store.directory == tmp_path / "somewhere" / DEFAULT_BACKUP_FOLDER
    data = {"pipelines": {"p": {"backup": {"directory": "bk"}, "tables": {"t": {"connectors": []}}}}}
    data["pipelines"]["p"]["tables"]["t"]["connectors"] = [{"name": "c", "transport": {"name": "datagen"}}]
    relative = Pipeline(parse_project(data, path=tmp_path / "connectors.yaml"), "p", tmp_path / "state")
    assert open_store(relative).directory == tmp_path / "bk"  # type: ignore[attr-defined]


def test_a_bucket_store_gets_its_client_from_the_pipeline_clients(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    data = project(tmp_path).model_dump(by_alias=True, exclude_none=True)
    data["pipelines"]["p"]["connections"] = {"backups": {"kind": "s3"}}
    data["pipelines"]["p"]["backup"] = {"bucket": s3_bucket, "connection": "backups"}
    pipeline = Pipeline(parse_project(data, path=tmp_path / "connectors.yaml"), "p", tmp_path / "state")
    pipeline.ensure_created()
    with pytest.raises(ValueError, match="clients are needed"):
        open_store(pipeline)
    store = open_store(pipeline, RealClients(s3_endpoint=s3_endpoint))
    assert isinstance(store, S3Store) and store.description == f"s3://{s3_bucket}"
    assert len(check_backups(pipeline, store).uploaded) == 3


def test_nothing_is_backed_up_or_created_before_the_first_write(tmp_path: Path, store: BackupStore) -> None:
    pipeline = Pipeline(project(tmp_path), "p", tmp_path / "state")
    report = check_backups(pipeline, store)
    assert report.ok and not report.uploaded and "does not exist yet" in report.databases[0].reason
    assert not (tmp_path / "state").exists()


# ---------------------------------------------------------------------------------------- the 24-hour rule
def test_the_24_hour_rule_both_ways_with_one_listing(tmp_path: Path, store: BackupStore) -> None:
    pipeline = created(tmp_path, connectors=5)
    calls = counting(store.client) if isinstance(store, S3Store) else []
    start = dt.datetime.now(dt.UTC)
    first = check_backups(pipeline, store, now=start)
    assert len(first.uploaded) == 6 and all(d.reason == "no backup at the key" for d in first.databases)
    if calls:
        assert calls.count("ListObjectsV2") == 1 and calls.count("PutObject") == 6

    calls.clear()
    fresh = check_backups(pipeline, store, now=start + dt.timedelta(hours=23))
    assert fresh.ok and not fresh.uploaded
    assert all("within max_age_hours 24" in d.reason and 22.9 < d.age_hours < 23.1 for d in fresh.databases)
    if calls:
        assert calls == ["ListObjectsV2"]  # one request for the whole pipeline, no HEAD per connector

    stale = check_backups(pipeline, store, now=start + dt.timedelta(hours=25))
    assert len(stale.uploaded) == 6 and all("h old (max_age_hours 24)" in d.reason for d in stale.databases)
    again = check_backups(pipeline, store, now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    assert not again.uploaded  # the new backups are fresh
    forced = check_backups(pipeline, store, force=True)
    assert len(forced.uploaded) == 6 and {d.reason for d in forced.databases} == {"forced"}


def test_max_age_hours_comes_from_the_project_file(tmp_path: Path) -> None:
    data = project(tmp_path).model_dump(by_alias=True, exclude_none=True)
    data["pipelines"]["p"]["backup"] = {"directory": "bk", "max_age_hours": 1}
    pipeline = Pipeline(parse_project(data, path=tmp_path / "connectors.yaml"), "p", tmp_path / "state")
    pipeline.ensure_created()
    store = open_store(pipeline)
    start = dt.datetime.now(dt.UTC)
    assert len(check_backups(pipeline, store, now=start).uploaded) == 3
    assert not check_backups(pipeline, store, now=start + dt.timedelta(minutes=50)).uploaded
    assert len(check_backups(pipeline, store, now=start + dt.timedelta(minutes=70)).uploaded) == 3


def test_the_one_call_checks_records_an_event_and_never_raises(tmp_path: Path) -> None:
    pipeline = created(tmp_path)
    first = run_backup_check(pipeline)  # no backup: key, the default folder beside the state folder
    assert first.ok and len(first.uploaded) == 3 and (tmp_path / DEFAULT_BACKUP_FOLDER / "acme").is_dir()
    event = pipeline.state.events()[0]
    assert event["procedure"] == "backup" and event["response_code"] == "OK" and "3 uploaded" in event["message"]
    events = len(pipeline.state.events())
    assert not run_backup_check(pipeline).uploaded and len(pipeline.state.events()) == events  # nothing: no write

    data = project(tmp_path).model_dump(by_alias=True, exclude_none=True)
    data["pipelines"]["p"]["backup"] = {"bucket": "somewhere"}
    on_s3 = Pipeline(parse_project(data, path=tmp_path / "connectors.yaml"), "p", tmp_path / "state")
    report = run_backup_check(on_s3)  # no clients to reach the bucket: reported
    assert not report.ok and "cannot open the backup store" in report.errors[0]
    restored = run_restore_missing(on_s3)
    assert not restored.ok and "cannot open the backup store" in restored.errors[0]


def test_unreachable_store_and_access_denied_are_reported_never_raised(tmp_path: Path, s3_endpoint: str) -> None:
    pipeline = created(tmp_path)
    before = {p: sha256(p) for p in (tmp_path / "state").rglob("*.s*")}
    closed = S3Store(s3_client(f"http://127.0.0.1:{free_port()}"), "bucket-x")
    denied = S3Store(s3_client(s3_endpoint), "no-such-bucket-here")
    for store, words in ((closed, "Could not connect"), (denied, "NoSuchBucket")):
        report = check_backups(pipeline, store)
        assert not report.ok and len(report.errors) == 3 and not report.uploaded
        assert all(words in e for e in report.errors), report.errors
        assert report.as_dict()["response_code"] == "INTERNAL_ERROR" and "FAILED" in report.message
        restored = restore_missing(Pipeline(project(tmp_path), "p", tmp_path / "elsewhere"), store)
        assert not restored.ok and words in restored.errors[0]
    assert {p: sha256(p) for p in (tmp_path / "state").rglob("*.s*")} == before  # local databases untouched


@pytest.fixture
def list_only_client(s3_endpoint: str, s3_bucket: str) -> Iterator[Any]:
    """A client of an IAM user of the moto server that may list buckets, not read or write objects; moto checks
    IAM policies while the fixture runs (``/moto-api/reset-auth``) and stops checking afterwards."""
    import boto3
    import requests

    iam = boto3.client("iam", endpoint_url=s3_endpoint, region_name="us-east-1")
    user = f"lister-{s3_bucket}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="list-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    from dagster_aws.s3 import S3Resource

    client = S3Resource(
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        max_attempts=1,
    ).get_client()
    requests.post(f"{s3_endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        yield client
    finally:
        requests.post(f"{s3_endpoint}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()


def test_access_denied_by_iam_is_reported_and_nothing_local_changes(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, list_only_client: Any
) -> None:
    """A user that may list but not put or get: every upload is refused (reported per database, the next check
    retries), a restore names the key it may not read, and nothing local changes either way."""
    pipeline = created(tmp_path)
    databases = [pipeline.state.path, *(h.state.path for h in pipeline.connectors())]
    before = [live_dump(path) for path in databases]
    denied = S3Store(list_only_client, s3_bucket)
    report = check_backups(pipeline, denied)
    assert not report.ok and not report.uploaded and len(report.errors) == 3
    assert all("AccessDenied" in e for e in report.errors), report.errors
    assert all("the next check retries" in d.reason for d in report.databases), report.databases
    assert [live_dump(path) for path in databases] == before  # the snapshots' checkpoints change bytes, not rows

    import requests  # the backups an administrator took are there, but this user may not read them

    requests.post(f"{s3_endpoint}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()
    assert check_backups(pipeline, S3Store(s3_client(s3_endpoint), s3_bucket)).ok
    requests.post(f"{s3_endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    elsewhere = Pipeline(project(tmp_path), "p", tmp_path / "elsewhere")
    restored = restore_missing(elsewhere, denied)
    assert not restored.ok and "Forbidden" in restored.errors[0], restored.errors  # HEAD: a 403 without a body
    assert pipeline_key("acme", str(pipeline.pipeline_id), "") in restored.errors[0]
    assert not (tmp_path / "elsewhere").exists() or not any((tmp_path / "elsewhere").rglob("*.s*"))


def test_a_failed_upload_is_reported_and_leaves_nothing(tmp_path: Path) -> None:
    """The listing works, the put fails (the key's folder is a file): reported per database, nothing stored."""
    pipeline = created(tmp_path, connectors=1)
    store = FolderStore(tmp_path / "bk")
    (tmp_path / "bk" / "acme" / "datahub" / str(pipeline.pipeline_id)).mkdir(parents=True)
    (tmp_path / "bk" / "acme" / "datahub" / str(pipeline.pipeline_id) / "connector").write_text("in the way")
    report = check_backups(pipeline, store)
    assert report.uploaded == ["pipeline"] and len(report.errors) == 1 and "t.c0" in report.errors[0]
    assert "the next check retries" in report.databases[1].reason


# ----------------------------------------------------------------------------------------------- snapshots
WRITER = r"""
import sys
from pathlib import Path
from connector_core.state import SQLiteConnectorState

state = SQLiteConnectorState(Path(sys.argv[1]))
state.record_transport_error("e1 " + "x" * 3000)
print("ready", flush=True)
number = 1
while True:
    number += 1
    state.record_transport_error(f"e{number} " + "x" * 3000)
"""


def commits_in(path: Path) -> int:
    """How many of the writer's commits a snapshot holds; fails unless they are exactly its first ones, whole."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        messages = [row[0].split()[0] for row in conn.execute("SELECT message FROM events ORDER BY id")]
        counted = conn.execute("SELECT num_transport_errors FROM metrics").fetchone()[0]
        hourly = conn.execute("SELECT coalesce(sum(transport_errors), 0) FROM hourly_stats").fetchone()[0]
    finally:
        conn.close()
    assert messages == [f"e{n}" for n in range(1, len(messages) + 1)]
    assert counted == hourly == len(messages)
    return len(messages)


def test_snapshots_while_another_process_writes_are_sound_prefixes(tmp_path: Path) -> None:
    database = tmp_path / "sqlite.db"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(database)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        counts = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline or len(counts) < 10:
            copy = tmp_path / f"snapshot-{len(counts)}.db"
            snapshot = take_snapshot(database, copy, sync=True)  # integrity_check passed, or it raises
            assert snapshot.bytes == copy.stat().st_size and snapshot.sha256 == sha256(copy)
            counts.append(commits_in(copy))
            copy.unlink()
        assert writer.poll() is None  # the writer was never stopped by a snapshot
    finally:
        writer.kill()
        writer.wait()
    assert counts == sorted(counts) and counts[0] >= 1, counts
    assert len(set(counts)) >= 3, counts  # the writer moved on between snapshots


PROBE = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 510, 0x40000002)  # SQLite's SHARED byte range
    print("free")
except OSError:
    print("held")
"""


def test_a_snapshot_keeps_the_sqlite_locks_of_this_process(tmp_path: Path) -> None:
    """Closing a descriptor of a database drops every POSIX lock this process holds on it (an open connection's
    SHARED lock, which keeps another process from deleting the WAL): the snapshot reads it from a child."""
    pipeline = created(tmp_path, connectors=1)
    handle = pipeline.connectors()[0]
    path = handle.state.path
    assert path is not None and handle.state.metrics().num_transport_errors == 1  # the connection is open

    def probe() -> str:
        return subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True).stdout.strip()

    assert probe() == "held"
    take_snapshot(path, tmp_path / "copy.db", sync=False)
    assert check_backups(pipeline, FolderStore(tmp_path / "bk")).ok
    assert probe() == "held"
    open(path, "rb").close()  # what a copy made here would do
    assert probe() == "free"


def test_a_database_failing_its_integrity_check_is_not_stored(tmp_path: Path) -> None:
    database = tmp_path / "bad.db"
    conn = sqlite3.connect(database)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE INDEX t_v ON t (v)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"value {n}" * 5,) for n in range(3000)])
    conn.commit()
    conn.close()
    with open(database, "r+b") as handle:  # scramble the middle of a b-tree page
        handle.seek(4096 * 6 + 1000)
        handle.write(b"\x7f" * 300)
    store = FolderStore(tmp_path / "bk")
    from connector_core.backups import backup_database

    with pytest.raises(BackupError, match="fails integrity_check"):
        backup_database(database, store, "k/sqlite.db", {"pipeline_name": "p", "database": "connector"}, tmp_path)
    assert not any(p.is_file() for p in (tmp_path / "bk").rglob("*"))


# ------------------------------------------------------------------------------------------------ restores
def test_automatic_restore_of_a_lost_state_folder(tmp_path: Path, store: BackupStore) -> None:
    pipeline = created(tmp_path)
    ids = {h.endpoint: h.connector_id for h in pipeline.connectors()}
    pid = pipeline.pipeline_id
    assert check_backups(pipeline, store).ok
    pipeline.close()
    shutil.rmtree(tmp_path / "state")
    (tmp_path / "state" / "p" / "connector" / str(ids["t.c0"])).mkdir(parents=True)
    (tmp_path / "state" / "p" / "connector" / str(ids["t.c0"]) / "sqlite.db-wal").write_bytes(b"stale" * 100)

    reopened = Pipeline(project(tmp_path), "p", tmp_path / "state")
    report = restore_missing(reopened, store)
    assert report.ok and report.restored == ["pipeline", "t.c0", "t.c1"], report.as_dict()
    assert reopened.pipeline_id == pid and {h.endpoint: h.connector_id for h in reopened.connectors()} == ids
    event = reopened.state.events()[0]
    assert event["procedure"] == "restore" and pipeline_key("acme", str(pid)) in event["message"]
    assert json.loads(event["source"])["backup_key"] == pipeline_key("acme", str(pid))
    for number, handle in enumerate(reopened.connectors()):
        assert handle.state.position() == (number + 10, 1) and handle.state.metrics().num_transport_errors == 1
        assert (
            handle.state.events()[0]["kind"] == "restored" and "snapshot taken" in handle.state.events()[0]["message"]
        )
    assert not list((tmp_path / "state").rglob(".*tmp-*"))

    again = restore_missing(reopened, store)
    assert again.ok and again.databases == []  # nothing missing: nothing asked of the store

    connector = reopened.connectors()[1]
    reopened.close()
    assert connector.state.path is not None
    connector.state.path.unlink()
    only = restore_missing(Pipeline(project(tmp_path), "p", tmp_path / "state"), store)
    assert only.restored == ["t.c1"]


def test_a_corrupt_backup_is_refused_naming_its_key(tmp_path: Path, store: BackupStore) -> None:
    pipeline = created(tmp_path, connectors=1)
    assert check_backups(pipeline, store).ok
    handle = pipeline.connectors()[0]
    key = connector_key("acme", str(pipeline.pipeline_id), str(handle.connector_id))
    good = tmp_path / "good.db"
    found = store.get(key, good)
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    if isinstance(store, FolderStore):
        (store.directory / key).write_bytes(data)
    else:
        assert found.meta is not None
        store.client.put_object(Bucket=store.bucket, Key=key, Body=bytes(data), Metadata=found.meta.to_metadata())
    pipeline.close()
    assert handle.state.path is not None
    handle.state.path.unlink()

    reopened = Pipeline(project(tmp_path, connectors=1), "p", tmp_path / "state")
    report = restore_missing(reopened, store)
    assert not report.ok and report.restored == []
    assert key in report.errors[0] and "is corrupt" in report.errors[0] and "refused" in report.errors[0]
    assert not handle.state.path.exists()
    assert not [p for p in handle.state.path.parent.iterdir()]  # no scratch left either


def test_a_lost_pipeline_database_is_found_by_its_name(tmp_path: Path, store: BackupStore) -> None:
    other = created(tmp_path, state="other", name="other")
    older = created(tmp_path, state="older")
    assert check_backups(other, store).ok and check_backups(older, store).ok
    time.sleep(0.01)
    newer = created(tmp_path, state="newer")  # the same pipeline name under another id, backed up last
    assert check_backups(newer, store).ok
    assert len({other.pipeline_id, older.pipeline_id, newer.pipeline_id}) == 3

    lost = Pipeline(project(tmp_path), "p", tmp_path / "lost")
    report = restore_missing(lost, store)
    assert report.ok and len(report.restored) == 3
    assert lost.pipeline_id == newer.pipeline_id


def test_exactly_once_after_a_restore_from_an_older_backup(tmp_path: Path) -> None:
    datagen = {"name": "datagen", "config": {"plan": [{"limit": ROWS, "fields": {"id": {}}}]}}
    tables = {
        "t": {"columns": {"id": "BIGINT"}, "connectors": [{"name": "c", "max_batch_size": 100, "transport": datagen}]}
    }
    spec = parse_project(
        {"pipelines": {"p": {"org_slug": "acme", "tables": tables}}}, path=tmp_path / "connectors.yaml"
    )
    clients = DuckDBClients(tmp_path / "warehouse.duckdb")
    store = FolderStore(tmp_path / "bk")

    first = Pipeline(spec, "p", tmp_path / "state")
    with first.state.transaction() as conn:
        first.state.put(conn, "status", "STARTED")
    session = IngestSession(first, clients, log=lambda _: None)
    for _ in range(2):
        session.ingest_table("t")
    assert check_backups(first, store).ok
    for _ in range(2):
        session.ingest_table("t")  # after the backup: the restored database will be 2 batches behind the sink
    session.close()
    first.close()
    shutil.rmtree(tmp_path / "state")

    second = Pipeline(spec, "p", tmp_path / "state")
    assert restore_missing(second, store).restored == ["pipeline", "t.c"]
    assert second.connector("t", "c").state.position()[1] == 2
    logged: list[str] = []
    session = IngestSession(second, clients, log=logged.append)
    run_to_end(session, "t")
    ids = sorted(session.sink.read_table("t")["id"])
    session.close()
    assert ids == list(range(ROWS))  # every record once
    assert any("caught up with the sink" in line for line in logged)


# ----------------------------------------------------------------------------------- onto other ids
def duckdb_move_mark(database: Path) -> Any:
    """The sink step of a restore onto other ids, as the sink's ``move_mark`` does it: one DuckDB transaction."""

    def move(old: str, new: str, replace: bool) -> SinkMark | None:
        table = '"main"."_connector_positions"'
        with duckdb.connect(str(database)) as conn:
            conn.execute("BEGIN")
            own = conn.execute(f"SELECT count(*) FROM {table} WHERE connector_id = ?", [new]).fetchone()
            if own and own[0] and not replace:
                conn.execute("ROLLBACK")
                raise SinkError(f"connector {new} has a mark of its own; --force replaces it")
            row = conn.execute(
                f"SELECT position, batch_seq, total_records, total_bytes FROM {table} WHERE connector_id = ?", [old]
            ).fetchone()
            if row is not None:
                conn.execute(f"DELETE FROM {table} WHERE connector_id = ?", [new])
                conn.execute(f"UPDATE {table} SET connector_id = ? WHERE connector_id = ?", [new, old])
            conn.execute("COMMIT")
        return None if row is None else SinkMark(new, json.loads(row[0]), row[1], row[2], row[3])

    return move


@pytest.fixture
def moved(tmp_path: Path, store: BackupStore) -> Iterator[dict[str, Any]]:
    """An old pipeline (org ``legacy``) that ingested 2 batches of 100 and was backed up; the same project on a new
    state folder (org ``acme``, new ids), paused, on the same DuckDB sink."""
    datagen = {"name": "datagen", "config": {"plan": [{"limit": ROWS, "fields": {"id": {}}}]}}
    connector = {"name": "c", "max_batch_size": 100, "transport": datagen, "paused": True}

    def spec(org: str) -> Project:
        tables = {"t": {"columns": {"id": "BIGINT"}, "connectors": [connector]}}
        return parse_project(
            {"pipelines": {"p": {"org_slug": org, "tables": tables}}}, path=tmp_path / "connectors.yaml"
        )

    clients = DuckDBClients(tmp_path / "warehouse.duckdb")
    old = Pipeline(spec("legacy"), "p", tmp_path / "old-state")
    with old.state.transaction() as conn:
        old.state.put(conn, "status", "STARTED")
    old.ensure_created()
    old.connector("t", "c").state.set_running(True, "test")
    session = IngestSession(old, clients, log=lambda _: None)
    for _ in range(2):
        session.ingest_table("t")
    session.close()
    assert check_backups(old, store).ok
    new = Pipeline(spec("acme"), "p", tmp_path / "new-state")
    with new.state.transaction() as conn:
        new.state.put(conn, "status", "STARTED")
    new.ensure_created()
    yield {
        "old": old,
        "new": new,
        "clients": clients,
        "store": store,
        "from": {
            "from_pipeline_id": str(old.pipeline_id),
            "from_connector_id": str(old.connector("t", "c").connector_id),
        },
        "move_mark": duckdb_move_mark(tmp_path / "warehouse.duckdb"),
    }
    old.close()
    new.close()


def test_restore_onto_other_ids_rewrites_every_id_moves_the_mark_and_stays_paused(moved: dict[str, Any]) -> None:
    new: Pipeline = moved["new"]
    old_ids = [moved["from"]["from_pipeline_id"], moved["from"]["from_connector_id"]]
    handle = new.connector("t", "c")
    result = restore_connector(
        new, moved["store"], "t", "c", **moved["from"], from_org="legacy", move_mark=moved["move_mark"]
    )
    assert result.restored and result.key == connector_key("legacy", *old_ids)
    assert result.mark.connector_id == handle.connector_id and result.mark.batch_seq == 2

    identity = handle.state.identity()
    assert (identity["pipeline_id"], identity["connector_id"]) == (new.pipeline_id, handle.connector_id)
    assert identity["metadata"]["org_slug"] == "acme"
    assert handle.state.run_state is RunState.PAUSED and handle.state.position()[1] == 2
    events = handle.state.events()
    assert events[0]["kind"] == "restored" and result.key in events[0]["message"]
    assert all(json.loads(e["source"])["connector_id"] == handle.connector_id for e in events)
    assert handle.state.path is not None
    text = dump(handle.state.path).replace(events[0]["message"].replace("'", "''"), "")
    assert not any(old in text for old in old_ids)  # no old id anywhere but in the restore's own event

    handle.state.set_running(True, "started by the test")
    session = IngestSession(new, moved["clients"], log=lambda _: None)
    assert session.sink.mark(moved["from"]["from_connector_id"]) is None
    run_to_end(session, "t")
    assert sorted(session.sink.read_table("t")["id"]) == list(range(ROWS))  # nothing read twice
    session.close()


def test_restore_onto_other_ids_refuses_a_running_target_and_a_mark_of_its_own(moved: dict[str, Any]) -> None:
    new: Pipeline = moved["new"]
    handle = new.connector("t", "c")
    args = {**moved["from"], "from_org": "legacy", "move_mark": moved["move_mark"]}
    handle.state.set_running(True, "test")
    with pytest.raises(RestoreError, match="pause it first"):
        restore_connector(new, moved["store"], "t", "c", **args)

    session = IngestSession(new, moved["clients"], log=lambda _: None)
    session.ingest_table("t")  # the target now has a mark of its own
    session.close()
    handle.state.set_running(False, "test")
    assert handle.state.path is not None
    before = dump(handle.state.path)
    with pytest.raises(RestoreError, match=r"refused by the sink: .*--force") as refused:
        restore_connector(new, moved["store"], "t", "c", **args)
    assert connector_key("legacy", args["from_pipeline_id"], args["from_connector_id"]) in str(refused.value)
    assert dump(handle.state.path) == before  # nothing local changed
    assert not [p for p in handle.state.path.parent.iterdir() if p.name.startswith(".")]

    result = restore_connector(new, moved["store"], "t", "c", **args, force=True)
    assert result.mark.batch_seq == 2 and handle.state.position()[1] == 2
    with pytest.raises(RestoreError, match="no backup at|NoSuchKey|Not Found|404"):
        restore_connector(new, moved["store"], "t", "c", **{**args, "from_connector_id": "0" * 36})


def test_restore_onto_a_connector_of_another_transport_is_refused(moved: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text("")
    connector = {
        "name": "c",
        "paused": True,
        "format": {"name": "json"},
        "transport": {"name": "file_input", "config": {"path": "in.json"}},
    }
    tables = {"t": {"columns": {"id": "BIGINT"}, "connectors": [connector]}}
    spec = parse_project({"pipelines": {"p": {"tables": tables}}}, path=tmp_path / "connectors.yaml")
    other = Pipeline(spec, "p", tmp_path / "other-state")
    args = {**moved["from"], "from_org": "legacy", "move_mark": moved["move_mark"]}
    with pytest.raises(RestoreError, match="is a datagen connector, t.c a file_input one"):
        restore_connector(other, moved["store"], "t", "c", **args)
    assert other.connector("t", "c").state.position() == (None, 0)
    other.close()
