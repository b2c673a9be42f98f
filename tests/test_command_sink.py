"""The command sink (issue 15): a program in Java (the seed's "sink processor") receives every batch and
acknowledges it; the mark (the connector's state) is committed after the acknowledgement, and the batch id handed
to the program makes a batch sent again after a lost state commit harmless. A program that fails is reported with
its stderr, the batch is not committed, and the next run sends it again."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from clients_for_tests import DuckDBClients

from connector_cli.main import cli
from connector_core.ingest import IngestSession
from connector_core.pipeline import Pipeline
from connector_core.project import ProjectFileError, load_project

#: Appends the records of each batch it has not applied yet to the file ``out`` (its args), remembers applied
#: batch ids in ``out.ids`` and logs a batch sent again to ``out.log``; acknowledges by echoing the marker line.
JAVA_SINK = r"""
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.util.*;
import java.util.regex.*;

public class AckSink {
    static String field(String json, String name) {
        Matcher m = Pattern.compile("\"" + name + "\"\\s*:\\s*\"([^\"]*)\"").matcher(json);
        return m.find() ? m.group(1) : null;
    }

    public static void main(String[] args) throws IOException {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        PrintStream out = new PrintStream(new FileOutputStream(FileDescriptor.out), false, "UTF-8");
        Path file = Paths.get(field(in.readLine(), "out"));
        Path ids = Paths.get(file + ".ids"), log = Paths.get(file + ".log");
        Set<String> applied = new HashSet<>(Files.exists(ids) ? Files.readAllLines(ids) : List.of());
        StringBuilder batch = new StringBuilder();
        String line;
        while ((line = in.readLine()) != null) {
            if (!line.startsWith("[")) { batch.append(line).append('\n'); continue; }
            String id = field(line, "batch_id");
            if (applied.add(id)) {
                Files.writeString(file, batch, StandardOpenOption.CREATE, StandardOpenOption.APPEND);
                Files.writeString(ids, id + "\n", StandardOpenOption.CREATE, StandardOpenOption.APPEND);
            } else {
                Files.writeString(log, "again " + id + "\n", StandardOpenOption.CREATE, StandardOpenOption.APPEND);
            }
            batch.setLength(0);
            out.print(line + "\n");
            out.flush();
        }
    }
}
"""

#: A sink that acknowledges its first batch and fails on its second (unless ``FAIL`` is not set).
FAILING_SINK = r"""
import os, sys
json_args = sys.stdin.readline()
batches = 0
for line in sys.stdin:
    if line.startswith("["):
        batches += 1
        if batches == 2 and os.environ.get("FAIL"):
            print("disk of the sink is full", file=sys.stderr, flush=True)
            sys.exit(3)
        sys.stdout.write(line)
        sys.stdout.flush()
