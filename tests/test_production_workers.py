"""Two "machines" that share nothing but PostgreSQL and the sink: worker A and worker B run in separate working
folders, each with its own copy of the project file (state in PostgreSQL, sink Snowflake on fakesnow's server) and
its own ``DAGSTER_HOME`` whose ``dagster.yaml`` points at one PostgreSQL database for Dagster's storage.

A sets the pipeline up (``connectors setup``), B's Dagster runs of ``p__ingest`` ingest; a pause from A stops B's
run within one batch; after a resume from A, B is killed with SIGKILL while it ingests, and a new B finishes the
run: the sink holds every record exactly once, A reads B's progress from the shared state, both instances list
B's runs, and no SQLite file or ``.connectors`` folder appears on either machine.

Each worker is one long-lived process per "machine" (a killed B is replaced by a new one): it imports what its
commands need once, says ``ready``, then carries out commands read from stdin, each a JSON line: ``cli`` runs the
``connectors`` command line in the worker (the console script's code, in the worker's folder and environment),
``ingest`` executes the ``p__ingest`` job of the definitions loaded from ``./connectors.yaml`` as a Dagster run on
the worker's instance (``execute_in_process``: the run, its events and materializations go to the instance). A
process per command would pay the imports (dagster, the Snowflake connector: 5-15 s on a loaded host) each time.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
import snowflake.connector
from fixtures_services import SNOWFLAKE_DATABASE, dagster_storage_url, fresh_database, wait_for

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

RECORDS = 2_400
BATCH = 100
RATE = 400  # records/s at most: the input lasts 6 s or more, so the pause and the kill land before its end
STATE_DSN_ENV = "WORKERS_STATE_DSN"
SNOWFLAKE_PASSWORD_ENV = "WORKERS_SNOWFLAKE_PASSWORD"
REPLY = "@@"  # a worker's answers start with it; anything else on its stdout is not for the test

PROJECT = """\
pipelines:
  p:
    sink: {{kind: snowflake, connection: snow, database: {database}, schema: {schema}, warehouse: LOAD_WH}}
    state: {{kind: postgres, connection: state_db, schema: connectors}}
    max_run_seconds: 120
    connections:
      state_db: {{kind: postgres, dsn: {{env: {state_env}}}}}
      snow:
        kind: snowflake
        account: {account}
        user: {user}
        password: {{env: {password_env}}}
        host: {host}
        port: {port}
        protocol: {protocol}
    tables:
      t:
        columns: {{id: BIGINT, name: VARCHAR}}
        connectors:
          - name: gen
            max_batch_size: {batch}
            transport: {{name: datagen, config: {{plan: [{{limit: {records}, rate: {rate}}}]}}}}
"""

DAGSTER_YAML = """\
storage:
  postgres:
    postgres_url: "{url}"
telemetry:
  enabled: false
"""

WORKER = """
import json, sys, traceback

from click.testing import CliRunner
import dagster as dg
import dagster_snowflake, snowflake.connector  # noqa: F401 - imported once, before the first command

from connector_assets.definitions import build_definitions
from connector_cli.main import cli


def reply(**values):
    print("@@" + json.dumps(values), flush=True)


def ingest():
    defs = build_definitions()  # ./connectors.yaml, loaded for each run as a run worker loads its code location
    with dg.DagsterInstance.get() as instance:  # $DAGSTER_HOME/dagster.yaml
        result = defs.resolve_job_def("p__ingest").execute_in_process(instance=instance, raise_on_error=False)
    stopped = [
        event.materialization.metadata["connectors/stopped_reason"].value
        for event in result.get_asset_materialization_events()
    ]
    return {"run_id": result.run_id, "success": result.success, "stopped": stopped}


reply(ready=True)
for line in sys.stdin:
    command = json.loads(line)
    try:
        if command["do"] == "cli":
            result = CliRunner().invoke(cli, command["args"])
            reply(exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr, error=repr(result.exception))
        else:
            reply(**ingest())
    except Exception:
        reply(error=traceback.format_exc())
