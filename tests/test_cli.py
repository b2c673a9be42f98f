"""The ``connectors`` command line (DESIGN §7): discovery, errors, wizard, lifecycle, stats and headless runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import duckdb
import pytest
from click.testing import CliRunner, Result

from connector_cli.main import cli
from connector_cli.settings import parse_settings
from connector_core.lifecycle import Lifecycle
from connector_core.pipeline import Pipeline
from connector_core.project import PROJECT_FILE_ENV, load_project

PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

DEMO = """
pipelines:
  demo:
    sink: {kind: duckdb, path: sink.duckdb}
    prerequisites:
      - {id: acl, title: Grant READ on the source}
      - {id: net, title: Open the firewall}
    tables:
      numbers:
        columns: {n: BIGINT}
        connectors:
          - name: running
            transport: {name: datagen, config: {plan: [{limit: 5}]}}
          - name: waiting
            paused: true
            transport: {name: datagen, config: {plan: [{limit: 3, fields: {n: {values: [100, 101, 102]}}}]}}
"""

STATS_KEYS = {"endpoint_name", "config", "paused", "active", "metrics", "parse_errors", "fatal_error"}
METRICS_KEYS = {
    "total_records",
    "total_bytes",
    "buffered_records",
    "end_of_input",
    "num_parse_errors",
    "num_transport_errors",
}


def write_project(folder: Path, text: str = DEMO, name: str = "connectors.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def assert_clean(result: Result) -> None:
    """No Python exception escaped the command and nothing printed a traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


@dataclass
class Cli:
    """Invoke ``connectors --project-file PROJECT ...`` in process and check its exit code."""

    project: Path

    def __call__(self, *args: str, code: int = 0, env: dict[str, str | None] | None = None) -> Result:
        result = CliRunner().invoke(cli, ["--project-file", str(self.project), *args], env=env)
        assert_clean(result)
        assert result.exit_code == code, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        return result

    def json(self, *args: str, code: int = 0, env: dict[str, str | None] | None = None) -> dict[str, Any]:
        return json.loads(self(*args, code=code, env=env).stdout)

    def force(self, pipeline: str, status: str) -> None:
        """Put a pipeline into a status directly (to reach states no command leads to, such as ERROR)."""
        opened = Pipeline(load_project(self.project), pipeline)
        try:
            opened.ensure_created()
            with opened.state.transaction() as conn:
                opened.state.put(conn, "status", status)
        finally:
            opened.close()

    def statuses(self, pipeline: str = "demo") -> tuple[str | None, str | None]:
        opened = Pipeline(load_project(self.project), pipeline)
        try:
            return opened.state.status, opened.state.configuration_status
        finally:
            opened.close()


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.delenv(PROJECT_FILE_ENV, raising=False)
    return Cli(write_project(tmp_path / "project"))


@pytest.fixture
def started(demo: Cli) -> Cli:
    """The demo pipeline set up: FINALIZED and STARTED."""
    demo("setup", "demo", "--confirm-prerequisites")
    return demo


def sink_values(project: Path) -> list[int]:
    """Every ``n`` in the DuckDB sink's ``numbers`` table, read with duckdb directly."""
    with duckdb.connect(str(project.parent / "sink.duckdb"), read_only=True) as con:
        return [row[0] for row in con.execute("SELECT n FROM numbers ORDER BY n").fetchall()]


# ------------------------------------------------------------------------------------------------ --set
def test_set_values_are_parsed_and_env_references_name_variables() -> None:
    values = parse_settings(
        ("a=true", "b=FALSE", "c=42", "d=-7", "e=1.5", "f=007", "g=hello world", "h=env:MY_VAR", "i=x=y", "j=")
    )
    assert values == {
        "a": True,
        "b": False,
        "c": 42,
        "d": -7,
        "e": 1.5,
        "f": "007",
        "g": "hello world",
        "h": {"env": "MY_VAR"},
        "i": "x=y",
        "j": "",
    }
    assert parse_settings(("sasl.password=env:KAFKA_PASSWORD",)) == {"sasl.password": {"env": "KAFKA_PASSWORD"}}
    # whether a key may hold a literal is the core's secret rule, applied by the procedure (see update-connection)
    assert parse_settings(("password=hunter2",)) == {"password": "hunter2"}
    for bad in ("novalue", "=1", "x=env:1BAD"):
        with pytest.raises(click.BadParameter):
            parse_settings((bad,))


