"""Feldera's habits: unnamed connectors are named ``unnamed-{index}``; ``connector ... stats`` prints JSON into a pipe
and text on a terminal (the ``fda ... stats | jq`` habit)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import connector_cli.output
from connector_cli.main import cli
from connector_core.lifecycle import Lifecycle
from connector_core.orchestration import release_start_after
from connector_core.pipeline import Pipeline
from connector_core.project import ProjectFileError, load_project, parse_project
from connector_core.state import BatchCommit
from resources import build_clients

PROJECT = """
pipelines:
  demo:
    tables:
      t:
        connectors:
          - transport: {name: datagen, config: {plan: [{limit: 3}]}}
          - start_after: t.unnamed-0
            transport: {name: datagen, config: {plan: [{limit: 3}]}}
          - name: named
            start_after: [t.unnamed-1]
            transport: {name: datagen, config: {plan: [{limit: 3}]}}
          - transport: {name: datagen, config: {plan: [{limit: 3}]}}
"""


def table(*connectors: dict[str, Any]) -> dict[str, Any]:
    """A project whose pipeline ``p`` has one table ``t`` with ``connectors``."""
    return {"pipelines": {"p": {"tables": {"t": {"connectors": list(connectors)}}}}}


def datagen(**keys: Any) -> dict[str, Any]:
    return {"transport": {"name": "datagen"}, **keys}


# ---------------------------------------------------------------------------------------- unnamed connectors
def test_a_connector_without_a_name_is_named_by_its_index_like_feldera(project_file: Path) -> None:
    spec = load_project(project_file).pipeline("demo")
    assert [c.name for c in spec.tables["t"].connectors] == ["unnamed-0", "unnamed-1", "named", "unnamed-3"]
    assert spec.connector("t", "unnamed-1").start_after == ["t.unnamed-0"]
    assert spec.connector("t", "named").start_after == ["t.unnamed-1"], "an explicit name is kept"


def test_unnamed_names_take_part_in_duplicate_detection_and_cycles() -> None:
    with pytest.raises(ProjectFileError, match="two connectors are named 'unnamed-1'"):
        parse_project(table(datagen(name="unnamed-1"), datagen()))
    with pytest.raises(ProjectFileError, match=r"start_after cycle: t\.unnamed-0 waits for label 't\.unnamed-1'"):
        parse_project(table(datagen(start_after="t.unnamed-1"), datagen(start_after=["t.unnamed-0"])))
    with pytest.raises(ProjectFileError, match=r"connectors\[0\]\.name"):
        parse_project(table(datagen(name="has space")))  # a given name still has to match the pattern
    named_null = parse_project(table(datagen(name=None), datagen()))
    assert [c.name for c in named_null.pipeline("p").tables["t"].connectors] == ["unnamed-0", "unnamed-1"]


def test_start_after_an_unnamed_connector_releases_it_once_it_finishes(project_file: Path) -> None:
    pipeline = Pipeline(load_project(project_file), "demo")
    try:
        assert Lifecycle(pipeline, build_clients(pipeline)).setup(confirm_prerequisites=True).ok
        assert [h.endpoint for h in pipeline.connectors()] == ["t.unnamed-0", "t.unnamed-1", "t.named", "t.unnamed-3"]
        assert release_start_after(pipeline) == []
        first = pipeline.connector("t", "unnamed-0")
        first.state.commit_batch(
            BatchCommit(position={"emitted": 3}, batch_seq=1, records=3, bytes=24, end_of_input=True)
        )
        assert release_start_after(pipeline) == ["t.unnamed-1"]
        assert pipeline.stats(pipeline.connector("t", "unnamed-1"))["endpoint_name"] == "t.unnamed-1"
    finally:
        pipeline.close()


# ------------------------------------------------------------------------------------------- stats output
def stats(project_file: Path, *options: str) -> str:
    """``connectors connector demo t unnamed-0 stats`` through click's runner (whose stdout is not a terminal)."""
    result = CliRunner().invoke(
        cli, ["--project-file", str(project_file), "connector", "demo", "t", "unnamed-0", "stats", *options]
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def test_stats_print_json_into_a_pipe_and_text_on_a_terminal(
    project_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert json.loads(stats(project_file))["endpoint_name"] == "t.unnamed-0", "not a terminal: JSON"
    assert stats(project_file, "--format", "text").startswith("connector t.unnamed-0")

    monkeypatch.setattr(connector_cli.output, "stdout_is_terminal", lambda: True)
    assert stats(project_file).startswith("connector t.unnamed-0"), "a terminal: text"
    assert json.loads(stats(project_file, "--format", "json"))["paused"] is False, "an explicit --format wins"


def run_on_a_terminal(args: list[str], timeout: float = 60) -> str:
    """The stdout of a program whose stdout is a pseudo-terminal (stderr is a pipe)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(args, stdout=follower, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the program closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif process.poll() is not None:
                break
        assert process.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, process.stderr.read()  # type: ignore[union-attr]
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
        process.stderr.close()  # type: ignore[union-attr]
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_stats_on_a_real_terminal_and_into_a_real_pipe(project_file: Path) -> None:
    program = [sys.executable, "-m", "connector_cli.main", "--project-file", str(project_file)]
    command = [*program, "connector", "demo", "t", "unnamed-0", "stats"]
    on_terminal = run_on_a_terminal(command)
    assert on_terminal.startswith("connector t.unnamed-0") and "paused: no" in on_terminal
    piped = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    assert json.loads(piped)["endpoint_name"] == "t.unnamed-0"
    explicit = run_on_a_terminal([*command, "--format", "json"])
    assert json.loads(explicit)["endpoint_name"] == "t.unnamed-0"


def test_pipeline_stats_keep_text_as_their_default(project_file: Path) -> None:
    result = CliRunner().invoke(cli, ["--project-file", str(project_file), "pipeline", "demo", "stats"])
    assert result.exit_code == 0 and result.stdout.startswith("pipeline demo")
