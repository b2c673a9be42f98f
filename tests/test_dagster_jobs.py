"""Lifecycle jobs run in process against a real Dagster instance and real state databases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
from dagster_helpers import opened_pipeline

from connector_assets import build_definitions
from connector_assets.jobs import ConnectorConfig, PrerequisitesConfig, RecoverConfig, RecoverTarget
from connector_core.project import load_project

PROJECT = """
pipelines:
  demo:
    org_slug: acme
    sink: {kind: duckdb, path: demo.duckdb}
    prerequisites:
      - {id: docs, title: Read the docs}
      - {id: acl, title: Grant READ on the source}
    tables:
      numbers:
        columns: {n: BIGINT}
        connectors:
          - name: gen
            transport: {name: datagen, config: {plan: [{limit: 10}]}}
          - name: waiting
            paused: true
            transport: {name: datagen, config: {plan: [{limit: 3}]}}
  pg:
    sink: {kind: duckdb, path: pg.duckdb}
    connections:
      main: {kind: postgres, dsn: {env: CONNECTORS_TEST_PG_DSN}}
    tables:
      rows:
        connectors:
          - name: seed
            transport: {name: datagen, config: {plan: [{limit: 1}]}}
"""
PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def run(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    procedure: str,
    config: dg.Config | dict[str, Any] | None = None,
    pipeline: str = "demo",
) -> dg.ExecuteInProcessResult:
    name = f"{pipeline}__{procedure}"
    run_config = None
    if isinstance(config, dg.Config):
        run_config = dg.RunConfig(ops={f"{name}_op": config})
    elif config is not None:
        run_config = {"ops": {f"{name}_op": {"config": config}}}
    return defs.resolve_job_def(name).execute_in_process(run_config=run_config, instance=instance, raise_on_error=False)


def response(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    assert result.success, result.all_events
    (node,) = result.job_def.graph.nodes
    return result.output_for_node(node.name)


def failure(result: dg.ExecuteInProcessResult) -> tuple[str, dict[str, Any]]:
    """The failure description and the response JSON attached to it."""
    assert result.success is False
    (node,) = result.job_def.graph.nodes
    data = result.failure_data_for_node(node.name)
    assert data is not None and data.user_failure_data is not None
    return data.user_failure_data.description, data.user_failure_data.metadata["response"].value


def state(project_file: Path, pipeline: str = "demo") -> dict[str, Any]:
    with opened_pipeline(project_file, pipeline) as opened:
        return {
            "status": opened.state.status,
            "configuration": opened.state.configuration_status,
            "scheduling": opened.state.scheduling_enabled,
            "running": {h.endpoint: h.state.running for h in opened.connectors()},
        }


def force_status(project_file: Path, status: str, pipeline: str = "demo") -> None:
    """Put a pipeline in a status no procedure leaves it in for long (a stuck PAUSING, ERROR...)."""
    with opened_pipeline(project_file, pipeline) as opened, opened.state.transaction() as conn:
        opened.state.put(conn, "status", status)


def test_wizard_jobs_walk_the_pipeline_to_finalized_and_started(
    defs: dg.Definitions, instance: dg.DagsterInstance, project_file: Path
) -> None:
    marked = response(run(defs, instance, "wizard_prerequisites", PrerequisitesConfig(done=["docs"])))
    assert {p["id"]: p["done"] for p in marked["prerequisites"]} == {"docs": True, "acl": False}
    assert state(project_file)["configuration"] == "INSTALLED"

    completed = run(defs, instance, "wizard_prerequisites", {"done": ["acl"], "complete": True})
    assert response(completed)["configurationStatus"] == "PREREQUISITES_DONE"
    (output,) = [e for e in completed.all_node_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
    metadata = output.event_specific_data.metadata
    assert metadata["configurationStatus"].value == "PREREQUISITES_DONE"
    assert metadata["response"].value["response_code"] == "OK"

    assert response(run(defs, instance, "wizard_configure", {"values": {"schema": "main"}}))["response_code"] == "OK"
    assert state(project_file)["configuration"] == "CONFIGURED"
    assert response(run(defs, instance, "wizard_connect"))["configurationStatus"] == "CONNECTED"
    finalized = response(run(defs, instance, "wizard_finalize"))
    assert (finalized["status"], finalized["configurationStatus"]) == ("STARTED", "FINALIZED")
    assert state(project_file)["scheduling"] is True
    with duckdb.connect(str(project_file.parent / "demo.duckdb"), read_only=True) as conn:
        assert conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'numbers'"
        ).fetchall() == [("n",)]


def test_a_non_ok_response_fails_the_op_with_the_response_as_metadata(
    defs: dg.Definitions, instance: dg.DagsterInstance, project_file: Path
) -> None:
    result = run(defs, instance, "wizard_prerequisites", PrerequisitesConfig(complete=True))
    description, answer = failure(result)
    assert answer["response_code"] == "PREREQUISITES_INCOMPLETE"
    assert "docs" in answer["message"] and "acl" in answer["message"]
    assert description.startswith("PREREQUISITES_INCOMPLETE")
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert state(project_file)["configuration"] == "INSTALLED"

    description, answer = failure(run(defs, instance, "pause"))
    assert answer["response_code"] == "INVALID_CONNECTOR_STATUS"
    assert "Current status: CONFIGURING" in description


def test_setup_then_pause_and_resume(defs: dg.Definitions, instance: dg.DagsterInstance, project_file: Path) -> None:
    _, answer = failure(run(defs, instance, "setup"))
    assert answer["response_code"] == "PREREQUISITES_INCOMPLETE"
    assert response(run(defs, instance, "setup", {"confirm_prerequisites": True}))["response_code"] == "OK"
    assert state(project_file)["status"] == "STARTED"

    assert response(run(defs, instance, "pause"))["status"] == "PAUSED"
    assert (state(project_file)["status"], state(project_file)["scheduling"]) == ("PAUSED", False)
    _, answer = failure(run(defs, instance, "pause"))
    assert answer["response_code"] == "INVALID_CONNECTOR_STATUS"

    assert response(run(defs, instance, "resume"))["status"] == "STARTED"
    assert (state(project_file)["status"], state(project_file)["scheduling"]) == ("STARTED", True)


def test_recover_leaves_a_stuck_status_for_the_one_named(
    defs: dg.Definitions, instance: dg.DagsterInstance, project_file: Path
) -> None:
    _, answer = failure(run(defs, instance, "recover", RecoverConfig(to=RecoverTarget.STARTED)))
    assert answer["response_code"] == "INVALID_CONNECTOR_STATUS"

    force_status(project_file, "PAUSING")
    assert response(run(defs, instance, "recover", {"to": "PAUSED"}))["status"] == "PAUSED"
    assert state(project_file)["status"] == "PAUSED"

    force_status(project_file, "ERROR")
    assert response(run(defs, instance, "recover", RecoverConfig(to=RecoverTarget.STARTED)))["status"] == "STARTED"
    assert state(project_file)["scheduling"] is True


def test_start_and_pause_one_connector(defs: dg.Definitions, instance: dg.DagsterInstance, project_file: Path) -> None:
    assert state(project_file)["running"] == {"numbers.gen": True, "numbers.waiting": False}
    started = response(run(defs, instance, "start_connector", ConnectorConfig(table="numbers", connector="waiting")))
    assert started["state"] == "Running"
    assert state(project_file)["running"]["numbers.waiting"] is True
    paused = response(run(defs, instance, "pause_connector", {"table": "numbers", "connector": "gen"}))
    assert paused["state"] == "Paused"
    assert state(project_file)["running"] == {"numbers.gen": False, "numbers.waiting": True}

    description, answer = failure(run(defs, instance, "start_connector", {"table": "numbers", "connector": "nope"}))
    assert answer["response_code"] == "CONNECTOR_STATUS_NOT_FOUND"
    assert "gen" in description and "waiting" in description


def test_updates_need_a_paused_pipeline_and_check_their_values(
    instance: dg.DagsterInstance, project_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTORS_TEST_PG_DSN", PG_DSN)
    monkeypatch.setenv("CONNECTORS_TEST_PG_DSN_NEW", PG_DSN)
    defs = build_definitions(project_file)
    update = {"connection": "main", "values": {"dsn": "env:CONNECTORS_TEST_PG_DSN_NEW"}}
    _, answer = failure(run(defs, instance, "update_connection", update, pipeline="pg"))
    assert answer["response_code"] == "INVALID_CONNECTOR_STATUS"

    force_status(project_file, "PAUSED", pipeline="pg")
    literal = {"connection": "main", "values": {"dsn": PG_DSN}}
    _, answer = failure(run(defs, instance, "update_connection", literal, pipeline="pg"))
    assert answer["response_code"] == "CONNECTOR_CONFIGURATION_PARSING_ERROR"
    assert response(run(defs, instance, "update_connection", update, pipeline="pg"))["response_code"] == "OK"
    with opened_pipeline(project_file, "pg") as opened:
        assert opened.connection_settings("main")["dsn"] == {"env": "CONNECTORS_TEST_PG_DSN_NEW"}

    _, answer = failure(run(defs, instance, "update_warehouse", {"warehouse": "LOAD_WH"}, pipeline="pg"))
    assert answer["response_code"] == "CONNECTOR_CONFIGURATION_PARSING_ERROR"
    assert "duckdb" in answer["message"]


def test_in_code_hooks_reach_the_procedures(instance: dg.DagsterInstance, project_file: Path) -> None:
    def refuse_pause(context: Any) -> dict[str, str]:
        return {"response_code": "ROLLBACK_CODE", "message": f"{context.procedure} refused by a test hook"}

    defs = build_definitions(project_file, hooks={"demo": {"pause_callback": refuse_pause}})
    assert response(run(defs, instance, "setup", {"confirm_prerequisites": True}))["response_code"] == "OK"
    description, answer = failure(run(defs, instance, "pause"))
    assert answer == {"response_code": "ROLLBACK_CODE", "message": "pause refused by a test hook"}
    assert description == "ROLLBACK_CODE: pause refused by a test hook"
    assert state(project_file)["status"] == "STARTED", "the status is put back"


def test_a_state_database_that_cannot_be_opened_fails_the_job_with_the_response(
    defs: dg.Definitions, instance: dg.DagsterInstance, project_file: Path
) -> None:
    database = load_project(project_file).resolve_state_dir() / "demo" / "pipeline.sqlite"
    database.parent.mkdir(parents=True, exist_ok=True)
    database.write_bytes(b"this is not an SQLite database\n" * 64)

    result = run(defs, instance, "pause")
    description, answer = failure(result)
    assert answer["response_code"] == "INTERNAL_ERROR"
    assert answer["message"].startswith("cannot open pipeline demo"), answer["message"]
    assert description == f"INTERNAL_ERROR: {answer['message']}"
    (node,) = result.job_def.graph.nodes
    assert result.failure_data_for_node(node.name).error.cls_name == "Failure", "no unexpected error escapes"
