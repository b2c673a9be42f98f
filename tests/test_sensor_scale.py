"""The orchestration sensor at scale (240 connectors, 24 tables): the right releases and run requests, stable run
keys, and a second tick that writes nothing. Correctness only; ``benchmarks/sensor.py`` measures the time."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster_helpers import opened_pipeline

from connector_assets import build_definitions
from connector_core.lifecycle import Lifecycle
from connector_core.pipeline import Pipeline
from connector_core.project import load_project
from connector_core.state import BatchCommit, ConnectorSnapshot, SQLiteConnectorState
from resources import build_clients

PIPELINE = "scale"
TABLES = 24
CONNECTORS_PER_TABLE = 10
#: Table families by ``table index % 4``:
#: 0 handover: the backfill finished, ``live`` (start_after a string) is released and has work;
#: 1 waiting: the backfill has work, ``live`` keeps waiting;
#: 2 all done: finished, paused, given up (fatal error) and user-paused-after-release connectors: no run, no release;
#: 3 feeds: both feeds finished, ``late`` (start_after a list) and ``ghost`` (a label nobody carries) are released.
BUSY_TABLE = "t0"  #: a run of it is in progress: it is released into but gets no new run


def datagen(name: str, **keys: Any) -> dict[str, Any]:
    return {"name": name, "transport": {"name": "datagen", "config": {"plan": [{"limit": 10}]}}, **keys}


def table_connectors(index: int) -> list[dict[str, Any]]:
    """The connectors of table ``t{index}``: its family's, then finished fillers up to 10."""
    table = f"t{index}"
    family = index % 4
    if family in (0, 1):
        connectors = [datagen("backfill"), datagen("live", start_after=f"{table}.backfill")]
    elif family == 2:
        connectors = [
            datagen("held", paused=True),
            datagen("broken"),
            datagen("repaused", start_after=f"{table}.done0"),
        ]
    else:
        connectors = [
            datagen("feed_a", labels=[f"{table}.feeds"]),
            datagen("feed_b", labels=[f"{table}.feeds"]),
            datagen("late", start_after=[f"{table}.feeds"]),
            datagen("ghost", start_after="nobody.carries.this"),
        ]
    connectors += [datagen(f"done{n}") for n in range(CONNECTORS_PER_TABLE - len(connectors))]
    return connectors


FINISHED = {"done", "feed_a", "feed_b"}  #: name prefixes finished everywhere (the backfill: in family 0)


def commit(pipeline: Pipeline, table: str, name: str, end_of_input: bool) -> None:
    pipeline.connector(table, name).state.commit_batch(
        BatchCommit(position={"emitted": 10}, batch_seq=1, records=10, bytes=80, end_of_input=end_of_input)
    )


@pytest.fixture
def scale_project(tmp_path: Path) -> Path:
    """The project set up (every database created) and its connectors left as ingest runs and users leave them."""
    project_file = tmp_path / "connectors.yaml"
    tables = {f"t{index}": {"connectors": table_connectors(index)} for index in range(TABLES)}
    project_file.write_text(yaml.safe_dump({"pipelines": {PIPELINE: {"tables": tables}}}, sort_keys=False))
    pipeline = Pipeline(load_project(project_file), PIPELINE)
    try:
        assert Lifecycle(pipeline, build_clients(pipeline)).setup(confirm_prerequisites=True).ok
        for handle in pipeline.connectors():
            name, family = handle.spec.name, int(handle.table[1:]) % 4
            if name.rstrip("0123456789") in FINISHED:
                commit(pipeline, handle.table, name, end_of_input=True)
            elif name == "backfill":
                commit(pipeline, handle.table, name, end_of_input=family == 0)
            elif name in ("held", "broken"):
                commit(pipeline, handle.table, name, end_of_input=False)  # data left, but paused / given up
            if name == "broken":
                assert handle.state.record_failed_read("connection refused", fatal_after=1)
            elif name == "repaused":
                handle.state.set_running(True, "start_after t.done0 finished", released_by_start_after=True)
                handle.state.set_running(False, "paused by the user")
    finally:
        pipeline.close()
    return project_file