"""


class Worker:
    """A worker process of one "machine": its folder, its ``DAGSTER_HOME``, a JSON-lines command channel."""

    def __init__(self, name: str, machine: Path, script: Path, env: dict[str, str]):
        self.name = name
        self.folder = machine / "work"
        self.home = machine / "dagster_home"
        self.log = machine.parent / f"{name}.log"  # outside the machine: its checks see only what the worker made
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(script)],
                cwd=self.folder,
                env={**env, "DAGSTER_HOME": str(self.home)},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # its own process group: a kill takes the whole "machine"
            )

    def send(self, **command: Any) -> None:
        """Send one command (the answer is read by :meth:`answer`)."""
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        self.process.stdin.flush()

    def answer(self, timeout: float) -> dict[str, Any]:
        """The next answer of the worker; fails after ``timeout`` s or when it exits first."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, remaining))
            if not ready:
                raise AssertionError(f"worker {self.name}: no answer after {timeout:g} s; log: {self.tail()}")
            line = self.process.stdout.readline().decode()
            if not line:
                raise AssertionError(f"worker {self.name} exited ({self.process.wait()}); log: {self.tail()}")
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])

    def connectors(self, *args: str, timeout: float = 60) -> dict[str, Any]:
        """Run ``connectors ARGS`` in the worker; its JSON answer (the command must exit 0)."""
        self.send(do="cli", args=list(args))
        answer = self.answer(timeout)
        assert answer.get("exit_code") == 0, f"connectors {' '.join(args)} on {self.name}: {answer}"
        return json.loads(answer["stdout"])

    def tail(self) -> str:
        """The end of the worker's stderr."""
        return self.log.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL the worker's process group (as a machine that dies), and reap it."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def dagster_url() -> Iterator[str]:
    """``postgres_url`` of a fresh database for Dagster's storage (driver psycopg2), dropped afterwards."""
    with fresh_database("dagster_workers") as params:
        yield dagster_storage_url(params)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Every worker a test starts; all killed at its end, passed or failed."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()


class Sink:
    """Reads the Snowflake schema on fakesnow's server: the table's rows and the connector's mark."""

    def __init__(self, server: dict[str, Any], schema: str):
        self.conn = snowflake.connector.connect(**server)
        self.schema = f'"{SNOWFLAKE_DATABASE}"."{schema}"'

    def _one(self, query: str) -> tuple[Any, ...]:
        try:
            with self.conn.cursor() as cursor:
                cursor.execute(query)
                return tuple(cursor.fetchone())
        except snowflake.connector.errors.ProgrammingError as exc:  # not created yet
            if "does not exist" in str(exc):
                return ()
            raise

    def batches(self) -> int:
        """The connector's batch number as committed in the sink (0 before its first batch)."""
        row = self._one(f'SELECT max("batch_seq") FROM {self.schema}."_connector_positions"')
        return int(row[0]) if row and row[0] is not None else 0

    def rows(self) -> tuple[int, int, int, int]:
        """count(*), count(DISTINCT id), min(id), max(id) of the table."""
        return self._one(f'SELECT count(*), count(DISTINCT "id"), min("id"), max("id") FROM {self.schema}."t"')  # type: ignore[return-value]

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def made_locally(machine: Path) -> list[str]:
    """SQLite files, DuckDB files and ``.connectors`` folders anywhere on a machine (its folder and home)."""
    found = [p for p in machine.rglob("*") if p.suffix in (".sqlite", ".db", ".duckdb") or ".sqlite-" in p.name]
    found += [p for p in machine.rglob(".connectors*")]
    return sorted(str(p.relative_to(machine)) for p in found)


