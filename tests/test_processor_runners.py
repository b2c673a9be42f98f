"""Command processors with real programs in JavaScript (node), Java (single-file source launch), Python and jq, over
the three protocols: a long-lived program is started once per connector per run, gets its args, and every way it
can fail (raise, exit, hang, garbage) names the processor with its stderr tail, kills it and lets the next batch
start it again. The arrow protocol is exercised in Python, and in node with ``processors/node/identity_arrow.mjs``
(its ``apache-arrow`` is installed by ``.ci/run``)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from connector_core.ingest import IngestSession
from connector_core.pipeline import Pipeline
from connector_core.processors import load_processor
from connector_core.project import load_project

REPO = Path(__file__).resolve().parent.parent
NODE_ARROW = REPO / "processors" / "node" / "identity_arrow.mjs"
RECORDS = 50
BATCH = 10

NODE_UPPER = r"""
// jsonl protocol: first line the args, then records and ["__end_of_batch__",N] markers, echoed back.
const readline = require('readline');
const lines = readline.createInterface({ input: process.stdin });
let args = null;
lines.on('line', (line) => {
  if (args === null) { args = JSON.parse(line); return; }
  if (line.startsWith('[')) { process.stdout.write(line + '\n'); return; }
  const record = JSON.parse(line);
  record[args.column] = String(record[args.column]).toUpperCase();
  record.pid = process.pid;
  process.stdout.write(JSON.stringify(record) + '\n');
});
"""

JAVA_TAG = r"""
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.util.regex.*;

// jsonl protocol without a JSON library: records are one object per line, so a field is added before the last '}'.
public class Tag {
    public static void main(String[] argv) throws IOException {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        PrintStream out = new PrintStream(new BufferedOutputStream(System.out), false, "UTF-8");
        Matcher tag = Pattern.compile("\"tag\"\\s*:\\s*\"([^\"]*)\"").matcher(in.readLine());
        String label = tag.find() ? tag.group(1) : "";
        long pid = ProcessHandle.current().pid();
        String line;
        while ((line = in.readLine()) != null) {
            if (line.startsWith("[")) { out.println(line); out.flush(); continue; }
            line = line.replaceAll(",\"(tag|pid)\":null", "");  // the table's columns come as nulls
            int end = line.lastIndexOf('}');
            out.println(line.substring(0, end) + ",\"tag\":\"" + label + "\",\"pid\":" + pid + "}");
        }
        out.flush();
    }
}
"""

PYTHON_ARROW = r"""
# arrow protocol: an IPC stream with the args, then one IPC stream per batch each way.
import json, os, sys
import pyarrow as pa, pyarrow.compute as pc, pyarrow.ipc as ipc

stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
args = json.loads(ipc.open_stream(stdin).read_all().column("args")[0].as_py())
while True:
    try:
        batch = ipc.open_stream(stdin).read_all()
    except pa.ArrowInvalid:  # end of input: the run is over
        break
    trouble = os.path.exists("trouble.txt") and open("trouble.txt").read().strip()
    if trouble:
        os.remove("trouble.txt")
        print(f"trouble: {trouble}", file=sys.stderr, flush=True)
    if trouble == "exit":
        sys.exit(5)
    if trouble == "garbage":
        stdout.write(b"hello, this is not arrow\n")
        stdout.flush()
        continue
    kept = batch.filter(pc.greater_equal(batch["id"], args["min_id"]))
    kept = kept.append_column("pid", pa.array([os.getpid()] * kept.num_rows, pa.int64()))
    with ipc.new_stream(stdout, kept.schema) as writer:
        writer.write_table(kept)
    stdout.flush()
"""

PYTHON_JSONL_TROUBLE = r"""
# jsonl protocol; misbehaves once when trouble.txt (in the project folder) names how.
import json, os, sys, time

args = json.loads(sys.stdin.readline())
for line in sys.stdin:
    if line.startswith("["):
        sys.stdout.write(line)
        sys.stdout.flush()
        continue
    trouble = os.path.exists("trouble.txt") and open("trouble.txt").read().strip()
    if trouble:
        os.remove("trouble.txt")
        print("x" * 5000 + f"\ntrouble: {trouble} at record {json.loads(line)['id']}", file=sys.stderr, flush=True)
    if trouble == "exit":
        sys.exit(7)
    if trouble == "raise":
        raise ValueError("cannot process this record")
    if trouble == "hang":
        time.sleep(60)
    if trouble == "garbage":
        sys.stdout.write("this is not json\n")
    record = json.loads(line)
    record["pid"] = os.getpid()
    sys.stdout.write(json.dumps(record) + "\n")