def tables_of(family: int) -> set[str]:
    return {f"t{index}" for index in range(TABLES) if index % 4 == family}


def database_hashes(folder: Path) -> dict[str, str]:
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.rglob("*")
        if path.suffix in (".sqlite", ".db")
    }


def test_a_tick_over_240_connectors_releases_and_requests_exactly_what_the_rules_say(
    scale_project: Path, instance: dg.DagsterInstance
) -> None:
    defs = build_definitions(scale_project)
    sensor = defs.resolve_sensor_def(f"{PIPELINE}__orchestration")
    busy = instance.create_run_for_job(
        defs.resolve_job_def(f"{PIPELINE}__ingest"),
        status=dg.DagsterRunStatus.STARTED,
        tags={"connectors/pipeline": PIPELINE, "connectors/table": BUSY_TABLE},
    )
    try:
        first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
        with opened_pipeline(scale_project, PIPELINE) as pipeline:
            running = {h.endpoint for h in pipeline.connectors() if h.state.running}
            released = {h.endpoint for h in pipeline.connectors() if h.state.start_after_released}
        expected_released = {f"{t}.live" for t in tables_of(0)} | {
            f"{t}.{name}" for t in tables_of(3) for name in ("late", "ghost")
        }
        assert released - {f"{t}.repaused" for t in tables_of(2)} == expected_released
        assert expected_released <= running
        assert not running & {f"{t}.{name}" for t in tables_of(1) for name in ("live",)}, "their backfill has work"
        assert not running & {f"{t}.{name}" for t in tables_of(2) for name in ("held", "repaused")}

        requests = {request.tags["connectors/table"]: request for request in first.run_requests}
        assert set(requests) == (tables_of(0) - {BUSY_TABLE}) | tables_of(1) | tables_of(3)
        assert all(r.asset_selection == [dg.AssetKey([PIPELINE, t])] for t, r in requests.items())
        assert len({r.run_key for r in requests.values()}) == len(requests), "one run key per table"
        cursor = json.loads(first.cursor)["batch_seq"]
        assert len(cursor) == TABLES * CONNECTORS_PER_TABLE
        assert cursor["t3.feed_a"] == 1 and cursor["t3.late"] == 0

        before = database_hashes(scale_project.parent)
        second = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor))
        assert database_hashes(scale_project.parent) == before, "a tick that releases nothing writes nothing"
        assert {r.tags["connectors/table"]: r.run_key for r in second.run_requests} == {
            table: request.run_key for table, request in requests.items()
        }, "the same state gives the same run keys"
    finally:
        instance.delete_run(busy.run_id)
    third = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert {r.tags["connectors/table"] for r in third.run_requests} == set(requests) | {BUSY_TABLE}


def test_a_snapshot_reads_what_the_database_holds_and_an_older_schema_too(tmp_path: Path) -> None:
    path = tmp_path / "sqlite.db"
    state = SQLiteConnectorState(path, starts_paused=True)
    state.initialize("c1", "p1", "t.c", "datagen", {}, ["t.c"], starts_paused=True)
    state.commit_batch(BatchCommit(position={"emitted": 7}, batch_seq=2, records=7, bytes=56, end_of_input=True))
    state.set_running(True, "start_after t.b finished", released_by_start_after=True)
    state.close()
    snapshot = ConnectorSnapshot.read(path, starts_paused=True)
    assert (snapshot.running, snapshot.start_after_released, snapshot.reads()) == (True, True, 1)
    assert snapshot.position() == ({"emitted": 7}, 2) and snapshot.metrics().finished
    assert ConnectorSnapshot.read(tmp_path / "missing.db", starts_paused=True).running is False
    assert not (tmp_path / "missing.db").exists(), "reading a missing database creates nothing"

    with sqlite3.connect(path) as conn:  # schema version 2: before the consecutive-failure counter
        conn.execute("ALTER TABLE metrics DROP COLUMN consecutive_failures")
        conn.execute("PRAGMA user_version = 2")
    conn.close()
    older = ConnectorSnapshot.read(path, starts_paused=True)
    assert older.position() == snapshot.position() and older.metrics() == snapshot.metrics()
