"""Sensor benchmark: ``.venv/bin/python benchmarks/sensor.py [--sizes 10,100,1000] [--ticks 5] [--profile]
[--backends sqlite,postgres]``.

Each state backend is measured (columns ``sqlite`` and ``postgres``): SQLite files under the state folder, and
PostgreSQL state (``state: {kind: postgres}``) in a fresh database of the local server (``BENCH_POSTGRES_ADMIN_DSN``,
default ``postgresql://postgres@127.0.0.1:5432/postgres``; dropped afterwards), where a tick reads every connector
of the pipeline in a constant number of queries.

One pipeline per size with 10, 100 and 1,000 connectors over several tables (10 connectors a table, at least two
tables). Each table cycles through four kinds of connector: a ``backfill`` that has finished (end of input), a
``live`` with ``start_after`` the backfill (the first tick releases it; it then has work), a ``feed`` with data
left (a few batches committed) and a ``late`` with ``start_after`` the feed's label (it stays paused). The state
databases are made as a real run leaves them: ``setup`` through the lifecycle (DuckDB sink, every database
created), then batches committed into each connector database.

The tick is the real sensor evaluation: the definitions are built from the project file and the sensor
``p__orchestration`` is evaluated with ``dg.build_sensor_context(instance=...)`` on a ``DagsterInstance`` in a
temporary ``DAGSTER_HOME`` (release of ``start_after``, finished labels, tables with work, busy tables, run keys,
cursor). One warm-up tick (it releases the ``live`` connectors), then the best of ``--ticks`` ticks that release
nothing. Printed per size: ms per tick, ms per connector and its ratio to the smallest size; the marginal cost per
connector between the two largest sizes shows the tick is linear in the connector count. The last line is
``ms_per_connector=<at the largest size>`` (goal at most 0.5 ms, bar 2 ms; opening 1,000 SQLite files costs about
0.28 ms each on this VM). Also printed: one tick right after every database was opened writable and closed
again, as an ingest run does (the last connection to a WAL database removes its ``-wal``/``-shm`` files, and the
tick's read-only connections create them again: a cost of the file system, paid once per run).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import yaml

from connector_assets import build_definitions
from connector_core.lifecycle import Lifecycle
from connector_core.pipeline import Pipeline
from connector_core.project import load_project
from connector_core.state import BatchCommit
from resources import build_clients

PIPELINE = "bench"
STATE_DSN_ENV = "BENCH_STATE_DSN"
CONNECTORS_PER_TABLE = 10
KINDS = ("backfill", "live", "feed", "late")


def project_data(connectors: int, backend: str = "sqlite") -> dict[str, object]:
    """A project with ``connectors`` datagen connectors over ``connectors / 10`` tables (at least two); its state in
    PostgreSQL (``$BENCH_STATE_DSN``) with ``backend`` postgres."""
    tables = max(2, connectors // CONNECTORS_PER_TABLE)
    specs: dict[str, list[dict[str, object]]] = {f"t{n}": [] for n in range(tables)}
    for number in range(connectors):
        table = f"t{number % tables}"
        kind = KINDS[len(specs[table]) % len(KINDS)]
        group = len(specs[table]) // len(KINDS)
        spec: dict[str, object] = {"name": f"{kind}{group}", "transport": {"name": "datagen"}}
        if kind == "live":
            spec["start_after"] = f"{table}.backfill{group}"
        elif kind == "feed":
            spec["labels"] = [f"{table}.feeds"]
        elif kind == "late":
            spec["start_after"] = [f"{table}.feeds"]
        specs[table].append(spec)
    pipeline: dict[str, object] = {
        "org_slug": "acme",
        "sink": {"kind": "duckdb", "path": "warehouse.duckdb"},
        "tables": {table: {"connectors": connectors} for table, connectors in specs.items()},
    }
    if backend == "postgres":
        pipeline["connections"] = {"state_db": {"kind": "postgres", "dsn": {"env": STATE_DSN_ENV}}}
        pipeline["state"] = {"kind": "postgres", "connection": "state_db", "schema": f"bench_{connectors}"}
    return {"pipelines": {PIPELINE: pipeline}}


@contextlib.contextmanager
def state_database() -> Iterator[None]:
    """A fresh PostgreSQL database for the state, in ``$BENCH_STATE_DSN`` while the block runs; dropped after."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    admin_dsn = os.environ.get("BENCH_POSTGRES_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"sensor_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    os.environ[STATE_DSN_ENV] = make_conninfo(**(conninfo_to_dict(admin_dsn) | {"dbname": name}))
    try:
        yield
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def build_state(project_file: Path) -> None:
    """``setup`` (every database created), then batches as ingest runs leave them: backfills finished, feeds with
    data left."""
    pipeline = Pipeline(load_project(project_file), PIPELINE)
    try:
        answer = Lifecycle(pipeline, build_clients(pipeline)).setup(confirm_prerequisites=True)
        assert answer.ok, answer.as_dict()
        for handle in pipeline.connectors():
            kind = handle.spec.name.rstrip("0123456789")
            if kind in ("backfill", "feed"):
                for batch in range(1, 4):
                    handle.state.commit_batch(
                        BatchCommit(
                            position={"emitted": 100 * batch},
                            batch_seq=batch,
                            records=100,
                            bytes=800,
                            end_of_input=kind == "backfill" and batch == 3,
                        )
                    )
    finally:
        pipeline.close()


