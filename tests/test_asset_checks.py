"""The asset checks of the table assets (``hourly_volume``, ``parse_error_rate``, ``backup_age``) with a real Dagster
instance, and the window rule as a plain function."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster_helpers import lifecycle

from connector_assets import build_definitions
from connector_core import checks
from connector_core.backups import BackupStoreError
from connector_core.pipeline import Pipeline
from connector_core.project import load_project

PROJECT = """
pipelines:
  demo:
    org_slug: acme
    sink: {kind: duckdb, path: demo.duckdb}
    tables:
      numbers:
        columns: {n: BIGINT}
        connectors:
          - name: gen
            transport: {name: datagen, config: {plan: [{limit: 10}]}}
      lines:
        columns: {id: BIGINT, name: VARCHAR}
        connectors:
          - name: file
            transport: {name: file_input, config: {path: in.dat}}
            format: {name: json}
      idle:
        columns: {n: BIGINT}
        connectors:
          - name: resting
            paused: true
            transport: {name: datagen, config: {plan: [{limit: 5}]}}
"""
NUMBERS = dg.AssetKey(["demo", "numbers"])
LINES = dg.AssetKey(["demo", "lines"])
IDLE = dg.AssetKey(["demo", "idle"])


@pytest.fixture
def project(project_file: Path) -> Path:
    (project_file.parent / "in.dat").write_bytes(b'{"id": 1}\n{"id": 2, "name": "b\xffc"}\n{"id": 3}\n')
    lifecycle(project_file, "setup", confirm_prerequisites=True)
    return project_file


def materialize(project_file: Path, instance: dg.DagsterInstance, *keys: dg.AssetKey) -> dict[tuple[str, str], Any]:
    """Materialize ``keys``; the check evaluations by (table, check name)."""
    defs = build_definitions(project_file)
    result = dg.materialize(
        [defs.get_assets_def(NUMBERS)], resources=defs.resources, instance=instance, selection=list(keys)
    )
    assert result.success, "a failed WARN check leaves the run successful"
    evaluations = result.get_asset_check_evaluations()
    return {(e.asset_key.path[-1], e.check_name): e for e in evaluations}


def values(evaluation: Any) -> dict[str, Any]:
    return {key: value.value for key, value in evaluation.metadata.items()}


def write_history(project_file: Path, table: str, connector: str, records: list[int]) -> None:
    """Hourly statistics rows for the completed hours before the current one; the last value is the last hour."""
    pipeline = Pipeline(load_project(project_file), "demo")
    try:
        state = pipeline.connector(table, connector).state
        last = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)
        with state.transaction() as conn:  # type: ignore[union-attr]
            for age, count in enumerate(reversed(records)):
                hour = (last - dt.timedelta(hours=age)).isoformat()
                conn.execute("INSERT OR REPLACE INTO hourly_stats (hour, records) VALUES (?, ?)", (hour, count))
    finally:
        pipeline.close()


NORMAL = [100, 110, 95, 105, 98, 102, 97, 103, 100, 99, 104, 96, 101, 100, 108, 92, 100, 101, 99, 100, 102, 98, 100, 97]


def test_every_selected_table_gets_its_three_checks_and_a_normal_history_passes(
    project: Path, instance: dg.DagsterInstance
) -> None:
    write_history(project, "numbers", "gen", [*NORMAL, 104])
    found = materialize(project, instance, NUMBERS)
    assert set(found) == {("numbers", n) for n in ("hourly_volume", "parse_error_rate", "backup_age")}
    assert all(e.severity == dg.AssetCheckSeverity.WARN and e.passed for e in found.values())
    volume = values(found["numbers", "hourly_volume"])
    assert volume["window_hours"] == 24 and volume["value"] == 104
    assert volume["expected_min"] < 104 < volume["expected_max"]
    parse = values(found["numbers", "parse_error_rate"])
    assert (parse["records"], parse["parse_errors"], parse["rate"]) == (10, 0, 0)
    assert values(found["numbers", "backup_age"])["age_hours"]["numbers.gen"] < 1


def test_an_anomalous_last_hour_is_flagged_with_the_expected_range(project: Path, instance: dg.DagsterInstance) -> None:
    write_history(project, "numbers", "gen", [*NORMAL, 5000])
    evaluation = materialize(project, instance, NUMBERS)["numbers", "hourly_volume"]
    assert not evaluation.passed
    meta = values(evaluation)
    assert meta["value"] == 5000 and meta["window_hours"] == 24 and meta["median"] == 100
    assert 0 < meta["expected_min"] < 100 < meta["expected_max"] < 5000


def test_too_little_history_passes_with_a_note(project: Path, instance: dg.DagsterInstance) -> None:
    write_history(project, "numbers", "gen", [100, 100, 5000])
    evaluation = materialize(project, instance, NUMBERS)["numbers", "hourly_volume"]
    assert evaluation.passed and "not enough history" in values(evaluation)["note"]


def test_a_batch_with_many_parse_errors_warns(project: Path, instance: dg.DagsterInstance) -> None:
    evaluation = materialize(project, instance, LINES)["lines", "parse_error_rate"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    meta = values(evaluation)
    assert (meta["records"], meta["parse_errors"], meta["threshold"]) == (2, 1, 0.01)
    assert meta["rate"] == pytest.approx(1 / 3, abs=1e-5)


def test_a_skipped_table_gets_its_checks_too(project: Path, instance: dg.DagsterInstance) -> None:
    found = materialize(project, instance, IDLE)
    assert {name for table, name in found if table == "idle"} == {"hourly_volume", "parse_error_rate", "backup_age"}
    assert found["idle", "parse_error_rate"].passed


def test_checks_selected_without_their_table_run_alone_on_the_last_hour(
    project: Path, instance: dg.DagsterInstance
) -> None:
    write_history(project, "numbers", "gen", [*NORMAL, 100])
    defs = build_definitions(project)
    selection = dg.AssetSelection.checks(
        dg.AssetCheckKey(NUMBERS, "parse_error_rate"), dg.AssetCheckKey(NUMBERS, "hourly_volume")
    )
    result = dg.materialize(
        [defs.get_assets_def(NUMBERS)], resources=defs.resources, instance=instance, selection=selection
    )
    assert result.success and not result.get_asset_materialization_events()
    found = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(found) == {"parse_error_rate", "hourly_volume"} and all(e.passed for e in found.values())
    assert values(found["parse_error_rate"])["scope"] == "last completed hour"
    assert values(found["parse_error_rate"])["records"] == 100


def test_backup_age_warns_when_the_backup_is_made_old(
    project: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert materialize(project, instance, NUMBERS)["numbers", "backup_age"].passed
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=25)
    monkeypatch.setattr(checks, "now", lambda: later)
    evaluation = materialize(project, instance, NUMBERS)["numbers", "backup_age"]
    meta = values(evaluation)
    assert not evaluation.passed and meta["max_age_hours"] == 24
    assert 24.9 < meta["age_hours"]["numbers.gen"] < 25.1 and "numbers.gen" in meta["problems"][0]


def test_an_unreachable_store_fails_the_check_not_the_run(
    project: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Unreachable:
        def list(self, prefix: str) -> dict[str, Any]:
            raise BackupStoreError("the store is down")

    monkeypatch.setattr("connector_assets.checks.open_store", lambda pipeline, clients: Unreachable())
    evaluation = materialize(project, instance, NUMBERS)["numbers", "backup_age"]
    assert not evaluation.passed and "the store is down" in values(evaluation)["error"]


# ------------------------------------------------------------------------------------------------ the window rule
def test_window_rule_passes_within_median_and_mad() -> None:
    outcome = checks.window_rule([10, 12, 11, 9, 10, 11, 10, 12], 13)
    assert outcome.passed and outcome.metadata["median"] == 10.5 and outcome.metadata["window_hours"] == 8


def test_window_rule_flags_an_hour_far_outside_in_both_directions() -> None:
    window = [100.0] * 12 + [90.0, 110.0] * 6
    assert not checks.window_rule(window, 1000).passed
    low = checks.window_rule(window, 0)
    assert not low.passed and low.metadata["expected_min"] > 0


def test_window_rule_on_a_flat_history_tolerates_small_changes() -> None:
    assert checks.window_rule([100] * 24, 140).passed, "the spread is at least a tenth of the median"
    assert not checks.window_rule([100] * 24, 300).passed
    assert checks.window_rule([0] * 24, 3).passed, "the spread is at least one record"


def test_window_rule_passes_with_a_note_on_a_short_history() -> None:
    outcome = checks.window_rule([1, 2], 1000)
    assert outcome.passed and "not enough history" in outcome.metadata["note"]


def test_parse_error_rate() -> None:
    assert checks.parse_error_rate(990, 10).passed
    high = checks.parse_error_rate(98, 2)
    assert not high.passed and high.metadata["rate"] == 0.02
    assert checks.parse_error_rate(0, 0).metadata["note"] == "nothing read"
