"""Processors and channels benchmark (issue 15): ``.venv/bin/python benchmarks/processors.py [--records 1000000]``.

The same file of ``--records`` JSON lines (``benchmarks/ingest.py``'s records) goes from ``file_input`` into
DuckDB, in this process, each variant in a fresh folder, best of ``--repeat``:

- ``none``: no processor (the baseline; DuckDB reads the JSON lines itself);
- ``python``: an identity Python processor (``lambda batch: batch``): the batch takes the Arrow path;
- ``node_jsonl``: an identity ``node`` program over the long-lived ``jsonl`` runner that parses and writes every
  record (``JSON.parse`` / ``JSON.stringify``);
- ``node_pass``: the same runner with a ``node`` program that passes its input through without parsing it (the
  protocol's own cost);
- ``kafka_channel``: the upstream pipeline (``file_input`` -> kafka sink on a tansu broker started here, or
  ``$KAFKA_BOOTSTRAP_SERVERS``) then the downstream one (``kafka_input`` with partition EOF -> DuckDB): the whole
  trip from file to downstream table, against ``none``.

It prints records/s and the ratio to ``none`` of each (for the channel also ``channel_up`` and ``channel_down``: the
best time of each half on its own), then last ``ratio=<node_jsonl / none>`` (when measured; else the ratio of the
last variant named). ``--only NAME`` (repeatable) measures ``none`` and the variants named. Goals: python >= 0.9, node_jsonl >= 0.3,
kafka_channel >= 0.5. No Arrow IPC variant for node: no JavaScript Arrow library is installed by ``.ci/run`` (the
``arrow`` protocol is measured with Python children in the tests only).

Measured on the shared 2-core host (best of 3; another benchmark ran at times, so single runs moved by up to 2x;
variants compared within one run, phases timed by wrapping the sink's and the runners' methods):

=============  ======================  ======================  =================================================
variant        before                  after                   phases (1M records, 3 batches of ~32 MB)
=============  ======================  ======================  =================================================
none           0.58-0.74 s             0.54-0.56 s             ``write_json_lines`` 0.46-0.50
python         0.99-1.08 s (0.75)      0.60-0.65 s (0.87-0.91) parse 0.47 -> 0.23-0.32, insert 0.28 -> 0.27-0.31,
                                                               final checkpoint 0.16 -> 0.03
node_jsonl     4.22-4.26 s (0.18)      2.99-3.08 s (0.18-0.21) parse 0.31, encode 0.31 -> hidden, answer (node's
                                                               work, reading, decode) 3.06 -> 2.25, insert 0.32
                                                               -> sink loads the answer 0.50-0.55
node_pass      1.96-2.26 s (0.33)      1.47-1.53 s (0.38-0.40) answer 0.88 -> ~0.3, insert 0.26 -> load 0.50
=============  ======================  ======================  =================================================

What changed: (1) the DuckDB sink's JSON reader (the parse of a batch that has processors) raised
``maximum_object_size`` to the size of the piece: that halves DuckDB's reader speed (0.23 s -> 0.40 s for 80 MB)
and left a slower final checkpoint (0.15 s instead of 0.02 s); it now reads with the default limit and raises it
only when DuckDB reports a record above it. (2) jsonl runner: the batch is encoded in slices of 65,536 rows by
the writer thread while the program works (one piece: 3.29 s, 16,384 rows: 2.99 s, 65,536: 3.03 s); the answer is
read in blocks, searching each new block once for the marker (no ``bytearray`` re-scan, one copy); pipes of
1 MB. (3) A jsonl program that is the last step hands its answer to the sink that reads JSON itself
(``write_json_lines``, no pyarrow decode with type inference, no Arrow insert); when the sink rejects a record the
answer is read record by record by the same reader (a record that does not fit is a parse error, a line that is
no object fails the batch).

Tried without gain: the input read in 4 MB pieces inside the writer thread, overlapped with the program (3.18 s
against 3.10 s for node_jsonl, 1.69 against 1.53 for node_pass: DuckDB's reader on small pieces competes with the
program for the second core); DuckDB with one thread for the encoding (within noise); ``to_arrow_table`` batch
sizes of 32K/128K/1M rows, ``INSERT ... BY NAME`` against positional, ``from_arrow().insert_into`` and Arrow string
views (within noise). Feeding the transport's lines to the program as they are (no parse, no encode, no check:
an upper bound) gained ~0.4 s in one noisy run (3.38 s against 3.82 s): not enough for the goal, and the program
would see the source's lines instead of the table's columns (missing columns absent, values not cast), so it
was not done.

Left short: node_jsonl. ``node identity.js`` alone takes 1.95 s here (1.79 s user) for these records, so with
``none`` at 0.55 s no runner reaches 0.3 (it would need 1.83 s); the rest is the batch's parse before the program
starts (~0.27 s) and the sink's load of the answer after it (~0.5 s), both serial to the program's work within a
batch (the exactly-once batch is read, processed and committed in turn). python sits at DuckDB's own floor: its
parse to Arrow plus the Arrow insert of a 32 MB piece take 0.164 s against 0.148 s for ``read_json`` inserting it
(0.90).

kafka_channel (``--only kafka_channel``; halves timed on their own; details in ``docs/channels.md``, Performance):
before, none 0.55 s, upstream 1.57 s, downstream 0.79 s, channel 2.36 s (0.23); after, none 0.57 s, upstream
0.63 s, downstream 0.68 s, channel 1.38 s (0.41-0.44). The kafka sink reads JSON lines itself (``read_json`` +
``to_json`` in one query instead of pyarrow, cast, ``to_json``), starts its producer early (the idempotent
producer's id costs 0.5 s on tansu), compresses with lz4; the reader copies a batch once and sees a partition's
end at the last fetch's high watermark. Left short: each half now costs about the direct load (the upstream
parses and writes every record, the broker stores and serves it, on the same two cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "benchmarks", ROOT / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from fixtures_services import tansu_broker  # noqa: E402 - the tests' broker, started the same way
from ingest import COLUMNS, generate  # noqa: E402 - benchmarks/ingest.py, beside this file

NODE_IDENTITY = r"""
// Identity over the jsonl protocol: the args line first, then records and ["__end_of_batch__",N] markers.
const readline = require('readline');
const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
let args = null, out = [];
const flush = () => { if (out.length) { process.stdout.write(out.join('\n') + '\n'); out = []; } };
lines.on('line', (line) => {
  if (args === null) { args = JSON.parse(line); return; }
  if (line.startsWith('[')) { out.push(line); flush(); return; }
  out.push(JSON.stringify(JSON.parse(line)));
  if (out.length >= 10000) flush();
});
"""

NODE_PASS = r"""
// Passes records and markers through as bytes (the args line, the first, is dropped).
let head = true;
process.stdin.on('data', (chunk) => {
  if (head) { const end = chunk.indexOf(10); if (end < 0) return; chunk = chunk.subarray(end + 1); head = false; }
  if (chunk.length && !process.stdout.write(chunk)) {
    process.stdin.pause();
    process.stdout.once('drain', () => process.stdin.resume());
  }
});
"""


class Clients:
    """The clients the benchmark's pipelines need: one DuckDB file, a Kafka broker."""

    def __init__(self, database: Path, bootstrap: str | None = None) -> None:
        from dagster_duckdb import DuckDBResource

        self.resource = DuckDBResource(database=str(database))
        self.bootstrap = bootstrap

    def duckdb_connection(self) -> Any:
        return self.resource.get_connection()

    def kafka_settings(self, connection: str) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap}


