"""Lifecycle jobs run in process against a real Dagster instance and real state databases; their run config
(defaults, enum choices from the project file) and the descriptions of the resources they use."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
from dagster_helpers import opened_pipeline

from connector_assets import build_definitions
from connector_assets.jobs import (
    PROCEDURES,
    ConnectorConfig,
    PrerequisitesConfig,
    RecoverConfig,
    RecoverTarget,
    choices,
)
from connector_core.project import load_project
from resources import DuckDBSinkResource, KafkaResource, PostgresResource

ROOT = Path(__file__).resolve().parent.parent

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
    started = response(run(defs, instance, "start_connector", ConnectorConfig(connector="numbers.waiting")))
    assert started["state"] == "Running"
    assert state(project_file)["running"]["numbers.waiting"] is True
    paused = response(run(defs, instance, "pause_connector", {"connector": "numbers.gen"}))
    assert paused["state"] == "Paused"
    assert state(project_file)["running"] == {"numbers.gen": False, "numbers.waiting": True}

    assert response(run(defs, instance, "start_connector", pipeline="pg"))["state"] == "Running", "its only one"


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


# ------------------------------------------------------------------------------------------------- run config
def config_fields(job: dg.JobDefinition) -> dict[str, dg.Field]:
    """The fields of the config of a lifecycle job's one op (empty when it takes none)."""
    (node,) = job.graph.nodes
    op = job.run_config_schema.config_type.fields["ops"].config_type.fields[node.name]
    config = op.config_type.fields.get("config")  # an op without a Config class takes Any
    return dict(config.config_type.fields) if config is not None and isinstance(config.config_type, dg.Shape) else {}


def lifecycle_jobs(defs: dg.Definitions, pipeline: str) -> dict[str, dg.JobDefinition]:
    """The pipeline's lifecycle jobs by procedure."""
    return {p.name: defs.resolve_job_def(f"{pipeline}__{p.name}") for p in PROCEDURES}


def enum_values(field: dg.Field) -> list[str]:
    """The choices of an enum field (or of the items of a list of enums); a field with a default is Noneable."""
    config_type = field.config_type
    while isinstance(config_type, (dg.Array, dg.Noneable)):
        config_type = config_type.inner_type
    assert isinstance(config_type, dg.Enum), config_type
    return config_type.config_values


#: What the lifecycle jobs of the example project (``connectors.yaml``) still ask for, and why: every other job
#: launches with an empty config.
EXAMPLE_INPUTS = {
    "update_connection": {"connection", "values"},  # the new settings; the example has no connection at all
    "update_warehouse": {"warehouse"},  # a warehouse's name (the example's DuckDB sink has none)
    "start_connector": {"connector"},  # which of its three connectors
    "pause_connector": {"connector"},
    "restore": {"connector", "from_pipeline", "from_connector"},  # which connector, and the ids of the old one
}


#: The answers of the example's other jobs launched with no run config, in this order from a fresh state.
EXAMPLE_ANSWERS = {
    "wizard_prerequisites": "OK",  # nothing marked, nothing completed: it lists the checklist
    "wizard_configure": "OK",  # the project file's sink settings
    "setup": "PREREQUISITES_INCOMPLETE",  # confirm_prerequisites is off: confirming them is the user's call
    "wizard_reset": "OK",
    "wizard_connect": "INVALID_CONNECTOR_CONFIGURATION_STATUS",  # reset: configure first
    "wizard_finalize": "INVALID_CONNECTOR_CONFIGURATION_STATUS",
    "pause": "INVALID_CONNECTOR_STATUS",  # still CONFIGURING
    "resume": "INVALID_CONNECTOR_STATUS",
    "recover": "INVALID_CONNECTOR_STATUS",  # to PAUSED by default, but nothing is stuck
    "backup": "OK",
}