@pytest.mark.timeout(150)
def test_two_workers_share_only_postgres_and_the_sink(
    tmp_path: Path, postgres_dsn: str, dagster_url: str, fakesnow_server: dict[str, Any], workers: list[Worker]
) -> None:
    schema = f"S_{uuid.uuid4().hex[:10].upper()}"
    project = PROJECT.format(
        database=SNOWFLAKE_DATABASE,
        schema=schema,
        state_env=STATE_DSN_ENV,
        password_env=SNOWFLAKE_PASSWORD_ENV,
        batch=BATCH,
        records=RECORDS,
        rate=RATE,
        **{key: fakesnow_server[key] for key in ("account", "user", "host", "port", "protocol")},
    )
    machines = {name: tmp_path / f"machine-{name}" for name in ("a", "b")}
    for machine in machines.values():
        (machine / "work").mkdir(parents=True)
        (machine / "dagster_home").mkdir()
        (machine / "work" / "connectors.yaml").write_text(project)  # each machine its own copy
        (machine / "dagster_home" / "dagster.yaml").write_text(DAGSTER_YAML.format(url=dagster_url))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECTORS_", "DAGSTER_"))}
    env |= {STATE_DSN_ENV: postgres_dsn, SNOWFLAKE_PASSWORD_ENV: fakesnow_server["password"]}

    a = Worker("a", machines["a"], script, env)
    b = Worker("b", machines["b"], script, env)
    workers += [a, b]
    # Dagster's tables are created once, here, while the workers import (two first opens of an empty database race).
    with dg.DagsterInstance.from_config(str(a.home)):
        pass
    sink = Sink(fakesnow_server, schema)
    try:
        assert a.answer(90) == {"ready": True}
        setup = a.connectors("setup", "p", "--confirm-prerequisites", timeout=120)
        assert setup["response_code"] == "OK", setup

        # 1. B's first run ingests; A's pause stops it within one batch.
        assert b.answer(90) == {"ready": True}
        b.send(do="ingest")
        wait_for(lambda: sink.batches() >= 2, 60, "B's run to commit two batches")
        assert a.connectors("pipeline", "p", "pause")["response_code"] == "OK"
        at_pause = sink.batches()
        first = b.answer(60)
        assert first.get("success"), first
        assert any("PAUSED" in reason for reason in first["stopped"]), first
        count, distinct, _, _ = sink.rows()
        assert sink.batches() <= at_pause + 1, "after the pause, at most the batch in progress lands"
        assert count == distinct < RECORDS, "the run stopped before the end of the input"

        # 2. After A's resume, B is killed with SIGKILL while its second run ingests.
        assert a.connectors("pipeline", "p", "resume")["response_code"] == "OK"
        b.send(do="ingest")
        resumed_at = sink.batches()
        wait_for(lambda: sink.batches() >= resumed_at + 2, 60, "B's second run to commit two batches")
        delay = random.uniform(0, BATCH / RATE)
        time.sleep(delay)  # a random moment inside a batch (not a synchronisation)
        b.kill()
        killed_at = sink.batches()
        assert sink.rows()[0] < RECORDS, "B was killed before the end of the input"

        # 3. A new B runs to the end: every record exactly once.
        b2 = Worker("b2", machines["b"], script, env)
        workers.append(b2)
        assert b2.answer(90) == {"ready": True}
        b2.send(do="ingest")
        last = b2.answer(90)
        assert last.get("success"), last
        assert sink.rows() == (RECORDS, RECORDS, 0, RECORDS - 1), (
            f"every record exactly once (killed {delay:.3f} s after a commit)"
        )
        assert sink.batches() > killed_at

        # A reads B's progress from the shared state.
        stats = a.connectors("connector", "p", "t", "gen", "stats", "--format", "json")
        metrics = stats["metrics"]
        assert (metrics["total_records"], metrics["end_of_input"]) == (RECORDS, True), stats
        final_batch = sink.batches()
    finally:
        sink.close()

    # The state is in PostgreSQL: the connector's offsets caught up with the sink's mark, the lifecycle's events.
    with psycopg.connect(postgres_dsn) as conn:
        offsets = conn.execute("SELECT batch_seq FROM connectors.offsets").fetchall()
        events = conn.execute("SELECT procedure, to_status FROM connectors.pipeline_events ORDER BY id").fetchall()
    assert offsets == [(final_batch,)], "the state's offsets mirror the sink's mark (after the kill: caught up)"
    assert {("finalize", "STARTED"), ("pause", "PAUSED"), ("resume", "STARTED")} <= set(events), events

    # Dagster's instance (PostgreSQL) holds B's runs, the same seen from A.
    with (
        dg.DagsterInstance.from_config(str(b.home)) as instance_b,
        dg.DagsterInstance.from_config(str(a.home)) as instance_a,
    ):
        runs = {run.run_id: run for run in instance_b.get_runs() if run.job_name == "p__ingest"}
        assert {first["run_id"], last["run_id"]} <= set(runs) and len(runs) == 3, runs
        statuses = sorted(run.status.value for run in runs.values())
        assert statuses == ["STARTED", "SUCCESS", "SUCCESS"], "the killed run stays STARTED (no run monitoring here)"
        assert {run.run_id for run in instance_a.get_runs() if run.job_name == "p__ingest"} == set(runs)
        latest = instance_a.get_latest_materialization_event(dg.AssetKey(["p", "t"]))
        assert latest is not None and latest.run_id == last["run_id"], "A sees B's last materialization"
        assert latest.asset_materialization.metadata["dagster/row_count"].value == RECORDS
        observed = instance_b.fetch_observations(dg.AssetKey(["p", "t"]), limit=100).records
        procedures = {
            record.asset_observation.metadata["connectors/procedure"].value
            for record in observed
            if record.asset_observation is not None and "connectors/procedure" in record.asset_observation.metadata
        }
        assert {"setup", "pipeline pause", "pipeline resume"} <= procedures, (
            f"A's lifecycle history, seen from B's instance: {procedures}"
        )

    for worker in workers:
        worker.kill()
    for machine in machines.values():
        assert made_locally(machine) == [], "no SQLite state, no .connectors folder"