def file_connector(path: Path, processors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    connector: dict[str, Any] = {
        "name": "file",
        "transport": {"name": "file_input", "config": {"path": str(path)}},
        "format": {"name": "json"},
    }
    if processors:
        connector["processors"] = processors
    return connector


def ingest(folder: Path, pipeline_name: str, spec: dict[str, Any], clients: Clients) -> int:
    """Ingest pipeline ``pipeline_name`` of ``spec`` until every connector finished; the records committed."""
    from connector_core.ingest import IngestSession
    from connector_core.pipeline import Pipeline
    from connector_core.project import parse_project

    project = parse_project({"pipelines": {pipeline_name: spec}}, path=folder / "connectors.yaml")
    pipeline = Pipeline(project, pipeline_name, state_dir=folder / "state")
    pipeline.ensure_created()
    with pipeline.state.transaction() as conn:
        pipeline.state.put(conn, "status", "STARTED")
    records = 0
    with IngestSession(pipeline, clients, log=lambda _: None) as session:
        for handle in pipeline.connectors():
            while not handle.state.metrics().finished:
                report = session.ingest_batch(handle)
                if report.error:
                    raise SystemExit(f"{pipeline_name}: {report.error}")
                records += report.records
    pipeline.close()
    return records


#: The variants, for ``--only``.
VARIANTS = ("none", "python", "node_jsonl", "node_pass", "kafka_channel")


def timed(variant: Callable[[Path], int], workdir: Path, repeat: int, expected: int) -> float:
    """Best seconds of ``repeat`` runs of ``variant`` (each in a fresh folder); every run must load ``expected``."""
    best = float("inf")
    for attempt in range(repeat):
        folder = workdir / f"run-{attempt}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        started = time.perf_counter()
        records = variant(folder)
        best = min(best, time.perf_counter() - started)
        if records != expected:
            raise SystemExit(f"loaded {records} records, expected {expected}")
        shutil.rmtree(folder, ignore_errors=True)
    return best


@contextmanager
def kafka_broker() -> Any:
    """``bootstrap.servers`` of ``$KAFKA_BOOTSTRAP_SERVERS`` or of a tansu broker started here (memory storage)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    with tansu_broker() as bootstrap:
        yield bootstrap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-kafka", action="store_true", help="do not measure the Kafka channel")
    parser.add_argument(
        "--only", action="append", choices=VARIANTS, help="measure this variant and none only (repeatable)"
    )
    options = parser.parse_args()
    records = options.records
    workdir = Path(tempfile.mkdtemp(prefix="processors-bench-"))
    try:
        source = workdir / "source.json"
        generate(source, records)
        (workdir / "identity.js").write_text(NODE_IDENTITY)
        (workdir / "pass.js").write_text(NODE_PASS)
        (workdir / "steps.py").write_text("def identity(batch):\n    return batch\n")
        sys.path.insert(0, str(workdir))

        def direct(processors: list[dict[str, Any]] | None) -> Callable[[Path], int]:
            spec = {"tables": {"items": {"columns": COLUMNS, "connectors": [file_connector(source, processors)]}}}
            return lambda folder: ingest(folder, "bench", spec, Clients(folder / "warehouse.duckdb"))

        node = {"kind": "command", "protocol": "jsonl", "timeout_seconds": 600}
        variants: dict[str, Callable[[Path], int]] = {
            "none": direct(None),
            "python": direct([{"kind": "python", "function": "steps:identity"}]),
            "node_jsonl": direct([{**node, "command": ["node", str(workdir / "identity.js")]}]),
            "node_pass": direct([{**node, "command": ["node", str(workdir / "pass.js")]}]),
        }
        if options.only:
            variants = {name: variants[name] for name in ("none", *options.only) if name in variants}
        timed(variants["none"], workdir, 1, records)  # warm-up: imports, DuckDB's first file
        seconds = {name: timed(variant, workdir, options.repeat, records) for name, variant in variants.items()}
        if not options.skip_kafka and (not options.only or "kafka_channel" in options.only):
            with kafka_broker() as bootstrap:
                halves: dict[str, list[float]] = {"channel_up": [], "channel_down": []}
                seconds["kafka_channel"] = timed(
                    channel(source, bootstrap, halves), workdir, options.repeat, 2 * records
                )
                seconds.update({name: min(values) for name, values in halves.items()})  # best of each half
        baseline = seconds["none"]
        for name, value in seconds.items():
            print(f"{name:>14}: {records / value:>12,.0f} records/s  ({value:.2f} s)  ratio {baseline / value:.2f}")
        last = "node_jsonl" if "node_jsonl" in seconds else (options.only or ["none"])[-1]
        print(f"ratio={baseline / seconds[last]:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def channel(source: Path, bootstrap: str, halves: dict[str, list[float]]) -> Callable[[Path], int]:
    """The upstream pipeline to the topic, then the downstream one to its table (records of both counted); the
    seconds of each half are appended to ``halves`` (``channel_up``, ``channel_down``)."""

    def run(folder: Path) -> int:
        topic = f"bench.{folder.name}.{time.monotonic_ns()}"
        connection = {"bus": {"kind": "kafka", "config": {"bootstrap.servers": bootstrap}}}
        upstream = {
            "sink": {"kind": "kafka", "connection": "bus"},
            "connections": connection,
            "tables": {"items": {"columns": COLUMNS, "topic": topic, "connectors": [file_connector(source)]}},
        }
        reader = {"connection": "bus", "topic": topic, "enable.partition.eof": True, "poll_timeout_seconds": 0.5}
        downstream = {
            "connections": connection,
            "tables": {
                "items": {
                    "columns": COLUMNS,
                    "connectors": [
                        {
                            "name": "channel",
                            "transport": {"name": "kafka_input", "config": reader},
                            "format": {"name": "json"},
                        }
                    ],
                }
            },
        }
        clients = Clients(folder / "warehouse.duckdb", bootstrap)
        started = time.perf_counter()
        sent = ingest(folder / "up", "up", upstream, clients)
        halfway = time.perf_counter()
        received = ingest(folder / "down", "down", downstream, clients)
        halves["channel_up"].append(halfway - started)
        halves["channel_down"].append(time.perf_counter() - halfway)
        return sent + received

    return run


if __name__ == "__main__":
    main()
