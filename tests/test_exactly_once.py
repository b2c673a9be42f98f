"""Exactly once under kill -9: ingestion in a subprocess is SIGKILLed at random moments, many times, then allowed
to finish; the sink must hold every source record exactly once and the metrics must match it."""

from __future__ import annotations

import json
import os
import random
import select
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from connector_core.pipeline import Pipeline
from connector_core.project import parse_project
from connector_core.sinks.duckdb import SCRATCH_DIRS, SCRATCH_PREFIX

REPO = Path(__file__).resolve().parent.parent
RECORDS = 40_000
BATCH = 200
KILLS = 18
KILL_PHASE_SECONDS = 40  # stop killing after this long, whatever the count

CHILD = """
import json, sys, time
from pathlib import Path
from dagster_duckdb import DuckDBResource
from connector_core.ingest import IngestSession
from connector_core.pipeline import Pipeline
from connector_core.project import parse_project
from connector_core.state import SQLiteConnectorState

# Widen the window between the sink commit and the state commit, so that random kills also land there.
state_commit = SQLiteConnectorState.commit_batch
def slow_state_commit(self, batch):
    time.sleep(0.004)
    state_commit(self, batch)
SQLiteConnectorState.commit_batch = slow_state_commit

class Clients:
    def __init__(self, database):
        self.resource = DuckDBResource(database=str(database))
    def duckdb_connection(self):
        return self.resource.get_connection()

work = Path(sys.argv[1])
project = parse_project(json.loads((work / "project.json").read_text()), path=work / "connectors.yaml")
pipeline = Pipeline(project, "p", state_dir=work / "state")
handle = pipeline.connector("t", "file")
session = IngestSession(pipeline, Clients(work / "warehouse.duckdb"), log=lambda m: print(m, file=sys.stderr, flush=True))
print("ready", flush=True)
while not handle.state.metrics().finished:
    report = session.ingest_batch(handle)
    if report.error:
        raise SystemExit(report.error)
session.close()
print("done", flush=True)
"""


def project_data() -> dict[str, object]:
    return {
        "pipelines": {
            "p": {
                "tables": {
                    "t": {
                        "columns": {"id": "BIGINT", "payload": "VARCHAR"},
                        "connectors": [
                            {
                                "name": "file",
                                "max_batch_size": BATCH,
                                "transport": {"name": "file_input", "config": {"path": "source.json"}},
                                "format": {"name": "json"},
                            }
                        ],
                    }
                }
            }
        }
    }


def start_child(work: Path, run: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(work / "child.py"), str(work)],
        stdout=subprocess.PIPE,
        stderr=open(work / f"child-{run}.err", "wb"),  # noqa: SIM115 - the child owns it
        cwd=REPO,
        env=env,
    )


def wait_for_line(process: subprocess.Popen[bytes], expected: bytes, timeout: float) -> bool:
    """Read the child's stdout until ``expected`` (True) or its end or the deadline (False)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = process.stdout.readline()
        if not line:
            return False
        if line.strip() == expected:
            return True
    return False


def test_kill_9_at_random_moments_neither_loses_nor_duplicates(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    chance = random.Random(seed)
    lines = [json.dumps({"id": i, "payload": f"record {i} " + "x" * (i % 50)}) for i in range(RECORDS)]
    source = tmp_path / "source.json"
    source.write_text("\n".join(lines) + "\n")
    (tmp_path / "project.json").write_text(json.dumps(project_data()))
    (tmp_path / "child.py").write_text(CHILD)
    pipeline = Pipeline(parse_project(project_data(), path=tmp_path / "connectors.yaml"), "p", tmp_path / "state")
    with pipeline.state.transaction() as conn:
        pipeline.state.put(conn, "status", "STARTED")

    kills = 0
    killed_pids: set[str] = set()
    started = time.monotonic()
    while kills < KILLS and time.monotonic() - started < KILL_PHASE_SECONDS:
        child = start_child(tmp_path, kills)
        assert wait_for_line(child, b"ready", timeout=60), f"child did not start (seed {seed})"
        try:
            child.wait(timeout=chance.uniform(0.01, 0.35))  # the random moment of the kill
            break  # it finished before being killed
        except subprocess.TimeoutExpired:
            child.kill()  # SIGKILL
            child.wait()
            killed_pids.add(str(child.pid))
            kills += 1

    final = start_child(tmp_path, kills + 1)
    assert wait_for_line(final, b"done", timeout=120), (
        f"final run did not finish (seed {seed}): {(tmp_path / f'child-{kills + 1}.err').read_text()[-2000:]}"
    )
    assert final.wait(timeout=30) == 0
    assert kills >= 10, f"only {kills} kills happened before the input was done (seed {seed})"

    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as conn:
        count, distinct, low, high = conn.execute(
            'SELECT count(*), count(DISTINCT id), min(id), max(id) FROM main."t"'
        ).fetchall()[0]
        mark = conn.execute("SELECT position, batch_seq, total_records FROM main._connector_positions").fetchall()
    assert (count, distinct, low, high) == (RECORDS, RECORDS, 0, RECORDS - 1), f"seed {seed}"
    assert mark[0][0] == str(source.stat().st_size) and mark[0][2] == RECORDS

    metrics = pipeline.connector("t", "file").state.metrics()
    assert metrics.total_records == count, f"seed {seed}"
    assert metrics.total_bytes == source.stat().st_size
    assert metrics.end_of_input and metrics.num_parse_errors == 0
    assert pipeline.connector("t", "file").state.position() == (source.stat().st_size, mark[0][1])
    pipeline.close()
    # Killed runs leave their DuckDB scratch files behind; the next run removes them (tmpfs holds memory).
    left = [p.name for d in SCRATCH_DIRS for p in d.glob(f"{SCRATCH_PREFIX}*") if p.name.split("-")[2] in killed_pids]
    assert left == [], f"seed {seed}"