"""

PROJECT = """
pipelines:
  p:
    processors:
{processors}
    tables:
      t:
        columns: {columns}
        connectors:
          - name: c
            max_batch_size: {batch}
            transport: {{name: file_input, config: {{path: input.json}}}}
            format: {{name: json}}
            processors: {uses}
"""


def open_project(
    folder: Path, processors: str, uses: str, columns: str, programs: dict[str, str], batch: int = BATCH
) -> Pipeline:
    """The project with ``processors`` (YAML lines of the map) used as ``uses`` by connector ``t.c`` reading
    ``RECORDS`` records in batches of ``batch``; ``programs`` are written to the folder first."""
    for name, text in programs.items():
        (folder / name).write_text(textwrap.dedent(text))
    lines = (json.dumps({"id": i, "name": f"item {i}", "price": i / 2}) for i in range(RECORDS))
    (folder / "input.json").write_text("\n".join(lines) + "\n")
    text = PROJECT.format(
        processors=textwrap.indent(textwrap.dedent(processors), " " * 6), uses=uses, columns=columns, batch=batch
    )
    (folder / "connectors.yaml").write_text(text)
    pipeline = Pipeline(load_project(folder / "connectors.yaml"), "p", folder / "state")
    with pipeline.state.transaction() as conn:
        pipeline.state.put(conn, "status", "STARTED")
    return pipeline


def ingest_all(session: IngestSession, limit: int = 100) -> list[Any]:
    """Every batch of connector t.c (no failure allowed)."""
    reports = []
    for _ in range(limit):
        report = session.ingest_table("t")
        if not report.batches:
            return reports
        assert report.batches[0].error is None, report.batches[0].error
        reports.append(report.batches[0])
    raise AssertionError("never finished")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_a_node_jsonl_processor_is_started_once_per_run_and_gets_its_args(tmp_path: Path, session_factory: Any) -> None:
    pipeline = open_project(
        tmp_path,
        "upper: {kind: command, command: [node, upper.js], protocol: jsonl, params: {column: {type: string}}}",
        "[{use: upper, args: {column: name}}]",
        "{id: BIGINT, name: VARCHAR, price: DOUBLE, pid: BIGINT}",
        {"upper.js": NODE_UPPER},
    )
    session = session_factory(pipeline)
    assert len(ingest_all(session)) == RECORDS // BATCH
    frame = session.sink.read_table("t").sort_values("id")
    assert frame["name"].tolist() == [f"ITEM {i}" for i in range(RECORDS)]
    assert frame["price"].tolist() == [i / 2 for i in range(RECORDS)]
    pids = set(frame["pid"])
    assert len(pids) == 1, "one program for every batch of the run"
    (pid,) = pids
    assert alive(pid)
    session.close()
    assert not alive(pid), "closing the session stops the program"


@pytest.mark.skipif(shutil.which("java") is None, reason="java is not installed")
def test_a_java_jsonl_processor_from_a_single_source_file(tmp_path: Path, session_factory: Any) -> None:
    pipeline = open_project(
        tmp_path,
        """\
        tag:
          kind: command
          command: [java, Tag.java]
          protocol: jsonl
          timeout_seconds: 60
          params: {tag: {type: string, default: java}}
        """,
        "[{use: tag, args: {tag: from-java}}]",
        "{id: BIGINT, name: VARCHAR, tag: VARCHAR, pid: BIGINT}",
        {"Tag.java": JAVA_TAG},
    )
    session = session_factory(pipeline)
    assert sum(report.records for report in ingest_all(session)) == RECORDS
    frame = session.sink.read_table("t")
    assert sorted(frame["id"]) == list(range(RECORDS)) and set(frame["tag"]) == {"from-java"}
    assert frame["pid"].nunique() == 1


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_jq_as_a_filter_and_as_a_long_lived_jsonl_processor(tmp_path: Path, session_factory: Any) -> None:
    pipeline = open_project(
        tmp_path,
        """\
        scale:
          kind: command
          command: [jq, -c, '($ENV.CONNECTOR_PROCESSOR_ARGS | fromjson) as $a | .price *= $a.factor']
          params: {factor: {type: number}}
        label:
          kind: command
          command: [jq, -cn, --unbuffered, 'input as $a | inputs | if type == "array" then . else .name = $a.label end']
          protocol: jsonl
          params: {label: {type: string}}
        """,
        "[{use: scale, args: {factor: 10}}, {use: label, args: {label: jq}}]",
        "{id: BIGINT, name: VARCHAR, price: DOUBLE}",
        {},
    )
    session = session_factory(pipeline)
    ingest_all(session)
    frame = session.sink.read_table("t").sort_values("id")
    assert frame["price"].tolist() == [i * 5 for i in range(RECORDS)] and set(frame["name"]) == {"jq"}


def test_a_python_arrow_processor_keeps_types_and_gets_its_args(tmp_path: Path, session_factory: Any) -> None:
    pipeline = open_project(
        tmp_path,
        f"expensive: {{kind: command, command: [{sys.executable}, arrow_child.py], protocol: arrow, "
        "params: {min_id: {type: integer, default: 0}}}",
        "[{use: expensive, args: {min_id: 15}}]",
        "{id: BIGINT, name: VARCHAR, price: DOUBLE, pid: BIGINT}",
        {"arrow_child.py": PYTHON_ARROW},
    )
    session = session_factory(pipeline)
    records = [report.records for report in ingest_all(session)]
    assert records == [0, 5, 10, 10, 10]
    frame = session.sink.read_table("t")
    assert sorted(frame["id"]) == list(range(15, RECORDS)) and frame["pid"].nunique() == 1


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_node_arrow_identity_processor_gives_every_batch_back_unchanged(tmp_path: Path) -> None:
    if not (NODE_ARROW.parent / "node_modules" / "apache-arrow").is_dir():
        pytest.skip(f"apache-arrow is not installed: npm ci --prefix {NODE_ARROW.parent} (.ci/run does)")
    pipeline = open_project(
        tmp_path,
        f"same: {{kind: command, command: [node, {NODE_ARROW}], protocol: arrow, timeout_seconds: 60}}",
        "[{use: same}]",
        "{id: BIGINT}",
        {},
    )
    (use,) = pipeline.spec.processor_uses(pipeline.spec.tables["t"].connectors[0])
    step = load_processor(use, pipeline, "t.c")
    batches = [
        pa.table({"id": pa.array(range(5), pa.int64()), "name": [f"item {i}" for i in range(5)]}),
        pa.table(
            {
                "id": pa.array([1, None, 3, None], pa.int64()),
                "name": ["plain", None, 'ünïcödé, "quoted"\n', ""],
                "price": pa.array([0.5, None, -1e300, 2.0], pa.float64()),
                "flag": pa.array([True, None, False, True]),
                "at": pa.array([0, None, 1_700_000_000_000_000, -1], pa.timestamp("us", tz="UTC")),
                "tags": pa.array([["a"], None, [], ["b", None]], pa.list_(pa.string())),
            }
        ),
        pa.concat_tables([pa.table({"id": pa.array(range(n, n + 40_000), pa.int64())}) for n in (0, 40_000)]),
    ]
    try:
        pids = set()
        for batch in batches:
            answer = step(batch)
            assert answer.schema.remove_metadata() == batch.schema and answer.equals(batch), "unchanged"
            pids.add(step._child.process.pid)  # type: ignore[attr-defined]
        assert len(pids) == 1, "one program for every batch of the run"
    finally:
        step.close()


TROUBLE_CASES = {
    "exit": "exited with 7",
    "raise": "exited with 1",
    "hang": "did not answer batch 2 of this run within 1 s",
    "garbage": "wrote something that is not a batch",
}


@pytest.mark.parametrize("trouble", list(TROUBLE_CASES))
def test_a_failing_jsonl_program_is_named_killed_and_restarted_by_the_next_batch(
    tmp_path: Path, session_factory: Any, trouble: str
) -> None:
    pipeline = open_project(
        tmp_path,
        f"fragile: {{kind: command, command: [{sys.executable}, trouble.py], protocol: jsonl, timeout_seconds: 1}}",
        "[{use: fragile}]",
        "{id: BIGINT, pid: BIGINT}",
        {"trouble.py": PYTHON_JSONL_TROUBLE},
    )
    session = session_factory(pipeline)
    first = session.ingest_table("t").batches[0]
    assert first.error is None and first.records == BATCH
    (first_pid,) = set(session.sink.read_table("t")["pid"])

    (tmp_path / "trouble.txt").write_text(trouble)
    failed = session.ingest_table("t").batches[0]
    assert failed.records == 0 and failed.error is not None
    assert "processor fragile of connector t.c" in failed.error and TROUBLE_CASES[trouble] in failed.error
    assert f"trouble: {trouble} at record {BATCH}" in failed.error, "the stderr tail comes with the error"
    if trouble == "raise":
        assert "ValueError: cannot process this record" in failed.error
    assert len(failed.error) < 3_000, "only the tail of stderr"
    assert not alive(first_pid), "the program is killed"
    assert pipeline.connector("t", "c").state.position()[1] == 1, "the failed batch is not committed"

    again = session.ingest_table("t").batches[0]
    assert again.error is None and again.records == BATCH
    frame = session.sink.read_table("t")
    assert sorted(frame["id"]) == list(range(2 * BATCH))
    assert set(frame["pid"]) - {first_pid}, "the next batch started the program again"


@pytest.mark.parametrize(
    ("trouble", "expected"),
    [("exit", "exited with 5 during batch 2 of this run"), ("garbage", "not an Arrow IPC stream")],
)
def test_a_failing_arrow_program_is_named_and_restarted(
    tmp_path: Path, session_factory: Any, trouble: str, expected: str
) -> None:
    pipeline = open_project(
        tmp_path,
        f"arrowy: {{kind: command, command: [{sys.executable}, arrow_child.py], protocol: arrow, "
        "params: {min_id: {type: integer, default: 0}}}",
        "[{use: arrowy}]",
        "{id: BIGINT, pid: BIGINT}",
        {"arrow_child.py": PYTHON_ARROW},
    )
    session = session_factory(pipeline)
    assert session.ingest_table("t").batches[0].records == BATCH
    (tmp_path / "trouble.txt").write_text(trouble)
    failed = session.ingest_table("t").batches[0]
    assert failed.error is not None and "processor arrowy of connector t.c" in failed.error
    assert expected in failed.error and f"trouble: {trouble}" in failed.error
    again = session.ingest_table("t").batches[0]
    assert again.error is None and again.records == BATCH
    assert session.sink.read_table("t")["pid"].nunique() == 2


def test_a_filter_program_past_its_timeout_is_killed_with_its_children(tmp_path: Path, session_factory: Any) -> None:
    script = "import pathlib, subprocess, sys, time\nchild = subprocess.Popen(['sleep', '60'])\n"
    script += "pathlib.Path('grandchild.pid').write_text(str(child.pid))\nprint('sleeping', file=sys.stderr)\n"
    script += "sys.stderr.flush()\ntime.sleep(60)\n"
    pipeline = open_project(
        tmp_path,
        "{}",
        f"[{{kind: command, command: [{sys.executable}, slow.py], timeout_seconds: 0.5}}]",
        "{id: BIGINT}",
        {"slow.py": script},
    )
    session = session_factory(pipeline)
    started = time.monotonic()
    failed = session.ingest_table("t").batches[0]
    assert time.monotonic() - started < 5
    assert failed.error is not None and "did not finish a batch within 0.5 s" in failed.error
    assert f"processor command {sys.executable} slow.py of connector t.c" in failed.error
    assert "sleeping" in failed.error
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    assert wait_until(lambda: not alive(grandchild)), "what the program started is killed with it"


def test_a_long_lived_program_ends_when_its_input_ends_and_a_new_run_starts_a_new_one(
    tmp_path: Path, session_factory: Any
) -> None:
    pipeline = open_project(
        tmp_path,
        f"fragile: {{kind: command, command: [{sys.executable}, trouble.py], protocol: jsonl}}",
        "[{use: fragile}]",
        "{id: BIGINT, pid: BIGINT}",
        {"trouble.py": PYTHON_JSONL_TROUBLE},
    )
    first = session_factory(pipeline)
    first.ingest_table("t")
    (pid,) = set(first.sink.read_table("t")["pid"])
    first.close()
    assert wait_until(lambda: not alive(pid))
    second = session_factory(pipeline)
    second.ingest_table("t")
    assert second.sink.read_table("t")["pid"].nunique() == 2, "one program per run"