"""


def write_project(folder: Path, sink: dict[str, Any], limit: int = 1000, batch: int = 300) -> Path:
    data = {
        "pipelines": {
            "p": {
                "sink": sink,
                "tables": {
                    "numbers": {
                        "columns": {"n": "BIGINT"},
                        "connectors": [
                            {
                                "name": "gen",
                                "max_batch_size": batch,
                                "transport": {"name": "datagen", "config": {"plan": [{"limit": limit}]}},
                            }
                        ],
                    }
                },
            }
        }
    }
    path = folder / "connectors.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def connectors(project: Path, *args: str, code: int = 0) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["--project-file", str(project), *args])
    assert result.exit_code == code, f"{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def received(out: Path) -> list[int]:
    return sorted(json.loads(line)["n"] for line in out.read_text().splitlines())


@pytest.mark.skipif(shutil.which("java") is None, reason="java is not installed")
def test_a_java_sink_acknowledges_every_batch_and_a_resent_batch_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "AckSink.java").write_text(JAVA_SINK)
    out = tmp_path / "received.jsonl"
    sink = {"kind": "command", "command": ["java", "AckSink.java"], "args": {"out": str(out)}, "timeout_seconds": 60}
    project = write_project(tmp_path, sink)
    connectors(project, "setup", "p", "--confirm-prerequisites")

    pipeline = Pipeline(load_project(project), "p")
    handle = pipeline.connector("numbers", "gen")
    with IngestSession(pipeline, DuckDBClients(tmp_path / "unused.duckdb"), log=lambda _: None) as session:
        for _ in range(2):
            assert session.ingest_batch(handle).records == 300
    old_copy = tmp_path / "after-batch-2.db"
    with sqlite3.connect(handle.state.path) as live, sqlite3.connect(old_copy) as copy:
        live.backup(copy)
    connector_id = str(handle.connector_id)
    pipeline.close()

    assert connectors(project, "run", "p")["records"] == 400
    assert received(out) == list(range(1000))
    batch_ids = out.with_suffix(".jsonl.ids").read_text().split()
    assert batch_ids == [f"{connector_id}:{seq}" for seq in (1, 2, 3, 4)], "one id per batch, handed in order"

    for suffix in ("", "-wal", "-shm"):  # the state commit after batches 3 and 4 is lost
        Path(f"{handle.state.path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(old_copy, handle.state.path)
    assert connectors(project, "run", "p")["records"] == 400, "batches 3 and 4 are sent again..."
    log = out.with_suffix(".jsonl.log").read_text().split("\n")
    assert log[:2] == [f"again {connector_id}:3", f"again {connector_id}:4"]
    assert received(out) == list(range(1000)), "...with the same ids, so the program applied them once"
    stats = connectors(project, "connector", "p", "numbers", "gen", "stats", "--format", "json")
    assert stats["metrics"]["total_records"] == 1000 and stats["metrics"]["end_of_input"]


def test_a_failing_sink_program_fails_the_batch_with_its_stderr_and_the_next_run_resends_it(tmp_path: Path) -> None:
    (tmp_path / "sink.py").write_text(FAILING_SINK)
    sink = {"kind": "command", "command": ["python3", "sink.py"], "env": {"FAIL": "yes"}}
    project = write_project(tmp_path, sink, limit=900)
    connectors(project, "setup", "p", "--confirm-prerequisites")
    pipeline = Pipeline(load_project(project), "p")
    handle = pipeline.connector("numbers", "gen")
    try:
        with IngestSession(pipeline, DuckDBClients(tmp_path / "unused.duckdb"), log=lambda _: None) as session:
            assert session.ingest_batch(handle).records == 300
            failed = session.ingest_batch(handle)
            assert failed.records == 0 and failed.error is not None
            assert "command sink 'python3 sink.py'" in failed.error and "exited with 3" in failed.error
            assert "disk of the sink is full" in failed.error and "will be sent again" in failed.error
            assert handle.state.position()[1] == 1, "the batch that was not acknowledged is not committed"
            assert session.ingest_batch(handle).records == 300, "the program is started again: batch 2 again"
            assert handle.state.position()[1] == 2
    finally:
        pipeline.close()


def test_a_command_sink_whose_program_is_missing_is_a_load_error(tmp_path: Path) -> None:
    project = write_project(tmp_path, {"kind": "command", "command": ["no-such-sink-program"]})
    with pytest.raises(ProjectFileError) as error:
        load_project(project)
    assert "pipelines.p.sink.command" in str(error.value) and "not found on PATH" in str(error.value)


LEAKY_SINK = r"""
import os, sys
print("token is", os.environ["SINK_TOKEN"], file=sys.stderr, flush=True)
sys.exit(2)
"""

ECHO_PROCESSOR = r"""
import os, sys
print("processor token", os.environ["PROC_TOKEN"], file=sys.stderr, flush=True)
sys.stdin.readline()
for line in sys.stdin:
    sys.stdout.write(line)
    sys.stdout.flush()
"""


def test_secrets_of_a_command_sink_and_a_processor_stay_out_of_every_file_and_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sentinels in the ``{env: ...}`` secrets of a command sink and of a jsonl processor: the programs get them, print
    them to stderr and the sink fails; the error that names the sink carries its stderr tail masked, and no file under
    the project (state, backups, anything) and no output holds a sentinel."""
    sentinels = {"SINK_TOKEN": "SENTINEL-sink-4711", "PROC_TOKEN": "SENTINEL-proc-4712"}
    for name, value in sentinels.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "sink.py").write_text(LEAKY_SINK)
    (tmp_path / "proc.py").write_text(ECHO_PROCESSOR)
    sink = {"kind": "command", "command": ["python3", "sink.py"], "env": {"SINK_TOKEN": {"env": "SINK_TOKEN"}}}
    project = write_project(tmp_path, sink, limit=10)
    data = yaml.safe_load(project.read_text())
    data["pipelines"]["p"]["tables"]["numbers"]["connectors"][0]["processors"] = [
        {
            "kind": "command",
            "protocol": "jsonl",
            "command": ["python3", "proc.py"],
            "env": {"PROC_TOKEN": {"env": "PROC_TOKEN"}},
        }
    ]
    project.write_text(yaml.safe_dump(data, sort_keys=False))
    connectors(project, "setup", "p", "--confirm-prerequisites")
    result = CliRunner().invoke(cli, ["--project-file", str(project), "run", "p"])
    answer = json.loads(result.stdout)
    assert result.exit_code == 1 and answer["response_code"] == "CONNECTOR_FATAL_ERROR"
    assert "command sink 'python3 sink.py' exited with 2" in answer["message"] and "token is ****" in answer["message"]
    outputs = result.stdout + result.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name not in ("sink.py", "proc.py")]
    assert any(p.name == "sqlite.db" for p in files), "the state and its backups were written"
    for value in sentinels.values():
        assert value not in outputs
        assert [p for p in files if value.encode() in p.read_bytes()] == []