# ------------------------------------------------------------------------------------- project discovery
def test_project_file_option_wins_over_env_var_which_wins_over_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    option_file = write_project(tmp_path / "a", DEMO.replace("demo:", "alpha:"))
    env_file = write_project(tmp_path / "b", DEMO.replace("demo:", "beta:"), name="other.yaml")
    write_project(tmp_path / "cwd", DEMO.replace("demo:", "gamma:"))
    monkeypatch.chdir(tmp_path / "cwd")

    def pipelines_named(args: list[str], env: dict[str, str | None]) -> str:
        result = CliRunner().invoke(cli, [*args, "pipeline", "nope", "status"], env=env)
        assert_clean(result)
        assert result.exit_code == 2
        return result.stderr

    assert "pipelines: alpha" in pipelines_named(
        ["--project-file", str(option_file)], {PROJECT_FILE_ENV: str(env_file)}
    )
    assert "pipelines: beta" in pipelines_named([], {PROJECT_FILE_ENV: str(env_file)})
    assert "pipelines: gamma" in pipelines_named([], {PROJECT_FILE_ENV: None})

    result = CliRunner().invoke(cli, ["wizard", "gamma", "reset"], env={PROJECT_FILE_ENV: None})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "CONFIGURING"
    assert (tmp_path / "cwd" / ".connectors" / "gamma" / "pipeline.sqlite").is_file()  # state beside the file


def test_state_dir_option_overrides_the_default(demo: Cli, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["--project-file", str(demo.project), "--state-dir", str(tmp_path / "elsewhere"), "wizard", "demo", "reset"],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "elsewhere" / "demo" / "pipeline.sqlite").is_file()
    assert not (demo.project.parent / ".connectors").exists()


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            DEMO.replace("name: running", "name: running\n            bogus: 1"),
            "pipelines.demo.tables.numbers.connectors[0].bogus",
        ),
        ("pipelines: [not, a, mapping\n", "not valid YAML"),
        (DEMO.replace("limit: 5", "limit: 5, wrong_key: 1"), "wrong_key"),
    ],
)
def test_bad_project_file_prints_its_message_and_exits_2(demo: Cli, text: str, expected: str) -> None:
    demo.project.write_text(textwrap.dedent(text))
    result = demo("pipeline", "demo", "status", code=2)
    assert "Invalid project file" in result.stderr
    assert str(demo.project) in result.stderr
    assert expected in result.stderr
    assert result.stdout == ""


def test_missing_project_file_says_how_to_name_one(tmp_path: Path) -> None:
    result = Cli(tmp_path / "absent.yaml")("pipeline", "demo", "status", code=2)
    assert "file not found" in result.stderr and "--project-file" in result.stderr


def test_unknown_names_are_usage_errors_naming_what_exists(demo: Cli) -> None:
    assert "no pipeline 'nope'; pipelines: demo" in demo("pipeline", "nope", "status", code=2).stderr
    assert "pipelines: demo" in demo("wizard", "nope", "connect", code=2).stderr
    assert "pipelines: demo" in demo("run", "nope", code=2).stderr
    assert "tables: numbers" in demo("connector", "demo", "nope", "running", "stats", code=2).stderr
    assert "connectors: running, waiting" in demo("connector", "demo", "numbers", "nope", "start", code=2).stderr
    assert (
        "connections: none" in demo("pipeline", "demo", "update-connection", "pg", "--set", "dsn=env:X", code=2).stderr
    )


@pytest.mark.parametrize(
    "command", [["pipeline", "demo", "status"], ["pipeline", "demo", "stats"], ["run", "demo"]], ids=" ".join
)
def test_a_state_database_that_cannot_be_opened_answers_internal_error(
    demo: Cli, tmp_path: Path, command: list[str]
) -> None:
    state_dir = tmp_path / "state"
    (state_dir / "demo").mkdir(parents=True)
    (state_dir / "demo" / "pipeline.sqlite").write_text("not a database " * 20)
    result = CliRunner().invoke(cli, ["--project-file", str(demo.project), "--state-dir", str(state_dir), *command])
    assert_clean(result)
    assert result.exit_code == 1
    answer = json.loads(result.stdout)
    assert answer["response_code"] == "INTERNAL_ERROR" and "cannot open pipeline demo" in answer["message"]