def expected_requests(connectors: int) -> int:
    """Every table has a feed (with work) once it has three connectors or more."""
    return max(2, connectors // CONNECTORS_PER_TABLE)


def close_as_a_run_does(project_file: Path) -> None:
    """Open every database writable and close it, as an ingest run does: the last connection to close a WAL
    database removes its ``-wal`` and ``-shm`` files, which the next reader creates again."""
    Pipeline(load_project(project_file), PIPELINE).close()


def bench_size(connectors: int, ticks: int, work: Path, profile: bool, backend: str) -> tuple[float, float]:
    """Seconds of the best tick of a pipeline with ``connectors`` connectors, and of a tick right after every
    database was closed by a writer."""
    folder = work / f"{backend}-n{connectors}"
    folder.mkdir()
    project_file = folder / "connectors.yaml"
    project_file.write_text(yaml.safe_dump(project_data(connectors, backend), sort_keys=False))
    started = time.perf_counter()
    build_state(project_file)
    print(f"{backend}, {connectors} connectors: state built in {time.perf_counter() - started:.1f} s", flush=True)
    defs = build_definitions(project_file)
    sensor = defs.resolve_sensor_def(f"{PIPELINE}__orchestration")
    (folder / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(folder / "dagster_home")) as instance:

        def tick() -> dg.SensorResult:
            return sensor.evaluate_tick(dg.build_sensor_context(instance=instance))

        warm_up = tick()
        assert len(warm_up.run_requests) == expected_requests(connectors), warm_up.skip_message
        times = []
        for _ in range(ticks):
            started = time.perf_counter()
            data = tick()
            times.append(time.perf_counter() - started)
            assert len(data.run_requests) == expected_requests(connectors)
        close_as_a_run_does(project_file)
        started = time.perf_counter()
        tick()
        after_close = time.perf_counter() - started
        if profile:
            profiler = cProfile.Profile()
            profiler.runcall(tick)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return min(times), after_close


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="10,100,1000", help="connector counts, comma-separated")
    parser.add_argument("--ticks", type=int, default=5, help="timed ticks per size (the best counts)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one tick at each size")
    parser.add_argument("--backends", default="sqlite,postgres", help="state backends, comma-separated")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    for backend in args.backends.split(","):
        print(f"== state backend: {backend}", flush=True)
        with tempfile.TemporaryDirectory(prefix="sensor-bench-") as folder, contextlib.ExitStack() as stack:
            if backend == "postgres":
                stack.enter_context(state_database())
            measured = {size: bench_size(size, args.ticks, Path(folder), args.profile, backend) for size in sizes}
        report(backend, sizes, measured)


def report(backend: str, sizes: list[int], measured: dict[int, tuple[float, float]]) -> None:
    """Print one backend's column: ms per tick and per connector, ratios, the marginal cost."""
    best = {size: seconds for size, (seconds, _) in measured.items()}
    base = best[sizes[0]] * 1000 / sizes[0]
    for size in sizes:
        per_connector = best[size] * 1000 / size
        print(
            f"{backend:>8} {size:>5} connectors: tick {best[size] * 1000:8.1f} ms, {per_connector:.3f} ms/connector, "
            f"ratio vs {sizes[0]}: {per_connector / base:.2f}; right after a run closed every database: "
            f"{measured[size][1] * 1000 / size:.3f} ms/connector"
        )
    if len(sizes) >= 2:
        small, large = sizes[-2], sizes[-1]
        marginal = (best[large] - best[small]) * 1000 / (large - small)
        print(
            f"marginal cost {small}->{large}: {marginal:.3f} ms/connector "
            f"(linear: ms/connector at {large} is {best[large] * 1000 / large / marginal:.2f}x the marginal cost)"
        )
    print(f"{backend}: ms_per_connector={best[sizes[-1]] * 1000 / sizes[-1]:.3f}", flush=True)


if __name__ == "__main__":
    main()
