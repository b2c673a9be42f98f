"""Reading writes nothing: loading the Dagster definitions creates no file, and a sensor tick that releases no
connector changes no state database. The first procedure that writes creates the databases."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
from dagster_helpers import lifecycle

from connector_assets import build_definitions

PROJECT = """
pipelines:
  demo:
    sink: {kind: duckdb, path: demo.duckdb}
    prerequisites: [{id: acl, title: Grant READ}]
    tables:
      numbers:
        columns: {n: BIGINT}
        connectors:
          - name: gen
            transport: {name: datagen, config: {plan: [{limit: 5}]}}
          - name: later
            start_after: [never.finishes]
            transport: {name: datagen, config: {plan: [{limit: 5}]}}
      clock:
        connectors:
          - name: never
            labels: [never.finishes]
            transport: {name: datagen, config: {plan: [{rate: 1}]}}
"""


def files(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every database file under ``folder`` (SQLite main files and DuckDB)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix in (".sqlite", ".db", ".duckdb")
    }


def test_loading_definitions_creates_no_file(project_file: Path) -> None:
    before = sorted(p.name for p in project_file.parent.rglob("*"))
    defs = build_definitions(project_file)
    dg.Definitions.validate_loadable(defs)
    assert sorted(p.name for p in project_file.parent.rglob("*")) == before == ["connectors.yaml"]


def test_a_tick_that_releases_nothing_writes_nothing(project_file: Path, instance: dg.DagsterInstance) -> None:
    defs = build_definitions(project_file)
    sensor = defs.resolve_sensor_def("demo__orchestration")
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert not tick.run_requests and "CONFIGURING" in tick.skip_message
    assert not (project_file.parent / ".connectors").exists(), "a tick before any procedure creates nothing"

    lifecycle(project_file, "setup", confirm_prerequisites=True)
    before = files(project_file.parent)
    assert len([name for name in before if name.endswith(".db")]) == 3 and any("pipeline" in n for n in before)
    for _ in range(3):
        tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
        assert {r.tags["connectors/table"] for r in tick.run_requests} == {"numbers", "clock"}
    assert files(project_file.parent) == before, "ticks that release nothing leave every database as it was"