def test_a_state_dir_under_a_file_is_refused_naming_it_without_traceback(demo: Cli, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = CliRunner().invoke(
        cli, ["--project-file", str(demo.project), "--state-dir", str(blocker / "state"), "wizard", "demo", "reset"]
    )
    assert_clean(result)
    assert result.exit_code == 1
    answer = json.loads(result.stdout)
    assert answer["response_code"] == "INTERNAL_ERROR" and "not-a-dir" in answer["message"]
    assert "state_dir" in answer["message"] and "is a file, not a folder" in answer["message"]


def test_an_unexpected_exception_answers_internal_error(demo: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: Lifecycle) -> None:
        raise RuntimeError("boom in status")

    monkeypatch.setattr(Lifecycle, "status", boom)
    answer = demo.json("pipeline", "demo", "status", code=1)
    assert answer == {"response_code": "INTERNAL_ERROR", "message": "pipeline demo: RuntimeError: boom in status"}


# ---------------------------------------------------------------------------------------------- wizard
def test_wizard_steps_one_by_one(demo: Cli) -> None:
    listed = demo.json("wizard", "demo", "prerequisites")
    assert [p["id"] for p in listed["prerequisites"]] == ["acl", "net"]

    incomplete = demo.json("wizard", "demo", "prerequisites", "--complete", code=1)
    assert incomplete["response_code"] == "PREREQUISITES_INCOMPLETE"
    assert "acl" in incomplete["message"] and "net" in incomplete["message"]
    assert demo.json("wizard", "demo", "prerequisites", "--done", "nope", code=1)["response_code"] == (
        "PREREQUISITE_NOT_FOUND"
    )

    marked = demo.json("wizard", "demo", "prerequisites", "--done", "acl")
    assert {p["id"]: p["done"] for p in marked["prerequisites"]} == {"acl": True, "net": False}
    assert demo.statuses() == ("CONFIGURING", "INSTALLED")
    demo("wizard", "demo", "reset")
    undone = demo.json("pipeline", "demo", "status")["prerequisites"]
    assert [p["done"] for p in undone] == [False, False]

    assert demo.json("wizard", "demo", "prerequisites", "--all", "--complete")["configurationStatus"] == (
        "PREREQUISITES_DONE"
    )
    refused = demo.json("wizard", "demo", "configure", "--set", "bogus=1", code=1)
    assert refused["response_code"] == "CONNECTOR_CONFIGURATION_PARSING_ERROR"
    assert "bogus" in refused["message"]
    assert demo.json("wizard", "demo", "finalize", code=1)["response_code"] == "INVALID_CONNECTOR_CONFIGURATION_STATUS"
    assert demo.json("wizard", "demo", "configure", "--set", "schema=main")["configurationStatus"] == "CONFIGURED"
    assert demo.json("wizard", "demo", "connect")["configurationStatus"] == "CONNECTED"
    finalized = demo.json("wizard", "demo", "finalize")
    assert (finalized["status"], finalized["configurationStatus"]) == ("STARTED", "FINALIZED")
    assert demo.json("wizard", "demo", "reset", code=1)["response_code"] == "INVALID_CONNECTOR_STATUS"
    assert demo.statuses() == ("STARTED", "FINALIZED")


def test_setup_stops_on_open_prerequisites_and_goes_through_when_confirmed(demo: Cli) -> None:
    stopped = demo.json("setup", "demo", code=1)
    assert stopped["response_code"] == "PREREQUISITES_INCOMPLETE"
    assert "acl" in stopped["message"] and "net" in stopped["message"]
    assert demo.statuses() == ("CONFIGURING", "INSTALLED")

    done = demo.json("setup", "demo", "--confirm-prerequisites")
    assert done["response_code"] == "OK"
    assert demo.statuses() == ("STARTED", "FINALIZED")
    assert demo.json("setup", "demo")["response_code"] == "OK"  # already set up: nothing to do


# ------------------------------------------------------------------------------------ pipeline lifecycle
def test_pipeline_status_pause_resume_recover(started: Cli) -> None:
    status = started.json("pipeline", "demo", "status")
    assert (status["status"], status["configurationStatus"]) == ("STARTED", "FINALIZED")
    assert {c["endpoint_name"]: c["state"] for c in status["connectors"]} == {
        "numbers.running": "Running",
        "numbers.waiting": "Paused",
    }

    assert started.json("pipeline", "demo", "pause")["status"] == "PAUSED"
    again = started.json("pipeline", "demo", "pause", code=1)
    assert again["response_code"] == "INVALID_CONNECTOR_STATUS"
    assert "Current status: PAUSED" in again["message"]
    assert started.json("pipeline", "demo", "resume")["status"] == "STARTED"
    assert started.json("pipeline", "demo", "recover", "--to", "PAUSED", code=1)["response_code"] == (
        "INVALID_CONNECTOR_STATUS"
    )

    started.force("demo", "ERROR")
    bogus = started.json("pipeline", "demo", "recover", "--to", "RUNNING", code=1)
    assert bogus["response_code"] == "INVALID_NEW_CONNECTOR_STATUS"
    assert started.statuses()[0] == "ERROR"
    assert started.json("pipeline", "demo", "recover", "--to", "paused")["status"] == "PAUSED"
    assert started.statuses()[0] == "PAUSED"
    assert "--to" in started("pipeline", "demo", "recover", code=2).stderr  # the option is required


def test_update_connection_takes_env_references_and_status_needs_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLI_TEST_OLD_DSN", raising=False)
    text = DEMO.replace(
        "    tables:", "    connections:\n      pg: {kind: postgres, dsn: {env: CLI_TEST_OLD_DSN}}\n    tables:"
    )
    app = Cli(write_project(tmp_path / "project", text))

    assert app.json("pipeline", "demo", "status")["status"] == "CONFIGURING"  # the secret is not needed here
    assert "at least one --set" in app("pipeline", "demo", "update-connection", "pg", code=2).stderr
    assert "connections: pg" in app("pipeline", "demo", "update-connection", "pq", "--set", "dsn=env:X", code=2).stderr
    not_paused = app.json("pipeline", "demo", "update-connection", "pg", "--set", "dsn=env:CLI_TEST_DSN", code=1)
    assert not_paused["response_code"] == "INVALID_CONNECTOR_STATUS"

    app.force("demo", "PAUSED")
    literal = app("pipeline", "demo", "update-connection", "pg", "--set", f"dsn={PG_DSN}", code=1)
    refused = json.loads(literal.stdout)
    assert refused["response_code"] == "CONNECTOR_CONFIGURATION_PARSING_ERROR"
    assert "dsn" in refused["message"] and "--set dsn=env:NAME" in refused["message"]
    assert PG_DSN not in literal.output  # never printed back...
    state_files = [path for path in (app.project.parent / ".connectors").rglob("*") if path.is_file()]
    assert any(path.name == "pipeline.sqlite" for path in state_files)
    assert not any(PG_DSN.encode() in path.read_bytes() for path in state_files)  # ...nor stored

    env = {
        "CLI_TEST_OLD_DSN": PG_DSN,
        "CLI_TEST_DSN": PG_DSN,
        "CLI_TEST_BAD_DSN": "postgresql://postgres@127.0.0.1:1/x",
    }
    failed = app.json(
        "pipeline", "demo", "update-connection", "pg", "--set", "dsn=env:CLI_TEST_BAD_DSN", env=env, code=1
    )
    assert failed["response_code"] == "CONNECTION_FAILED" and "pg" in failed["message"]
    app("pipeline", "demo", "update-connection", "pg", "--set", "dsn=env:CLI_TEST_DSN", env=env)
    opened = Pipeline(load_project(app.project), "demo")
    try:
        assert opened.connection_settings("pg")["dsn"] == {"env": "CLI_TEST_DSN"}
        assert opened.state.status == "PAUSED"
    finally:
        opened.close()

    warehouse = app.json("pipeline", "demo", "update-warehouse", "LOAD_WH", code=1)  # a DuckDB sink has none
    assert warehouse["response_code"] == "CONNECTOR_CONFIGURATION_PARSING_ERROR"


# ------------------------------------------------------------------------------ the demo command, run again
def leave_in(app: Cli, status: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave the demo pipeline in ``status`` as users do: the wizard stopped halfway (CONFIGURING), set up (STARTED),
    paused (PAUSED), a resume or pause that died midway (STARTING, PAUSING), or a pause whose callback failed and
    whose rollback failed too (ERROR, as in ``test_lifecycle``)."""
    if status == "CONFIGURING":
        app("wizard", "demo", "prerequisites", "--all", "--complete")
        app("wizard", "demo", "configure")
        return
    app("setup", "demo", "--confirm-prerequisites")
    if status in ("PAUSED", "STARTING"):
        app("pipeline", "demo", "pause")
    if status in ("STARTING", "PAUSING"):
        app.force("demo", status)
    if status == "ERROR":
        opened = Pipeline(load_project(app.project), "demo")
        try:
            rollback = {"response_code": "ROLLBACK_CODE", "message": "consumers busy"}
            life = Lifecycle(opened, hooks={"pause_callback": lambda context: rollback})

            def broken(*args: Any) -> None:
                raise OSError("disk full")

            monkeypatch.setattr(life, "_put_status_back", broken)
            assert life.pause().response_code == "UNKNOWN_ERROR_CODE"
        finally:
            opened.close()
    assert app.statuses()[0] == status


@pytest.mark.parametrize("status", ["CONFIGURING", "STARTING", "STARTED", "PAUSING", "PAUSED", "ERROR"])
def test_the_demo_command_runs_again_whatever_the_status(
    demo: Cli, status: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: `connectors setup P --confirm-prerequisites && connectors run P --resume` answers OK from every
    status, ingests, and leaves the pipeline STARTED; what it left (and why it was in ERROR) is said, not hidden."""
    leave_in(demo, status, monkeypatch)
    assert demo.json("setup", "demo", "--confirm-prerequisites")["response_code"] == "OK"
    ran = demo("run", "demo", "--resume")
    summary = json.loads(ran.stdout)
    assert summary["response_code"] == "OK" and summary["records"] == 5
    assert demo.statuses() == ("STARTED", "FINALIZED")
    if status in ("CONFIGURING", "STARTED"):
        assert "resumed_from" not in summary
    else:
        assert summary["resumed_from"] == status
        procedure = "resume" if status in ("PAUSED", "STARTING") else "recover"
        assert f"{procedure}: OK: " in ran.stderr and f"(it was {status}" in ran.stderr
    if status == "ERROR":
        assert "consumers busy" in summary["error_cause"] and "disk full" in summary["error_cause"]
        assert "(it was ERROR after pause: UNKNOWN_ERROR_CODE: consumers busy; putting the status" in ran.stderr
    again = demo.json("run", "demo", "--resume")  # and once more: nothing left to ingest, still OK
    assert (again["response_code"], again["records"]) == ("OK", 0)


@pytest.mark.parametrize("status", ["PAUSED", "ERROR"])
def test_setup_and_run_without_resume_name_the_way_back(started: Cli, status: str) -> None:
    started.force("demo", status)
    setup = started.json("setup", "demo")
    assert setup["response_code"] == "OK" and f"already set up (it is {status})" in setup["message"]
    assert "`connectors pipeline demo " in setup["message"]
    refused = started.json("run", "demo", code=1)
    assert refused["response_code"] == "INVALID_CONNECTOR_STATUS"
    assert "`connectors run demo --resume` brings it back to STARTED first" in refused["message"]


def test_run_resume_leaves_an_error_before_setup_to_setup(demo: Cli) -> None:
    """An ERROR the wizard never finished is not recovered to STARTED (it has no sink tables): refused, naming
    recover."""
    demo.force("demo", "ERROR")
    refused = demo.json("run", "demo", "--resume", code=1)
    assert refused["response_code"] == "INVALID_CONNECTOR_STATUS"
    assert "`connectors pipeline demo recover --to STARTED|PAUSED` to leave ERROR" in refused["message"]
    assert demo.statuses() == ("ERROR", "INSTALLED")


# ----------------------------------------------------------------------------------------------- connector
def test_connector_start_pause_and_stats_shape(started: Cli) -> None:
    stats = started.json("connector", "demo", "numbers", "waiting", "stats", "--format", "json")
    assert STATS_KEYS <= set(stats)
    assert set(stats["metrics"]) >= METRICS_KEYS
    assert stats["endpoint_name"] == "numbers.waiting"
    assert (stats["paused"], stats["active"], stats["fatal_error"], stats["parse_errors"]) == (True, False, None, [])
    assert stats["config"]["transport"]["name"] == "datagen"

    assert started.json("connector", "demo", "numbers", "waiting", "start")["state"] == "Running"
    assert started.json("connector", "demo", "numbers", "waiting", "start")["response_code"] == "OK"  # idempotent
    stats = started.json("connector", "demo", "numbers", "waiting", "stats", "--format", "json")
    assert (stats["paused"], stats["active"]) == (False, True)
    assert started.json("connector", "demo", "numbers", "waiting", "pause")["state"] == "Paused"

    text = started("connector", "demo", "numbers", "waiting", "stats", "--format", "text").stdout
    assert "numbers.waiting" in text and "paused: yes" in text and "records: 0" in text


# ------------------------------------------------------------------------------- the orchestration example
def test_paused_connector_and_paused_pipeline_ingest_nothing_until_started(started: Cli) -> None:
    """Issue example: only Running connectors of a STARTED pipeline reach the sink."""
    assert sink_values(started.project) == []

    first = started("run", "demo")
    assert json.loads(first.stdout)["records"] == 5
    assert "numbers.running" in first.stderr  # progress lines
    assert sink_values(started.project) == [0, 1, 2, 3, 4]  # the paused connector brought nothing

    running = started.json("connector", "demo", "numbers", "running", "stats", "--format", "json")
    assert running["metrics"]["total_records"] == 5 and running["metrics"]["end_of_input"] is True

    started("pipeline", "demo", "pause")
    started("connector", "demo", "numbers", "waiting", "start")
    refused = started.json("run", "demo", code=1)
    assert refused["response_code"] == "INVALID_CONNECTOR_STATUS" and "PAUSED" in refused["message"]
    assert sink_values(started.project) == [0, 1, 2, 3, 4]  # a paused pipeline ingests nothing

    started("pipeline", "demo", "resume")
    second = json.loads(started("run", "demo").stdout)
    assert second["records"] == 3 and second["records_by_connector"] == {"numbers.waiting": 3}
    assert sink_values(started.project) == [0, 1, 2, 3, 4, 100, 101, 102]

    assert json.loads(started("run", "demo").stdout)["records"] == 0  # everything finished: nothing twice
    assert sink_values(started.project) == [0, 1, 2, 3, 4, 100, 101, 102]

    stats = started.json("pipeline", "demo", "stats", "--format", "json")
    assert [c["metrics"]["total_records"] for c in stats["connectors"]] == [5, 3]
    assert sum(h["records"] for h in stats["hourly_stats"] if h["connector"] == "*") == 8
    text = started("pipeline", "demo", "stats").stdout
    assert "CONNECTOR" in text and "numbers.running" in text and "numbers.waiting" in text
    assert "hourly statistics" in text


# ----------------------------------------------------------------------------------- fatal errors in a run
FAILING = """
pipelines:
  demo:
    sink: {kind: duckdb, path: sink.duckdb}
    tables:
      numbers:
        columns: {n: BIGINT}
        connectors:
          - name: good
            transport: {name: datagen, config: {plan: [{limit: 5}]}}
          - name: broken
            transport: %s
            format: {name: json}
"""


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("transport", ["url_input", "command"])
def test_run_exits_1_naming_a_connector_that_ended_it_on_a_fatal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    monkeypatch.delenv(PROJECT_FILE_ENV, raising=False)
    broken = {
        "url_input": {"name": "url_input", "config": {"path": f"http://127.0.0.1:{closed_port()}/numbers.json"}},
        "command": {"name": "command", "config": {"command": [sys.executable, "-c", "import sys; sys.exit(3)"]}},
    }[transport]
    app = Cli(write_project(tmp_path / "project", FAILING % json.dumps(broken)))
    app("setup", "demo")

    failed = app("run", "demo", code=1)
    answer = json.loads(failed.stdout)
    assert answer["response_code"] == "CONNECTOR_FATAL_ERROR"
    assert list(answer["fatal_errors"]) == ["numbers.broken"] and answer["earlier_fatal_errors"] == {}
    cause = answer["fatal_errors"]["numbers.broken"]
    assert transport in cause or "exit" in cause
    assert f"numbers.broken: {cause}" in answer["message"]
    assert "connectors connector demo numbers broken start" in answer["message"]
    assert answer["records_by_connector"]["numbers.good"] == 5
    assert sink_values(app.project) == [0, 1, 2, 3, 4]  # the healthy connector still delivered
    stats = app.json("connector", "demo", "numbers", "broken", "stats", "--format", "json")
    assert stats["fatal_error"] == cause

    again = app.json("run", "demo")  # the stopped connector is left alone: nothing failed in this run
    assert (again["response_code"], again["batches"], again["fatal_errors"]) == ("OK", 0, {})
    assert again["earlier_fatal_errors"] == {"numbers.broken": cause}

    app("connector", "demo", "numbers", "broken", "start")
    cleared = app.json("connector", "demo", "numbers", "broken", "stats", "--format", "json")
    assert cleared["fatal_error"] is None and cleared["active"] is True
    retried = app.json("run", "demo", code=1)  # started again, it is retried (and fails again)
    assert list(retried["fatal_errors"]) == ["numbers.broken"] and retried["batches"] > 0


# --------------------------------------------------------------------------------------- read-only commands
def test_reading_a_fresh_pipeline_creates_no_state(demo: Cli) -> None:
    status = demo.json("pipeline", "demo", "status")
    assert (status["status"], status["configurationStatus"], status["pipeline_id"]) == (
        "CONFIGURING",
        "INSTALLED",
        None,
    )
    assert [c["connector_id"] for c in status["connectors"]] == [None, None]
    stats = demo.json("pipeline", "demo", "stats", "--format", "json")
    assert (stats["status"], stats["configurationStatus"], stats["pipeline_id"]) == (
        "CONFIGURING",
        "INSTALLED",
        None,
    )
    assert [(c["connector_id"], c["paused"]) for c in stats["connectors"]] == [(None, False), (None, True)]
    assert "status CONFIGURING, configurationStatus INSTALLED" in demo("pipeline", "demo", "stats").stdout
    assert demo.json("connector", "demo", "numbers", "running", "stats", "--format", "json")["connector_id"] is None
    assert not (demo.project.parent / ".connectors").exists()


def test_commands_that_reach_no_connection_do_not_import_dagster(demo: Cli) -> None:
    commands = [
        ["pipeline", "demo", "status"],
        ["pipeline", "demo", "stats", "--format", "json"],
        ["wizard", "demo", "prerequisites", "--all", "--complete"],
        ["wizard", "demo", "configure", "--set", "schema=main"],
        ["connector", "demo", "numbers", "waiting", "start"],
        ["connector", "demo", "numbers", "waiting", "stats"],
    ]
    program = textwrap.dedent(
        """
        import json, sys
        from connector_cli.main import cli
        codes = [cli.main(["--project-file", sys.argv[1], *args], standalone_mode=False) or 0
                 for args in json.loads(sys.argv[2])]
        print(json.dumps({"codes": codes, "dagster": sorted(m for m in sys.modules if m.split(".")[0] == "dagster")}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program, str(demo.project), json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"codes": [0] * len(commands), "dagster": []}


# ------------------------------------------------------------------------------------ the installed script
def test_installed_script_and_module_status_and_bad_file(demo: Cli, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "connectors"
    env = {k: v for k, v in os.environ.items() if k != PROJECT_FILE_ENV}
    state_dir = tmp_path / "script-state"
    for program in ([str(script)], [sys.executable, "-m", "connector_cli.main"]):
        ok = subprocess.run(
            [*program, "--project-file", str(demo.project), "--state-dir", str(state_dir), "wizard", "demo", "reset"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert ok.returncode == 0, ok.stderr
        assert ok.stderr == ""  # no warning either
        assert json.loads(ok.stdout)["configurationStatus"] == "INSTALLED"
        assert (state_dir / "demo" / "pipeline.sqlite").is_file()

    demo.project.write_text("pipelines:\n  demo:\n    tables: {}\n")
    bad = subprocess.run(
        [str(script), "pipeline", "demo", "status"],
        capture_output=True,
        text=True,
        env={**env, PROJECT_FILE_ENV: str(demo.project)},
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "Invalid project file" in bad.stderr and "pipelines.demo.tables" in bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout
