"""Every lifecycle transition, allowed and refused, and every response code (DESIGN §3, §4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from fixtures_services import STATE_SCHEMA_ENV, with_state_backend

from connector_core import lifecycle as lc
from connector_core.lifecycle import HookContext, Lifecycle, Response
from connector_core.pipeline import Pipeline
from connector_core.project import parse_project
from connector_core.vocabulary import ConfigurationStatus, Status
from resources import build_clients

pytestmark = pytest.mark.usefixtures("state_backend")  # every test runs on SQLite state and on PostgreSQL state

PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def project_dict(tmp_path: Path, **pipeline_extra: Any) -> dict[str, Any]:
    """A small project: DuckDB sink, two datagen connectors (one paused, one waiting for start_after)."""
    pipeline = {
        "org_slug": "acme",
        "sink": {"kind": "duckdb", "path": str(tmp_path / "warehouse.duckdb")},
        "prerequisites": [{"id": "acl", "title": "Grant READ"}, {"id": "net", "title": "Open the firewall"}],
        "tables": {
            "price": {
                "columns": {"part": "BIGINT", "price": "INTEGER"},
                "connectors": [
                    {"name": "backfill", "transport": {"name": "datagen", "config": {"plan": [{"limit": 10}]}}},
                    {"name": "held", "paused": True, "transport": {"name": "datagen"}},
                    {"name": "live", "start_after": "price.backfill", "transport": {"name": "datagen"}},
                ],
            }
        },
    }
    pipeline.update(pipeline_extra)
    return with_state_backend({"pipelines": {"p": pipeline}})


def open_lifecycle(tmp_path: Path, hooks: dict[str, Any] | None = None, **pipeline_extra: Any) -> Lifecycle:
    project = parse_project(project_dict(tmp_path, **pipeline_extra))
    pipeline = Pipeline(project, "p", state_dir=tmp_path / "state")
    return Lifecycle(pipeline, build_clients(pipeline), hooks=hooks)


def force(life: Lifecycle, status: str | None = None, configuration: str | None = None) -> None:
    """Put the pipeline in a given state directly (to test a transition from there)."""
    with life.state.transaction() as conn:
        if status:
            life.state.put(conn, "status", status)
        if configuration:
            life.state.put(conn, "configuration_status", configuration)


def statuses(life: Lifecycle) -> tuple[str | None, str | None]:
    return life.state.status, life.state.configuration_status


@pytest.fixture
def life(tmp_path: Path) -> Lifecycle:
    return open_lifecycle(tmp_path)


@pytest.fixture
def started(life: Lifecycle) -> Lifecycle:
    """A pipeline through the whole wizard: FINALIZED and STARTED."""
    response = life.setup(confirm_prerequisites=True)
    assert response.ok, response
    return life


# --------------------------------------------------------------------------------------------- creation
def test_new_pipeline_is_configuring_and_ids_are_kept(tmp_path: Path) -> None:
    first = open_lifecycle(tmp_path)
    assert statuses(first) == ("CONFIGURING", "INSTALLED")
    assert not (tmp_path / "state").exists(), "opening and reading a pipeline creates nothing"
    assert first.status().ok and not (tmp_path / "state").exists()
    refused = first.pause()
    assert refused.response_code == "INVALID_CONNECTOR_STATUS"
    assert not open_lifecycle(tmp_path).state.exists, "a refused procedure stores nothing"
    assert first.prerequisites(done=["acl"]).ok, "the first procedure that writes creates the databases"
    again = open_lifecycle(tmp_path)
    assert again.pipeline.pipeline_id == first.pipeline.pipeline_id
    ids = [h.connector_id for h in first.pipeline.connectors()]
    assert ids == [h.connector_id for h in again.pipeline.connectors()]
    assert len(set(ids)) == 3
    states = {h.spec.name: h.state.running for h in first.pipeline.connectors()}
    assert states == {"backfill": True, "held": False, "live": False}  # paused: true and start_after start Paused
    assert first.state.exists and all(h.state.exists for h in first.pipeline.connectors())
    if first.pipeline.store.kind == "sqlite":
        assert first.state.schema_version == 1 and (tmp_path / "state" / "p" / "pipeline.sqlite").exists()
        assert all(h.state.path.exists() and h.state.schema_version == 3 for h in first.pipeline.connectors())
    else:
        assert not (tmp_path / "state").exists(), "PostgreSQL state creates no file"


# ------------------------------------------------------------------------------------------ prerequisites
def test_prerequisites_by_id_then_all(life: Lifecycle) -> None:
    response = life.prerequisites(done=["acl"])
    assert response.ok and statuses(life) == ("CONFIGURING", "INSTALLED")
    assert {p["id"]: p["done"] for p in response.data["prerequisites"]} == {"acl": True, "net": False}
    response = life.prerequisites(done=["net"])
    assert response.ok and statuses(life) == ("CONFIGURING", "PREREQUISITES_DONE")


def test_prerequisite_not_found_names_the_known_ones(life: Lifecycle) -> None:
    response = life.prerequisites(done=["acl", "nope"])
    assert response.response_code == "PREREQUISITE_NOT_FOUND"
    assert "nope" in response.message and "acl, net" in response.message
    assert not any(p["done"] for p in life.state.prerequisites())  # nothing stored, not even "acl"


def test_completing_with_open_prerequisites_is_refused_and_stores_nothing(life: Lifecycle) -> None:
    response = life.prerequisites(done=["acl"], complete=True)
    assert response.response_code == "PREREQUISITES_INCOMPLETE"
    assert "net" in response.message and response.data["open"] == ["net"]
    assert not any(p["done"] for p in life.state.prerequisites())
    assert statuses(life) == ("CONFIGURING", "INSTALLED")
    assert life.prerequisites(all_done=True, complete=True).ok
    assert statuses(life) == ("CONFIGURING", "PREREQUISITES_DONE")


def test_prerequisites_keep_later_steps(life: Lifecycle) -> None:
    assert life.configure().ok
    assert life.prerequisites(all_done=True, complete=True).ok
    assert statuses(life) == ("CONFIGURING", "CONFIGURED")


def test_prerequisites_refused_once_finalized(started: Lifecycle) -> None:
    force(started, status="CONFIGURING")
    response = started.prerequisites(all_done=True)
    assert response.response_code == "INVALID_CONNECTOR_CONFIGURATION_STATUS"
    assert response.message == (
        "Invalid connector configuration status. Expected configuration status: "
        "[INSTALLED, PREREQUISITES_DONE, CONFIGURED, CONNECTED]. Current configuration status: FINALIZED. "
        "The wizard has finished (FINALIZED); nothing to redo (`connectors pipeline p status` shows it)."
    )


# --------------------------------------------------------------------------------------------- configure
def test_configure_refuses_unknown_fields_with_the_sdk_message(life: Lifecycle) -> None:
    response = life.configure({"warehouse": "W", "bogus": 1, "path": "x.duckdb"})
    assert response.response_code == "CONNECTOR_CONFIGURATION_PARSING_ERROR"
    assert response.message.startswith("Fields bogus, warehouse are not allowed in configuration.")
    assert statuses(life) == ("CONFIGURING", "INSTALLED") and life.state.config() == {}


def test_configure_rejects_bad_identifiers(life: Lifecycle) -> None:
    response = life.configure({"schema": "drop table; --"})
    assert response.response_code == "INVALID_IDENTIFIER" and "schema" in response.message
    assert life.state.config() == {}


def test_configure_stores_values_and_moves_to_configured(life: Lifecycle, tmp_path: Path) -> None:
    other = str(tmp_path / "other.duckdb")
    response = life.configure({"path": other, "schema": "ingest"})
    assert response.ok and statuses(life) == ("CONFIGURING", "CONFIGURED")
    assert life.pipeline.sink_settings()["path"] == other
    assert life.pipeline.sink_settings()["schema"] == "ingest"
    assert life.connect().ok
    assert life.configure().ok and statuses(life) == ("CONFIGURING", "CONNECTED")  # a later step is kept


# ---------------------------------------------------------------------------------------------- connect
def test_connect_needs_configuration_first(life: Lifecycle) -> None:
    response = life.connect()
    assert response.response_code == "INVALID_CONNECTOR_CONFIGURATION_STATUS"
    assert "Current configuration status: INSTALLED." in response.message


def test_connect_really_reaches_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOD_DSN", PG_DSN)
    monkeypatch.setenv("BAD_DSN", "postgresql://postgres@127.0.0.1:1/postgres")
    good = {"pg": {"kind": "postgres", "dsn": {"env": "GOOD_DSN"}}}
    life = open_lifecycle(tmp_path / "good", connections=good)
    assert life.configure().ok
    assert life.connect().ok and statuses(life) == ("CONFIGURING", "CONNECTED")

    bad = {"pg": {"kind": "postgres", "dsn": {"env": "BAD_DSN"}}}
    if os.environ.get(STATE_SCHEMA_ENV):  # another pipeline "p": in PostgreSQL, a schema of its own
        monkeypatch.setenv(STATE_SCHEMA_ENV, os.environ[STATE_SCHEMA_ENV] + "_bad")
    life = open_lifecycle(tmp_path / "bad", connections=bad)
    assert life.configure().ok
    response = life.connect()
    assert response.response_code == "CONNECTION_FAILED"
    assert "'pg'" in response.message and "127.0.0.1" in response.message
    assert "postgres@" not in response.message or "BAD_DSN" not in response.message
    assert statuses(life) == ("CONFIGURING", "CONFIGURED")


def test_connect_reports_a_missing_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNSET_KAFKA_PASSWORD", raising=False)
    connections = {
        "k": {
            "kind": "kafka",
            "config": {"bootstrap.servers": "127.0.0.1:1", "sasl.password": {"env": "UNSET_KAFKA_PASSWORD"}},
        }
    }
    life = open_lifecycle(tmp_path, connections=connections)
    assert life.configure().ok
    response = life.connect()
    assert response.response_code == "CONNECTION_FAILED" and "UNSET_KAFKA_PASSWORD" in response.message


# --------------------------------------------------------------------------------------------- finalize
def test_finalize_creates_tables_and_starts(life: Lifecycle, tmp_path: Path) -> None:
    assert life.configure().ok and life.connect().ok
    response = life.finalize()
    assert response.ok and statuses(life) == ("STARTED", "FINALIZED") and life.state.scheduling_enabled
    import duckdb

    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        columns = con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'price'"
        ).fetchall()
    assert {c[0] for c in columns} == {"part", "price"}


def sink_tables(tmp_path: Path) -> set[str]:
    import duckdb

    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        return {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


@pytest.mark.parametrize("hook", ["finalize_callback", "finalize_validator"])
def test_a_refused_or_failed_finalize_leaves_no_table_behind(tmp_path: Path, hook: str) -> None:
    def fail(context: HookContext) -> None:
        raise RuntimeError("custom step failed")

    extra = {"kept": {"columns": {"id": "BIGINT"}, "connectors": [{"name": "gen", "transport": {"name": "datagen"}}]}}
    life = open_lifecycle(
        tmp_path, hooks={hook: fail}, tables={**project_dict(tmp_path)["pipelines"]["p"]["tables"], **extra}
    )
    assert life.configure().ok and life.connect().ok
    import duckdb

    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:  # a table that existed before finalize
        con.execute("CREATE TABLE kept (id BIGINT)")
        con.execute("INSERT INTO kept VALUES (7)")
    response = life.finalize()
    assert response.response_code in ("ROLLBACK_CODE", "INTERNAL_ERROR") and "custom step failed" in response.message
    assert statuses(life) == ("CONFIGURING", "CONNECTED")
    assert sink_tables(tmp_path) == {"kept"}, "the table finalize created is dropped, the one it found is kept"
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT id FROM kept").fetchall() == [(7,)]
    life.hooks.pop(hook)
    assert life.finalize().ok and sink_tables(tmp_path) == {"kept", "price"}


def test_finalize_needs_connected(life: Lifecycle) -> None:
    assert life.configure().ok
    assert life.finalize().response_code == "INVALID_CONNECTOR_CONFIGURATION_STATUS"


def test_setup_stops_on_open_prerequisites_naming_them(life: Lifecycle) -> None:
    response = life.setup()
    assert response.response_code == "PREREQUISITES_INCOMPLETE" and "acl, net" in response.message
    assert statuses(life) == ("CONFIGURING", "INSTALLED")


# ------------------------------------------------------------------------------------------------ reset
def test_reset_clears_configuration_and_prerequisites(life: Lifecycle) -> None:
    assert life.prerequisites(all_done=True).ok and life.configure({"schema": "s1"}).ok
    response = life.reset()
    assert response.ok and statuses(life) == ("CONFIGURING", "INSTALLED")
    assert life.state.config() == {} and not any(p["done"] for p in life.state.prerequisites())


def test_reset_refused_when_started(started: Lifecycle) -> None:
    response = started.reset()
    assert response.response_code == "INVALID_CONNECTOR_STATUS"
    assert response.message.startswith(
        "Invalid connector status. Expected status: [CONFIGURING]. Current status: STARTED. "
        "The pipeline is set up already"
    )


# ---------------------------------------------------------------------------------------- pause / resume
def test_pause_and_resume(started: Lifecycle) -> None:
    response = started.pause()
    assert response.ok and started.state.status == "PAUSED" and not started.state.scheduling_enabled
    response = started.pause()
    assert response.response_code == "INVALID_CONNECTOR_STATUS"
    assert response.message.startswith(
        "Invalid connector status. Expected status: [STARTED, PAUSING]. Current status: PAUSED. It is PAUSED already;"
    )
    resumed = started.resume()
    assert resumed.ok and started.state.status == "STARTED" and started.state.scheduling_enabled
    if started.pipeline.store.kind == "sqlite":
        assert len(resumed.data["backups_uploaded"]) == 4, "a restart checks the 24-hour rule: nothing backed up yet"
    else:
        assert "backups_uploaded" not in resumed.data, "PostgreSQL state is backed up by the database"
    response = started.resume()
    assert response.message == (
        "Invalid connector status. Expected status: [PAUSED, STARTING]. Current status: STARTED. "
        "It is STARTED already; `connectors pipeline p pause` stops it."
    )
    events = [
        (e["procedure"], e["from_status"], e["to_status"])
        for e in reversed(started.state.events())
        if e["procedure"] != "backup"
    ]
    assert events[-4:] == [
        ("pause", "STARTED", "PAUSING"),
        ("pause", "PAUSING", "PAUSED"),
        ("resume", "PAUSED", "STARTING"),
        ("resume", "STARTING", "STARTED"),
    ]


def test_pause_and_resume_refused_while_configuring(life: Lifecycle) -> None:
    assert life.pause().response_code == "INVALID_CONNECTOR_STATUS"
    assert life.resume().response_code == "INVALID_CONNECTOR_STATUS"


@pytest.mark.parametrize(
    ("stuck", "procedure", "final"), [("PAUSING", "pause", "PAUSED"), ("STARTING", "resume", "STARTED")]
)
def test_a_stuck_intermediate_status_is_retried(started: Lifecycle, stuck: str, procedure: str, final: str) -> None:
    force(started, status=stuck)
    assert getattr(started, procedure)().ok and started.state.status == final


# --------------------------------------------------------------------------------------------- recover
def test_recover(started: Lifecycle) -> None:
    assert started.recover("PAUSED").response_code == "INVALID_CONNECTOR_STATUS"  # STARTED is not stuck
    force(started, status="ERROR")
    response = started.recover("CONFIGURING")
    assert response.response_code == "INVALID_NEW_CONNECTOR_STATUS" and started.state.status == "ERROR"
    assert started.recover("paused").ok and started.state.status == "PAUSED" and not started.state.scheduling_enabled
    force(started, status="STARTING")
    assert started.recover("STARTED").ok and started.state.status == "STARTED" and started.state.scheduling_enabled


# ----------------------------------------------------------------------------------- refusals name a command
#: Every procedure that runs the status checks, called with arguments that pass its own checks where they can.
STATUS_CHECKED = {
    "prerequisites": lambda life: life.prerequisites(all_done=True, complete=True),
    "configure": lambda life: life.configure(),
    "connect": lambda life: life.connect(),
    "finalize": lambda life: life.finalize(),
    "reset": lambda life: life.reset(),
    "setup": lambda life: life.setup(confirm_prerequisites=True),
    "pause": lambda life: life.pause(),
    "resume": lambda life: life.resume(),
    "recover": lambda life: life.recover("STARTED"),
    "update_connection": lambda life: life.update_connection("pg", {"dsn": {"env": "NO_SUCH_DSN"}}),
    "update_warehouse": lambda life: life.update_warehouse("LOAD_WH"),
}


@pytest.mark.parametrize("status", [status.value for status in Status])
def test_every_status_refusal_names_the_command_that_fixes_it(life: Lifecycle, status: str) -> None:
    """Each procedure, in ``status`` and every configuration status: a refusal by the status checks ends with the
    ``connectors`` command that gets past it."""
    life.pipeline.ensure_created()
    refusals: dict[str, set[str]] = {}
    for configuration in ConfigurationStatus:
        for name, call in STATUS_CHECKED.items():
            force(life, status=status, configuration=configuration)
            response = call(life)
            if response.response_code in ("INVALID_CONNECTOR_STATUS", "INVALID_CONNECTOR_CONFIGURATION_STATUS"):
                refusals.setdefault(response.response_code, set()).add(name)
                assert "`connectors " in response.message, (status, configuration, name, response.message)
    assert "INVALID_CONNECTOR_STATUS" in refusals  # some procedure is refused in every status
    assert ("INVALID_CONNECTOR_CONFIGURATION_STATUS" in refusals) == (status == "CONFIGURING")


# ------------------------------------------------------------------------------------ hooks and rollback
def refuse_validator(context: HookContext) -> dict[str, str]:
    """A validator named in a project file: refuses every pause."""
    return {"response_code": "INVALID_CONNECTOR_STATUS", "message": f"no {context.procedure} on Fridays"}


def test_a_validator_refusal_is_answered_as_is(started: Lifecycle) -> None:
    started.hooks["pause_validator"] = lambda ctx: Response("INTERNAL_ERROR", "not now")
    response = started.pause()
    assert response.as_dict() == {"response_code": "INTERNAL_ERROR", "message": "not now"}
    assert started.state.status == "STARTED"


def test_hooks_named_in_the_project_file(tmp_path: Path) -> None:
    life = open_lifecycle(tmp_path, hooks=None)
    project = parse_project(project_dict(tmp_path, hooks={"pause_validator": "test_lifecycle:refuse_validator"}))
    life = Lifecycle(Pipeline(project, "p", tmp_path / "state"), life.clients)
    assert life.setup(confirm_prerequisites=True).ok
    response = life.pause()
    assert response.message == "no pause on Fridays" and life.state.status == "STARTED"

    project = parse_project(project_dict(tmp_path, hooks={"pause_callback": "no_such_module:hook"}))
    life = Lifecycle(Pipeline(project, "p", tmp_path / "state"), life.clients)
    response = life.pause()
    assert response.response_code == "ROLLBACK_CODE" or response.response_code == "INTERNAL_ERROR"
    assert "no_such_module" in response.message and life.state.status == "STARTED"


def test_validator_ok_and_callback_ok_go_on(started: Lifecycle) -> None:
    calls: list[str] = []
    started.hooks["pause_validator"] = lambda ctx: calls.append(f"validate {ctx.procedure}")
    started.hooks["pause_callback"] = lambda ctx: (
        calls.append(f"callback {ctx.pipeline.state.status}") or {"response_code": "OK"}
    )
    assert started.pause().ok
    assert calls == ["validate pause", "callback PAUSING"]  # the callback runs after the intermediate status


@pytest.mark.parametrize(
    ("procedure", "before"),
    [("pause", "STARTED"), ("resume", "PAUSED")],
)
def test_a_raising_callback_rolls_back(started: Lifecycle, procedure: str, before: str) -> None:
    force(started, status=before)

    def boom(context: HookContext) -> None:
        raise RuntimeError("warehouse exploded")

    started.hooks[f"{procedure}_callback"] = boom
    response = getattr(started, procedure)()
    assert response.response_code == "ROLLBACK_CODE" and "warehouse exploded" in response.message
    assert started.state.status == before
    assert started.state.events(1)[0]["to_status"] == before


def test_a_rollback_code_callback_rolls_back(started: Lifecycle) -> None:
    started.hooks["pause_callback"] = lambda ctx: {"response_code": "ROLLBACK_CODE", "message": "consumers busy"}
    response = started.pause()
    assert response.as_dict() == {"response_code": "ROLLBACK_CODE", "message": "consumers busy"}
    assert started.state.status == "STARTED"


def test_a_failing_rollback_answers_unknown_error_and_recover_is_the_way_out(
    started: Lifecycle, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> None:
        raise OSError("disk full")

    started.hooks["pause_callback"] = lambda ctx: {"response_code": "ROLLBACK_CODE", "message": "consumers busy"}
    monkeypatch.setattr(started, "_put_status_back", broken)
    response = started.pause()
    assert response.response_code == "UNKNOWN_ERROR_CODE"
    assert "disk full" in response.message and "recover" in response.message
    assert started.state.status == "ERROR"
    monkeypatch.undo()
    assert started.recover("STARTED").ok and started.state.status == "STARTED"


def test_a_wizard_callback_failure_stores_nothing(life: Lifecycle) -> None:
    life.hooks["configure_callback"] = lambda ctx: (_ for _ in ()).throw(ValueError("bad"))
    response = life.configure({"schema": "s2"})
    assert response.response_code == "ROLLBACK_CODE" and statuses(life) == ("CONFIGURING", "INSTALLED")
    assert life.state.config() == {}


# ---------------------------------------------------------------------------------- privileges, records
def test_required_privileges_missing(started: Lifecycle) -> None:
    started.pipeline.state = started.pipeline.store.pipeline("p", read_only=True)
    response = started.pause()
    assert response.response_code == "REQUIRED_PRIVILEGES_MISSING" and started.state.location in response.message


def test_connector_status_not_found(started: Lifecycle) -> None:
    with started.state.transaction() as conn:
        conn.execute("DELETE FROM app_state WHERE key = 'status'")
    assert started.pause().response_code == "CONNECTOR_STATUS_NOT_FOUND"
    assert started.status().response_code == "CONNECTOR_STATUS_NOT_FOUND"


# ------------------------------------------------------------------------------------------- updates
def test_update_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOD_DSN", PG_DSN)
    monkeypatch.setenv("BAD_DSN", "postgresql://postgres@127.0.0.1:1/postgres")
    life = open_lifecycle(tmp_path, connections={"pg": {"kind": "postgres", "dsn": {"env": "GOOD_DSN"}}})
    assert life.setup(confirm_prerequisites=True).ok
    assert life.update_connection("pg", {"dsn": {"env": "BAD_DSN"}}).response_code == "INVALID_CONNECTOR_STATUS"
    assert life.pause().ok

    response = life.update_connection("pg", {"dsn": {"env": "BAD_DSN"}, "port": 5})
    assert response.response_code == "CONNECTOR_CONFIGURATION_PARSING_ERROR"
    assert response.message.startswith("Fields port are not allowed in configuration.")
    response = life.update_connection("pg", {"dsn": PG_DSN})
    assert response.response_code == "CONNECTOR_CONFIGURATION_PARSING_ERROR" and "env:NAME" in response.message
    response = life.update_connection("nope", {})
    assert response.response_code == "CONNECTOR_CONFIGURATION_PARSING_ERROR" and "pg" in response.message
    response = life.update_connection("pg", {"dsn": {"env": "BAD_DSN"}})
    assert response.response_code == "CONNECTION_FAILED" and "'pg'" in response.message
    assert life.pipeline.connection_settings("pg")["dsn"] == {"env": "GOOD_DSN"}

    monkeypatch.setenv("OTHER_DSN", PG_DSN)
    assert life.update_connection("pg", {"dsn": {"env": "OTHER_DSN"}}).ok
    assert life.pipeline.connection_settings("pg")["dsn"] == {"env": "OTHER_DSN"}
    assert life.state.status == "PAUSED"
    stored = json.dumps(life.state.config())
    assert "postgres@" not in stored  # only the variable's name is stored, never the secret


def test_update_warehouse_needs_a_snowflake_sink(started: Lifecycle) -> None:
    assert started.update_warehouse("LOAD_WH").response_code == "INVALID_CONNECTOR_STATUS"
    assert started.pause().ok
    response = started.update_warehouse("LOAD_WH")
    assert response.response_code == "CONNECTOR_CONFIGURATION_PARSING_ERROR" and "duckdb" in response.message


# ------------------------------------------------------------------------------------------ connectors
def test_connector_start_and_pause_are_idempotent(started: Lifecycle) -> None:
    held = started.pipeline.connector("price", "held")
    assert not held.state.running and not started.pipeline.is_active(held)
    response = started.start_connector("price", "held")
    assert response.ok and response.data["state"] == "Running" and response.data["active"]
    assert started.start_connector("price", "held").message.endswith("was already started")
    assert started.pause_connector("price", "held").ok and not held.state.running
    assert started.pause_connector("price", "held").ok and not held.state.running
    assert [e["kind"] for e in held.state.events()][:2] == ["paused", "running"]


def test_a_connector_is_active_only_when_both_are_running(started: Lifecycle) -> None:
    backfill = started.pipeline.connector("price", "backfill")
    assert started.pipeline.is_active(backfill)
    assert started.pause().ok and not started.pipeline.is_active(backfill)
    assert started.resume().ok and started.pause_connector("price", "backfill").ok
    assert not started.pipeline.is_active(backfill)


def test_unknown_connector_names_what_exists(started: Lifecycle) -> None:
    response = started.start_connector("price", "nope")
    assert response.response_code == "CONNECTOR_STATUS_NOT_FOUND"
    assert "backfill, held, live" in response.message
    response = started.pause_connector("nope", "x")
    assert response.response_code == "CONNECTOR_STATUS_NOT_FOUND" and "price" in response.message


def test_status_lists_connectors(started: Lifecycle) -> None:
    data = started.status().as_dict()
    assert data["status"] == "STARTED" and data["configurationStatus"] == "FINALIZED"
    assert [(c["endpoint_name"], c["state"], c["active"]) for c in data["connectors"]] == [
        ("price.backfill", "Running", True),
        ("price.held", "Paused", False),
        ("price.live", "Paused", False),
    ]


# --------------------------------------------------------------------------------------------- races
RACER = textwrap.dedent(
    """
    import json, sys
    from connector_core.lifecycle import Lifecycle
    from connector_core.pipeline import Pipeline
    from connector_core.project import parse_project
    project = parse_project(json.loads(sys.argv[1]))
    life = Lifecycle(Pipeline(project, "p", sys.argv[2]))
    life.hooks[sys.argv[3] + "_callback"] = lambda ctx: __import__("time").sleep(0.2)  # widen the window
    sys.stdin.readline()  # start together
    print(json.dumps(getattr(life, sys.argv[3])().as_dict()), flush=True)
    """
)


@pytest.mark.parametrize("procedures", [["pause"] * 4, ["pause", "pause", "resume", "resume"]])
def test_processes_racing_on_pause_and_resume_leave_one_winner(
    started: Lifecycle, tmp_path: Path, procedures: list[str]
) -> None:
    data = json.dumps(project_dict(tmp_path))
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, data, str(tmp_path / "state"), procedure],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent.parent,
        )
        for procedure in procedures
    ]
    for racer in racers:  # all processes have imported everything before any starts the procedure
        assert racer.stdin is not None
        racer.stdin.write("go\n")
        racer.stdin.flush()
    answers = [json.loads(racer.communicate(timeout=120)[0]) for racer in racers]
    codes = [a["response_code"] for a in answers]
    winners = [p for p, a in zip(procedures, answers, strict=True) if a["response_code"] == "OK"]
    assert set(codes) <= {"OK", "INVALID_CONNECTOR_STATUS"}
    if set(procedures) == {"pause"}:
        assert winners == ["pause"] and started.state.status == "PAUSED"
    else:  # pause and resume alternate: each OK must be a valid step from the state before it
        assert winners and started.state.status in ("STARTED", "PAUSED")
        transitions = [
            (e["from_status"], e["to_status"])
            for e in reversed(started.state.events())
            if e["response_code"] == "OK" and e["procedure"] != "backup"
        ]
        for (_, to), (start, _) in zip(transitions, transitions[1:], strict=False):
            assert to == start  # the event log is a chain: no two procedures interleaved
    assert started.state.status in ("STARTED", "PAUSED")
    assert lc.Lifecycle is Lifecycle
