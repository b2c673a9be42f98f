"""Processors written once in the pipeline's ``processors`` map and used by name: load-time errors naming the key
and the fix, python (Arrow, pandas, a class keeping state) and sql runners, the consecutive-failure rule, and a
crash between processing and the sink commit (the batch is processed again and lands exactly once)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from connector_core.ingest import MAX_CONSECUTIVE_FAILURES
from connector_core.pipeline import Pipeline
from connector_core.project import ProjectFileError, load_project

REPO = Path(__file__).resolve().parent.parent

STEPS = '''
import os, signal
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

instances = 0


def put(table, name, values):
    """``table`` with column ``name`` set (the batch already has the table's columns, as nulls)."""
    if name in table.column_names:
        table = table.drop_columns([name])
    return table.append_column(name, values)


def scale(frame: pd.DataFrame, column: str, factor: float = 2) -> pd.DataFrame:
    assert isinstance(frame, pd.DataFrame), type(frame)
    frame[column] = frame[column] * factor
    return frame


def keep_from(table, min_id):
    assert isinstance(table, pa.Table), type(table)
    return table.filter(pc.greater_equal(table["id"], min_id)).to_pandas()  # a DataFrame back is fine too


class Numbering:
    """One instance per connector per run: numbers records across batches."""

    def __init__(self, start):
        global instances
        instances += 1
        self.next = start

    def __call__(self, table: pa.Table) -> pa.Table:
        numbers = pa.array(range(self.next, self.next + table.num_rows), pa.int64())
        self.next += table.num_rows
        return put(table, "seq", numbers)


def explode(table):
    raise ValueError("boom")


def mark_processed(table, log):
    """Logs the ids it processed; at its second call in a run that has no crash.txt yet, writes it and dies."""
    global calls
    calls = globals().get("calls", 0) + 1
    with open(log, "a") as out:
        out.write(" ".join(str(i) for i in table["id"].to_pylist()) + "\\n")
    table = put(table, "processed", pa.array([True] * table.num_rows))
    if calls == 2 and not Path("crash.txt").exists():
        Path("crash.txt").write_text("killed between processing and the sink commit")
        os.kill(os.getpid(), signal.SIGKILL)
    return table
'''

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
            max_batch_size: 10
            transport: {{name: file_input, config: {{path: input.json}}}}
            format: {{name: json}}
            processors:
{uses}
"""


def write_project(folder: Path, processors: str, uses: str, columns: str = "{id: BIGINT, price: DOUBLE}") -> Path:
    """``connectors.yaml`` with the ``processors`` map and connector t.c's ``uses`` (YAML, dedented), the steps
    module as ``steps_<folder>.py`` (a name of its own: modules stay imported across tests) and 50 records."""
    module = f"steps_{folder.name.replace('-', '_')}"
    (folder / f"{module}.py").write_text(STEPS)
    (folder / "input.json").write_text("".join(json.dumps({"id": i, "price": i / 2}) + "\n" for i in range(50)))
    text = PROJECT.format(
        processors=textwrap.indent(textwrap.dedent(processors).replace("STEPS", module), " " * 6),
        uses=textwrap.indent(textwrap.dedent(uses).replace("STEPS", module), " " * 14),
        columns=columns,
    )
    path = folder / "connectors.yaml"
    path.write_text(text)
    return path


def started(path: Path) -> Pipeline:
    pipeline = Pipeline(load_project(path), "p", path.parent / "state")
    with pipeline.state.transaction() as conn:
        pipeline.state.put(conn, "status", "STARTED")
    return pipeline


def refusal(path: Path) -> str:
    with pytest.raises(ProjectFileError) as info:
        load_project(path)
    return str(info.value)


# ------------------------------------------------------------------------------------------------ load time
CONNECTOR = "pipelines.p.tables.t.connectors[0].processors"
GOOD_MAP = """\
scale: {kind: python, function: "STEPS:scale", params: {column: {type: string}, factor: {type: number, default: 2}}}
cheap: {kind: sql, query: "SELECT * FROM batch WHERE price < $limit", params: {limit: {type: number, default: 10}}}
"""


@pytest.mark.parametrize(
    ("processors", "uses", "where", "expected"),
    [
        (GOOD_MAP, "- {use: scale, args: {column: price}}\n- {use: chep}", f"{CONNECTOR}[1].use (line 18)",
         "unknown processor 'chep'; the pipeline's processors are: cheap, scale"),
        (GOOD_MAP, "- {use: scale, args: {column: price, colour: red}}", f"{CONNECTOR}[0].args.colour (line 17)",
         "unknown argument 'colour' of processor scale; its arguments are: column, factor"),
        (GOOD_MAP, "- {use: scale}", f"{CONNECTOR}[0].args.column (line 17)",
         "missing required argument 'column': a string; add it"),
        (GOOD_MAP, "- {use: scale, args: {column: price, factor: lots}}", f"{CONNECTOR}[0].args.factor (line 17)",
         "argument 'factor' must be a number, not string 'lots'"),
        (GOOD_MAP, "- {use: cheap, args: {limit: true}}", f"{CONNECTOR}[0].args.limit",
         "must be a number, not boolean True"),
        ("m: {kind: python, function: 'no_such_module_here:f'}", "- {use: m}", "pipelines.p.processors.m.function",
         "module 'no_such_module_here' not found; put no_such_module_here.py in the project folder"),
        ("m: {kind: python, function: 'STEPS:nope'}", "- {use: m}", "pipelines.p.processors.m.function",
         "has no 'nope'; it defines: Numbering, explode, keep_from, mark_processed, put, scale"),
        ("m: {kind: python, function: 'STEPS:scale'}", "- {use: m}", "pipelines.p.processors.m.function",
         "cannot be called as function(batch, **args) with args []"),
        ("{}", "- {kind: command, command: [no-such-program-x]}", f"{CONNECTOR}[0].command[0] (line 15)",
         "program 'no-such-program-x' not found on PATH; install it, or give its path"),
        ("{}", "- {kind: command, command: [bin/missing.sh]}", f"{CONNECTOR}[0].command[0]",
         "program 'bin/missing.sh' not found"),
        ("{}", "- {kind: command, command: [input.json]}", f"{CONNECTOR}[0].command[0]",
         "program 'input.json' is not on PATH; to run the one in the project folder write './input.json'"),
        ("{}", "- {kind: command, command: [./input.json]}", f"{CONNECTOR}[0].command[0]",
         "program './input.json' is not executable"),
        ("q: {kind: sql, query: 'DELETE FROM batch'}", "- {use: q}", "pipelines.p.processors.q.query",
         "must be one SELECT statement over the table 'batch'"),
        ("q: {kind: sql, query: 'SELECT * FROM batch WHERE id > $low'}", "- {use: q}",
         "pipelines.p.processors.q.query", "uses $low but no such param is declared"),
        (GOOD_MAP, "- {use: cheap, kind: sql}", f"{CONNECTOR}[0]",
         "a reference {use: cheap} takes only 'args'; remove kind"),
        ("m: {kind: python, function: 'STEPS:explode', protocol: jsonl}", "- {use: m}", "pipelines.p.processors.m",
         "protocol: not used by a python processor; remove it"),
        ("m: {kind: command, command: [cat], env: {TOKEN: s3cr3t-value}}", "- {use: m}",
         "pipelines.p.processors.m.env", "{env: NAME}"),
        ("m: {kind: python, function: 'STEPS:explode', params: {n: {type: integer, default: x}}}", "- {use: m}",
         "pipelines.p.processors.m.params.n", "default must be an integer, not string 'x'"),
        ("bad name: {kind: sql, query: 'SELECT 1'}", "- {kind: sql, query: 'SELECT 1'}", "pipelines.p.processors",
         "must match"),
    ],
    ids=[
        "unknown-name", "unknown-arg", "missing-arg", "wrong-type", "bool-is-no-number", "no-module",
        "no-function", "signature", "no-program", "no-relative-program", "bare-name-in-folder", "not-executable",
        "not-select", "undeclared-parameter", "reference-with-keys", "stray-key", "literal-secret", "bad-default",
        "bad-name",
    ],
)  # fmt: skip
def test_load_time_errors_name_the_key_and_the_fix(
    tmp_path: Path, processors: str, uses: str, where: str, expected: str
) -> None:
    message = refusal(write_project(tmp_path, processors, uses))
    line = next((line for line in message.splitlines() if where in line), None)
    assert line is not None, message
    assert expected.replace("STEPS", f"steps_{tmp_path.name}") in line, message


def test_references_resolve_to_one_shape_with_defaults_applied(tmp_path: Path) -> None:
    project = load_project(
        write_project(
            tmp_path,
            GOOD_MAP,
            """\
            - {use: scale, args: {column: price}}
            - {kind: python, function: "STEPS:keep_from", args: {min_id: 3}}
            - {use: cheap}
            """,
        )
    )
    spec = project.pipeline("p")
    uses = spec.processor_uses(spec.connector("t", "c"))
    assert [(use.name, use.definition.kind, use.args) for use in uses] == [
        ("scale", "python", {"column": "price", "factor": 2}),
        (None, "python", {"min_id": 3}),
        ("cheap", "sql", {"limit": 10}),
    ]
    assert uses[1].label == f"python steps_{tmp_path.name}:keep_from"


# --------------------------------------------------------------------------------------------------- runners
def test_python_processors_get_arrow_or_pandas_and_a_class_keeps_state_across_batches(
    tmp_path: Path, session_factory: Any
) -> None:
    path = write_project(
        tmp_path,
        """\
        scale: {kind: python, function: "STEPS:scale", params: {column: {type: string}, factor: {type: number, default: 2}}}
        numbering: {kind: python, function: "STEPS:Numbering", params: {start: {type: integer, default: 0}}}
        """,
        """\
        - {kind: python, function: "STEPS:keep_from", args: {min_id: 5}}
        - {use: scale, args: {column: price, factor: 10}}
        - {use: numbering, args: {start: 1000}}
        """,
        columns="{id: BIGINT, price: DOUBLE, seq: BIGINT}",
    )
    pipeline = started(path)
    session = session_factory(pipeline)
    while (report := session.ingest_table("t")).batches:
        assert report.batches[0].error is None, report.batches[0].error
    frame = session.sink.read_table("t").sort_values("id")
    assert frame["id"].tolist() == list(range(5, 50))
    assert frame["price"].tolist() == [i * 5 for i in range(5, 50)]
    assert frame["seq"].tolist() == list(range(1000, 1045)), "one instance numbers every batch of the run"
    assert sys.modules[f"steps_{tmp_path.name}"].instances == 1


def test_sql_processors_filter_and_derive_columns_with_parameters(tmp_path: Path, session_factory: Any) -> None:
    path = write_project(
        tmp_path,
        """\
        cheap:
          kind: sql
          query: "SELECT id, price * $factor AS price, 'id-' || id AS label FROM batch WHERE price < $limit"
          params: {limit: {type: number}, factor: {type: integer, default: 1}}
        """,
        "- {use: cheap, args: {limit: 10, factor: 3}}",
        columns="{id: BIGINT, price: DOUBLE, label: VARCHAR}",
    )
    session = session_factory(started(path))
    while session.ingest_table("t").batches:
        pass
    frame = session.sink.read_table("t").sort_values("id")
    assert frame["id"].tolist() == list(range(20))
    assert frame["price"].tolist() == [i * 1.5 for i in range(20)]
    assert frame["label"].tolist() == [f"id-{i}" for i in range(20)]


def test_three_failing_batches_give_the_connector_up_naming_the_processor(tmp_path: Path, session_factory: Any) -> None:
    path = write_project(tmp_path, "explode: {kind: python, function: 'STEPS:explode'}", "- {use: explode}")
    pipeline = started(path)
    session = session_factory(pipeline)
    reports = [session.ingest_table("t").batches[0] for _ in range(MAX_CONSECUTIVE_FAILURES)]
    assert all("processor explode of connector t.c raised ValueError('boom')" in r.error for r in reports)
    assert [r.fatal_error is not None for r in reports] == [False] * (MAX_CONSECUTIVE_FAILURES - 1) + [True]
    metrics = pipeline.connector("t", "c").state.metrics()
    assert "consecutive failed reads" in metrics.fatal_error and "processor explode" in metrics.fatal_error
    assert metrics.total_records == 0
    assert "given up" in session.ingest_table("t").skipped_reason or not session.ingest_table("t").batches


# ------------------------------------------------------------------------------------------------- crashes
CHILD = """
import sys
from contextlib import contextmanager
from pathlib import Path

import duckdb

from connector_core.ingest import IngestSession
from connector_core.pipeline import Pipeline
from connector_core.project import load_project

class Clients:  # what a DuckDB pipeline needs, without importing Dagster
    def __init__(self, database):
        self.database = str(database)

    @contextmanager
    def duckdb_connection(self):
        connection = duckdb.connect(self.database)
        try:
            yield connection
        finally:
            connection.close()


work = Path(sys.argv[1])
pipeline = Pipeline(load_project(work / "connectors.yaml"), "p", work / "state")
handle = pipeline.connector("t", "c")
session = IngestSession(pipeline, Clients(work / "warehouse.duckdb"), log=lambda m: print(m, file=sys.stderr))
while not handle.state.metrics().finished:
    report = session.ingest_batch(handle)
    if report.error:
        raise SystemExit(report.error)
session.close()
"""

PID_CHILD = r"""
import json, os, sys
from pathlib import Path
args = json.loads(sys.stdin.readline())
Path("jsonl-child.pid").write_text(str(os.getpid()))
for line in sys.stdin:
    sys.stdout.write(line)
    sys.stdout.flush()
"""


def test_a_batch_processed_then_lost_in_a_crash_is_processed_again_and_lands_once(tmp_path: Path) -> None:
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "pid_child.py").write_text(PID_CHILD)
    path = write_project(
        tmp_path,
        f"""\
        mark: {{kind: python, function: "STEPS:mark_processed", params: {{log: {{type: string}}}}}}
        echo: {{kind: command, command: [{sys.executable}, pid_child.py], protocol: jsonl}}
        """,
        """\
        - {use: mark, args: {log: processed.log}}
        - {use: echo}
        - {kind: sql, query: "SELECT *, price * 2 AS doubled FROM batch"}
        """,
        columns="{id: BIGINT, price: DOUBLE, processed: BOOLEAN, doubled: DOUBLE}",
    )
    pipeline = started(path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(tmp_path / "child.py"), str(tmp_path)]
    crashed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, timeout=120, check=False)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()[-2000:]
    assert (tmp_path / "crash.txt").exists()
    orphan = int((tmp_path / "jsonl-child.pid").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{orphan}"):
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{orphan}"), "a long-lived program ends when its parent dies (end of stdin)"

    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, timeout=120, check=False)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    logged = [[int(i) for i in line.split()] for line in (tmp_path / "processed.log").read_text().splitlines()]
    assert logged[1] == logged[2] == list(range(10, 20)), "the batch lost in the crash is processed again"
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as conn:
        rows = conn.execute('SELECT id, processed, doubled FROM main."t" ORDER BY id').fetchall()
    assert rows == [(i, True, float(i)) for i in range(50)], "every record exactly once, every one processed"
    assert pipeline.connector("t", "c").state.metrics().total_records == 50


# ------------------------------------------------------------------------------------ jsonl into the sink
JSONL_CHILD = r"""
import json, sys
args = json.loads(sys.stdin.readline())
mode = args.get("mode", "identity")
for line in sys.stdin:
    if line.startswith("["):
        sys.stdout.write(line)
        sys.stdout.flush()
        continue
    record = json.loads(line)
    if mode == "garbage" and record["id"] == 7:
        sys.stdout.write("this is not json\n")
    elif mode == "bad_price" and record["id"] % 10 == 3:
        record["price"] = "not a number"
    elif mode == "drop":
        continue
    sys.stdout.write(json.dumps(record) + "\n")
"""


def dirty_input(folder: Path) -> list[int]:
    """``input.json``: 300 records of which some are bad (malformed, a price that is no number, not UTF-8, a
    blank line between); the ids of the good ones."""
    lines, good = [], []
    for i in range(300):
        if i % 37 == 5:
            lines.append(b'{"id": %d, "pri' % i)
        elif i % 41 == 9:
            lines.append(b'{"id": %d, "price": "x"}' % i)
        elif i % 53 == 11:
            lines.append(b'{"id": %d, "price": 1, "name": "\xff"}' % i)
        else:
            lines.append(json.dumps({"id": i, "price": i / 2}).encode())
            good.append(i)
        if i == 150:
            lines.append(b"   ")
    (folder / "input.json").write_bytes(b"\n".join(lines) + b"\n")
    return good


def test_a_jsonl_program_counts_bad_input_records_as_a_python_step_does(tmp_path: Path, session_factory: Any) -> None:
    """Bad source records are parse errors of the batch before the program sees it, its answer goes straight
    into the sink: the parse errors, their indices and the rows are those of a python identity processor."""
    outcomes = []
    for kind in ("python", "jsonl"):
        folder = tmp_path / kind
        folder.mkdir()
        (folder / "child.py").write_text(JSONL_CHILD)
        uses = (
            "- {kind: python, function: 'STEPS:put'}"
            if kind == "python"
            else "- {kind: command, command: [python3, child.py], protocol: jsonl}"
        )
        path = write_project(folder, "{}", uses)
        good = dirty_input(folder)
        if kind == "python":
            (folder / f"steps_{folder.name}.py").write_text("def put(table):\n    return table\n")
            path.write_text(path.read_text().replace("STEPS:put", f"steps_{folder.name}:put"))
        pipeline = started(path)
        session = session_factory(pipeline)
        while (report := session.ingest_table("t")).batches:
            assert report.batches[0].error is None, report.batches[0].error
        handle = pipeline.connector("t", "c")
        errors = [(e["index"], e["message"]) for e in handle.state.parse_errors()]
        ids = sorted(session.sink.read_table("t")["id"].tolist())
        session.sink.drop_table("t")  # one warehouse for both runs
        outcomes.append((ids, errors, handle.state.metrics().num_parse_errors))
    assert outcomes[0][0] == good
    assert outcomes[1] == outcomes[0]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("identity", "50 rows"), ("bad_price", "45 rows, 5 errors"), ("drop", "0 rows"), ("garbage", "not a batch")],
)
def test_a_last_jsonl_program_writes_its_lines_into_the_sink(
    tmp_path: Path, session_factory: Any, mode: str, expected: str
) -> None:
    """A last jsonl step's answer is loaded by the sink's own reader: a value that does not fit is a parse error
    of that record, a line that is no JSON object fails the batch."""
    (tmp_path / "child.py").write_text(JSONL_CHILD)
    path = write_project(
        tmp_path,
        "{}",
        f"- {{kind: command, command: [python3, child.py], protocol: jsonl, args: {{mode: {mode}}}}}",
    )
    pipeline = started(path)
    session = session_factory(pipeline)
    reports = []
    while (report := session.ingest_table("t")).batches and report.batches[0].error is None:
        reports.append(report.batches[0])
    metrics = pipeline.connector("t", "c").state.metrics()
    if expected == "not a batch":  # id 7 is in the first batch (10 records)
        error = report.batches[0].error
        assert error is not None and "wrote something that is not a batch" in error, error
        assert not reports and session.sink.row_count("t") == 0
        return
    assert not report.batches, report.batches[0].error
    rows, _, errors = expected.partition(" rows")
    assert session.sink.row_count("t") == int(rows) == sum(r.records for r in reports)
    assert metrics.num_parse_errors == (int(errors.split()[1]) if errors else 0)
    assert metrics.finished and metrics.total_records == int(rows)
