"""The command line in the Dagster history (``connector_cli.history``), the demo's Dagster home, and the progress
of ``connectors run`` on a terminal and in a pipe."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner, Result

import connector_core.state
from connector_assets import build_definitions
from connector_assets import metadata as asset_metadata
from connector_cli.history import DAGSTER_YAML, SOURCE_KEY
from connector_cli.main import cli
from connector_core.pipeline import Pipeline
from connector_core.project import load_project

PROJECT = """
pipelines:
  demo:
    sink: {kind: duckdb, path: demo.duckdb}
    tables:
      numbers:
        columns: {n: BIGINT}
        connectors:
          - name: gen
            transport: {name: datagen, config: {plan: [{limit: 10}]}}
          - name: later
            paused: true
            transport: {name: datagen, config: {plan: [{limit: 5}]}}
      events:
        connectors:
          - name: gen
            transport: {name: datagen, config: {plan: [{limit: 3, fields: {id: {}, kind: {values: [x, y]}}}]}}
"""
NUMBERS = dg.AssetKey(["demo", "numbers"])
EVENTS = dg.AssetKey(["demo", "events"])


def write_project(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "connectors.yaml"
    path.write_text(textwrap.dedent(PROJECT))
    return path


def connectors(project: Path, *args: str, home: Path | None, code: int = 0) -> Result:
    """``connectors --project-file PROJECT ...`` in process, with ``DAGSTER_HOME`` set to ``home`` (or unset)."""
    env = {"DAGSTER_HOME": str(home) if home else None}
    result = CliRunner().invoke(cli, ["--project-file", str(project), *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A Dagster home written by ``connectors dagster-home``."""
    folder = tmp_path / "dagster_home"
    result = CliRunner().invoke(cli, ["dagster-home", str(folder)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(folder)
    return folder


def instance_of(home: Path, monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return dg.DagsterInstance.get()


def plain(metadata: dict) -> dict:
    return {key: getattr(value, "value", value) for key, value in metadata.items()}


def test_dagster_home_is_written_once_quiet_and_local(tmp_path: Path, home: Path) -> None:
    assert (home / "dagster.yaml").read_text() == DAGSTER_YAML
    (home / "dagster.yaml").write_text("telemetry: {enabled: false}\n# mine\n")
    again = CliRunner().invoke(cli, ["dagster-home", str(home)])
    assert again.exit_code == 0 and "kept" in again.stderr
    assert (home / "dagster.yaml").read_text().endswith("# mine\n"), "an existing dagster.yaml is kept"
    fresh = tmp_path / "fresh"
    env = {**os.environ, "DAGSTER_HOME": str(fresh)}
    done = subprocess.run(
        [sys.executable, "-m", "connector_cli.main", "dagster-home"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    check = "import dagster as dg; i = dg.DagsterInstance.get(); print(i.is_ephemeral, i.root_directory)"
    shown = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True)
    assert shown.stdout.split() == ["False", str(fresh)]
    assert "telemetry" not in shown.stderr.lower()
    assert (fresh / "history").is_dir(), "local storage in the home folder"


def test_cli_run_materializes_with_the_metadata_of_a_dagster_run(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = write_project(tmp_path / "cli")
    connectors(project, "setup", "demo", "--confirm-prerequisites", home=home)
    summary = json.loads(connectors(project, "run", "demo", home=home).stdout)
    assert summary["records"] == 13

    with instance_of(home, monkeypatch) as instance:
        cli_events = {key: instance.get_latest_materialization_event(key) for key in (NUMBERS, EVENTS)}
        check_keys = [dg.AssetCheckKey(NUMBERS, name) for name in ("hourly_volume", "parse_error_rate", "backup_age")]
        evaluated = instance.event_log_storage.get_latest_asset_check_execution_by_key(check_keys)
    assert set(evaluated) == set(check_keys), "the CLI's run evaluates the asset checks as a Dagster run does"
    parse_rate = evaluated[dg.AssetCheckKey(NUMBERS, "parse_error_rate")].event
    assert parse_rate is not None and parse_rate.dagster_event is not None
    evaluation = parse_rate.dagster_event.event_specific_data
    assert evaluation.passed and evaluation.metadata["records"].value == 10
    numbers = plain(cli_events[NUMBERS].asset_materialization.metadata)
    assert numbers["dagster/row_count"] == 10
    assert numbers["dagster/table_name"] == "main.numbers"
    assert numbers["dagster/column_schema"] == dg.TableSchema(columns=[dg.TableColumn("n", "BIGINT")])
    assert numbers["connectors/records"] == 10 and numbers["connectors/source"] == "cli"
    rows = {r.data["connector"]: r.data for r in numbers["connectors/connectors"].records}
    assert (rows["numbers.gen"]["records"], rows["numbers.later"]["records"]) == (10, 0)
    assert not [key for key in numbers if key.startswith("connectors/numbers.")], "no numeric key per connector"
    events = plain(cli_events[EVENTS].asset_materialization.metadata)
    assert events["dagster/row_count"] == 3
    assert {c.name for c in events["dagster/column_schema"].columns} == {"id", "kind"}  # from the sink table

    # The same project materialized once through Dagster writes the same keys.
    other = write_project(tmp_path / "dagster")
    connectors(other, "setup", "demo", "--confirm-prerequisites", home=None)
    defs = build_definitions(other)
    with dg.instance_for_test() as test_instance:
        result = dg.materialize(
            [defs.get_assets_def(NUMBERS)],
            resources=defs.resources,
            instance=test_instance,
            selection=[NUMBERS, EVENTS],
        )
        assert result.success
        dagster_metadata = {m.asset_key: m.metadata for m in result.asset_materializations_for_node("demo__tables")}
    for key, event in cli_events.items():
        assert set(event.asset_materialization.metadata) - {"connectors/source"} == set(dagster_metadata[key])
        assert (
            plain(dagster_metadata[key])["dagster/row_count"]
            == plain(event.asset_materialization.metadata)["dagster/row_count"]
        )


def test_lifecycle_procedures_are_observations_and_reads_record_nothing(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = write_project(tmp_path)
    connectors(project, "setup", "demo", "--confirm-prerequisites", home=home)
    connectors(project, "pipeline", "demo", "pause", home=home)
    connectors(project, "pipeline", "demo", "status", home=home)
    connectors(project, "connector", "demo", "numbers", "later", "start", home=home)
    connectors(project, "run", "demo", "--resume", home=home)  # resumes, then ingests

    with instance_of(home, monkeypatch) as instance:
        seen = {
            key: [plain(r.asset_observation.metadata) for r in instance.fetch_observations(key, limit=20).records]
            for key in (NUMBERS, EVENTS)
        }
        assert (
            plain(instance.get_latest_materialization_event(NUMBERS).asset_materialization.metadata)[
                "connectors/records"
            ]
            == 15
        )
    seen = {key: [m for m in observed if "connectors/procedure" in m] for key, observed in seen.items()}  # not hours
    procedures = {key: sorted(m["connectors/procedure"] for m in observed) for key, observed in seen.items()}
    assert procedures[EVENTS] == ["pipeline pause", "pipeline resume", "setup"]
    assert procedures[NUMBERS] == ["connector start", "pipeline pause", "pipeline resume", "setup"]
    start = next(m for m in seen[NUMBERS] if m["connectors/procedure"] == "connector start")
    assert start["connectors/command"] == "connectors connector demo numbers later start"
    assert start["connectors/response_code"] == "OK" and start["connectors/source"] == "cli"
    resume = next(m for m in seen[NUMBERS] if m["connectors/procedure"] == "pipeline resume")
    assert resume["connectors/command"] == "connectors run demo --resume"


def test_no_dagster_home_records_nothing_and_a_failure_to_record_is_a_warning(tmp_path: Path) -> None:
    project = write_project(tmp_path)
    missing = tmp_path / "no-such-home"
    setup = connectors(project, "setup", "demo", "--confirm-prerequisites", home=missing)
    assert "warning: not recorded in the Dagster instance" in setup.stderr
    assert json.loads(setup.stdout)["response_code"] == "OK"
    run = connectors(project, "run", "demo", home=missing)
    assert "warning: not recorded in the Dagster instance" in run.stderr
    assert json.loads(run.stdout)["records"] == 13
    assert not missing.exists()

    program = textwrap.dedent(
        """
        import sys
        from connector_cli.main import cli
        code = cli.main(["--project-file", sys.argv[1], "pipeline", "demo", "pause"], standalone_mode=False) or 0
        print(code, sorted(m for m in sys.modules if m.split(".")[0] == "dagster"))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    done = subprocess.run(
        [sys.executable, "-c", program, str(project)], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "0 []"


def test_completed_hours_are_observed_once_whichever_path_records_them(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``connectors run`` observes each completed hour of every table once; a Dagster run recording into the same
    instance does not observe them again, and observes the next completed hour."""
    current = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)  # both clocks fixed
    monkeypatch.setattr(connector_core.state, "current_hour", current.isoformat)
    monkeypatch.setattr(asset_metadata, "now", lambda: current + dt.timedelta(minutes=30))
    project = write_project(tmp_path)
    connectors(project, "setup", "demo", "--confirm-prerequisites", home=home)
    pipeline = Pipeline(load_project(project), "demo")
    try:
        with pipeline.connector("numbers", "gen").state.transaction() as conn:  # type: ignore[union-attr]
            past = (current - dt.timedelta(hours=2)).isoformat()
            conn.execute("INSERT INTO hourly_stats VALUES (?, 8, 80, 2, 1)", (past,))
    finally:
        pipeline.close()

    def hours(instance: dg.DagsterInstance, key: dg.AssetKey) -> list[tuple[str, int, int, str | None]]:
        """(hour, records, parse errors, source) of the asset's hourly observations, oldest first."""
        records = instance.fetch_observations(key, limit=100, ascending=True).records
        observed = [plain(r.asset_observation.metadata) for r in records]
        return [
            (
                m["connectors/hour"],
                m["connectors/hourly_records"],
                m["connectors/hourly_parse_errors"],
                m.get(SOURCE_KEY),
            )
            for m in observed
            if "connectors/hour" in m
        ]

    connectors(project, "run", "demo", home=home)
    connectors(project, "run", "demo", home=home)  # nothing new: no hour observed twice
    with instance_of(home, monkeypatch) as instance:
        assert hours(instance, NUMBERS) == [(past, 8, 2, "cli")]
        assert hours(instance, EVENTS) == [], "no completed hour of events yet"

        # An hour later the run's hour has completed; a Dagster run records it, without the CLI's hour again.
        monkeypatch.setattr(asset_metadata, "now", lambda: current + dt.timedelta(minutes=90))
        defs = build_definitions(project)
        result = dg.materialize(
            [defs.get_assets_def(NUMBERS)], resources=defs.resources, instance=instance, selection=[NUMBERS, EVENTS]
        )
        assert result.success
        assert hours(instance, NUMBERS) == [(past, 8, 2, "cli"), (current.isoformat(), 10, 0, None)]
        assert hours(instance, EVENTS) == [(current.isoformat(), 3, 0, None)]
        connectors(project, "run", "demo", home=home)
        assert len(hours(instance, NUMBERS)) == 2 and len(hours(instance, EVENTS)) == 1


# ----------------------------------------------------------------------------------------- progress output
def run_command(project: Path) -> list[str]:
    return [sys.executable, "-m", "connector_cli.main", "--project-file", str(project), "run", "demo"]


def test_run_progress_in_a_pipe_is_plain_lines(tmp_path: Path) -> None:
    project = write_project(tmp_path)
    connectors(project, "setup", "demo", "--confirm-prerequisites", home=None)
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    done = subprocess.run(run_command(project), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    assert "numbers.gen: +10 records, 0 parse errors, 0 transport errors, end of input" in done.stderr
    assert json.loads(done.stdout)["records"] == 13


def test_run_progress_on_a_terminal_is_one_line_rewritten(tmp_path: Path) -> None:
    project = write_project(tmp_path)
    connectors(project, "setup", "demo", "--confirm-prerequisites", home=None)
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    master, slave = pty.openpty()
    process = subprocess.Popen(run_command(project), env=env, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    shown = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0, shown
    text = shown.decode()
    assert "\r\x1b[K" in text
    assert "records/s" in text and "numbers 10" in text and "events 3" in text
    assert "+10 records" not in text, "no line per batch on a terminal"
    assert "run finished: 13 records" in text
    assert json.loads(stdout)["records"] == 13