def test_the_example_jobs_that_need_no_input_launch_with_an_empty_config(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    project_file = tmp_path / "connectors.yaml"
    shutil.copy(ROOT / "connectors.yaml", project_file)  # its state, sink and backups go to tmp_path
    jobs = lifecycle_jobs(build_definitions(project_file), "example")
    required = {
        procedure: {name for name, field in config_fields(job).items() if field.is_required}
        for procedure, job in jobs.items()
    }
    assert {p: fields for p, fields in required.items() if fields} == EXAMPLE_INPUTS
    for procedure, job in jobs.items():
        ops = job.run_config_schema.config_type.fields["ops"]
        assert ops.is_required is (procedure in EXAMPLE_INPUTS), procedure

    for procedure in EXAMPLE_INPUTS:  # what the Launchpad says of an empty config
        with pytest.raises(dg.DagsterInvalidConfigError, match="Missing required config entry"):
            dg.validate_run_config(jobs[procedure], {})

    answers = {}  # in this order, each job launched with no run config at all
    for procedure in EXAMPLE_ANSWERS:
        result = jobs[procedure].execute_in_process(instance=instance, raise_on_error=False)
        answers[procedure] = (
            response(result)["response_code"] if result.success else failure(result)[1]["response_code"]
        )
    assert answers == EXAMPLE_ANSWERS


def test_choices_are_the_project_files_tables_connectors_connections_and_prerequisites(
    defs: dg.Definitions, tmp_path: Path
) -> None:
    demo, pg = lifecycle_jobs(defs, "demo"), lifecycle_jobs(defs, "pg")
    for procedure in ("start_connector", "pause_connector", "restore"):
        field = config_fields(demo[procedure])["connector"]
        assert (enum_values(field), field.is_required) == (["numbers.gen", "numbers.waiting"], True), procedure
        only = config_fields(pg[procedure])["connector"]
        assert (enum_values(only), only.default_value) == (["rows.seed"], "rows.seed"), "the only one by default"
    assert config_fields(demo["start_connector"])["connector"].config_type.given_name.startswith("demo_Connector_")
    connection = config_fields(pg["update_connection"])["connection"]
    assert (enum_values(connection), connection.default_value) == (["main"], "main")
    assert "main (postgres) takes dsn" in config_fields(pg["update_connection"])["values"].description
    done = config_fields(demo["wizard_prerequisites"])["done"]
    assert (enum_values(done), done.default_value) == (["docs", "acl"], [])
    to = config_fields(demo["recover"])["to"]
    assert (enum_values(to), to.default_value) == (["STARTED", "PAUSED"], "PAUSED")

    project_file = tmp_path / "example" / "connectors.yaml"
    project_file.parent.mkdir()
    shutil.copy(ROOT / "connectors.yaml", project_file)
    example = load_project(project_file).pipeline("example")
    endpoints = [f"{table}.{c.name}" for table, c in example.iter_connectors()]
    job = lifecycle_jobs(build_definitions(project_file), "example")["start_connector"]
    assert enum_values(config_fields(job)["connector"]) == endpoints == ["price.backfill", "price.live", "vendor.seed"]
    for procedure, job in lifecycle_jobs(defs, "demo").items():
        for name, field in config_fields(job).items():
            assert field.description, f"{procedure}.{name} has no description"
    no_connection = config_fields(lifecycle_jobs(defs, "demo")["update_connection"])["connection"]
    assert no_connection.description == "This pipeline has no connections: there is nothing to update."


def test_a_pipeline_rebuilt_after_an_edit_offers_its_new_choices(defs: dg.Definitions, tmp_path: Path) -> None:
    """Dagster memoizes config shapes process-wide: the enums' names keep a rebuilt pipeline's choices its own."""
    assert enum_values(config_fields(defs.resolve_job_def("demo__start_connector"))["connector"]) == [
        "numbers.gen",
        "numbers.waiting",
    ]
    edited = tmp_path / "edited" / "connectors.yaml"
    edited.parent.mkdir()
    edited.write_text(PROJECT.replace("name: waiting", "name: later"))
    job = build_definitions(edited).resolve_job_def("demo__start_connector")
    assert enum_values(config_fields(job)["connector"]) == ["numbers.gen", "numbers.later"]


def test_names_that_cannot_be_enum_members_stay_free_text() -> None:
    assert choices("Demo_Connection", ["mro"]) is None and choices("Demo_Connection", ["_x_"]) is None
    assert choices("Demo_Connection", []) is None
    assert [m.value for m in choices("Demo_Connection", ["main", "name", "unnamed-0"]) or []] == [
        "main",
        "name",
        "unnamed-0",
    ]


def test_a_value_not_among_the_choices_is_refused_before_the_run_starts(
    defs: dg.Definitions, instance: dg.DagsterInstance, project_file: Path
) -> None:
    job = defs.resolve_job_def("demo__start_connector")
    runs = len(instance.get_runs(dg.RunsFilter(job_name=job.name)))
    for wrong in ("numbers.nope", "gen", "rows.seed"):  # unknown, without its table, another pipeline's
        with pytest.raises(
            dg.DagsterInvalidConfigError, match=rf"connector not in enum type demo_Connector_\w+ got {wrong}$"
        ):
            run(defs, instance, "start_connector", {"connector": wrong})
    with pytest.raises(dg.DagsterInvalidConfigError, match="Missing required config entry"):
        run(defs, instance, "start_connector")  # two connectors: no default
    assert len(instance.get_runs(dg.RunsFilter(job_name=job.name))) == runs, "no run was created"
    assert state(project_file)["running"] == {"numbers.gen": True, "numbers.waiting": False}


KINDS_PROJECT = """
pipelines:
  kinds:
    sink: {kind: snowflake, connection: wh, database: DB, schema: RAW}
    connections:
      bus: {kind: kafka, config: {bootstrap.servers: "127.0.0.1:9"}}
      lake: {kind: s3, region_name: us-east-1}
      wh: {kind: snowflake, account: acme, user: loader, password: {env: KINDS_SNOWFLAKE_PASSWORD}}
    tables:
      rows:
        connectors:
          - {name: seed, transport: {name: datagen, config: {plan: [{limit: 1}]}}}
"""


def test_resources_are_described_for_users(defs: dg.Definitions, tmp_path: Path) -> None:
    """What the UI shows as each resource's description (a job's resources, the resources page)."""
    kinds_file = tmp_path / "kinds" / "connectors.yaml"
    kinds_file.parent.mkdir()
    kinds_file.write_text(KINDS_PROJECT)
    shown = {}
    for definitions in (defs, build_definitions(kinds_file)):
        resources = definitions.get_repository_def().get_top_level_resources()
        shown.update({key: resource.description for key, resource in resources.items()})
    lifecycle = "streams its tables into its sink (the ingest job) and reaches its sink"
    assert shown == {
        "demo__sink": "The pipeline's sink: the DuckDB database file its tables are loaded into.",
        "demo__connectors": f"Runs pipeline demo: {lifecycle} for the lifecycle jobs.",
        "pg__sink": DuckDBSinkResource.__doc__,
        "pg__main": "A PostgreSQL connection of the project file: the database its postgres connectors read.",
        "pg__connectors": f"Runs pipeline pg: {lifecycle} and connections (main) for the lifecycle jobs.",
        "kinds__bus": KafkaResource.__doc__,
        "kinds__lake": "An S3 connection of the project file: the buckets its s3_input connectors read or its "
        "backups go to.",
        "kinds__wh": "A Snowflake connection of the project file: the account its Snowflake sink loads the tables "
        "into.",
        "kinds__connectors": f"Runs pipeline kinds: {lifecycle} and connections (bus, lake, wh) for the lifecycle "
        "jobs.",
    }
    assert PostgresResource.__doc__ == shown["pg__main"]
    setup = defs.resolve_job_def("demo__setup")
    assert {key: setup.resource_defs[key].description for key in ("demo__connectors", "demo__sink")} == {
        key: shown[key] for key in ("demo__connectors", "demo__sink")
    }
