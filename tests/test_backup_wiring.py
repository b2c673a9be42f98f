"""The wiring of backups and restores (issue 14) on real parts: the schedule ``{p}__backups`` ticking in a real
``DagsterInstance`` and the job ``{p}__backup`` it launches, uploading to the folder store and to moto through
dagster-aws ``S3Resource``; the job ``{p}__restore``; the commands ``connectors backup | backups | restore``, with a
connector moved onto a new pipeline's ids (its sink mark with it) and ``connectors run`` reading nothing twice."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import duckdb
import pytest
import yaml
from fixtures_services import free_port
from test_cli import Cli

from connector_assets import build_definitions
from connector_assets.jobs import BackupConfig, ConnectorConfig, RestoreConfig, SetupConfig
from connector_core.backups import DEFAULT_BACKUP_FOLDER, connector_key, pipeline_key
from connector_core.pipeline import Pipeline
from connector_core.project import PROJECT_FILE_ENV, load_project

ORG = "acme"


def write_project(
    path: Path,
    org: str = ORG,
    state_dir: str | None = None,
    backup: dict[str, Any] | None = None,
    connections: dict[str, Any] | None = None,
) -> Path:
    """Pipeline ``demo``: table ``numbers`` fed by ``running`` (5 records, 2 a batch) and the paused ``waiting``;
    the DuckDB sink ``sink.duckdb`` beside the file."""
    datagen = {"name": "datagen", "config": {"plan": [{"limit": 5}]}}
    waiting = {"name": "datagen", "config": {"plan": [{"limit": 3, "fields": {"n": {"values": [100, 101, 102]}}}]}}
    pipeline: dict[str, Any] = {
        "org_slug": org,
        "sink": {"kind": "duckdb", "path": "sink.duckdb"},
        "tables": {
            "numbers": {
                "columns": {"n": "BIGINT"},
                "connectors": [
                    {"name": "running", "max_batch_size": 2, "transport": datagen},
                    {"name": "waiting", "paused": True, "transport": waiting},
                ],
            }
        },
    }
    if backup is not None:
        pipeline["backup"] = backup
    if connections is not None:
        pipeline["connections"] = connections
    data: dict[str, Any] = {"pipelines": {"demo": pipeline}}
    if state_dir is not None:
        data["state_dir"] = state_dir
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ids_of(project_file: Path) -> dict[str, str]:
    """``pipeline`` and each ``table.connector``: the ids the pipeline's state holds."""
    pipeline = Pipeline(load_project(project_file), "demo")
    try:
        return {
            "pipeline": str(pipeline.pipeline_id),
            **{h.endpoint: str(h.connector_id) for h in pipeline.connectors()},
        }
    finally:
        pipeline.close()


def sink_marks(project_file: Path) -> dict[str, tuple[int, int]]:
    """``connector_id -> (batch_seq, total_records)`` of the sink's marks."""
    with duckdb.connect(str(project_file.parent / "sink.duckdb"), read_only=True) as conn:
        rows = conn.execute("SELECT connector_id, batch_seq, total_records FROM _connector_positions").fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


def sink_values(project_file: Path) -> list[int]:
    with duckdb.connect(str(project_file.parent / "sink.duckdb"), read_only=True) as conn:
        return [row[0] for row in conn.execute("SELECT n FROM numbers ORDER BY n").fetchall()]


# ------------------------------------------------------------------------------------------------- stores
def unreachable_store(endpoint: str) -> dict[str, Any]:
    """The ``backup:`` and ``connections:`` keys of a bucket at ``endpoint``, where nothing listens."""
    return {
        "backup": {"bucket": "backups", "connection": "backups"},
        "connections": {"backups": {"kind": "s3", "endpoint_url": endpoint, "region_name": "us-east-1"}},
    }


Lister = Callable[[], dict[str, int]]


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[dict[str, Any], Lister]:
    """The project file's ``backup:``/``connections:`` keys of a store, and a listing of its keys and sizes."""
    project_dir = tmp_path / "project"
    if request.param == "folder":

        def folder() -> dict[str, int]:
            base = project_dir / DEFAULT_BACKUP_FOLDER
            return {
                p.relative_to(base).as_posix(): p.stat().st_size
                for p in base.rglob("*")
                if p.is_file() and not p.name.endswith(".meta.json")
            }

        return {}, folder
    endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket")
    keys = {
        "backup": {"bucket": bucket, "connection": "backups"},
        "connections": {"backups": {"kind": "s3", "endpoint_url": endpoint, "region_name": "us-east-1"}},
    }
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def s3() -> dict[str, int]:
        return {o["Key"]: o["Size"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}

    return keys, s3


# ------------------------------------------------------------------------------------------------- Dagster
def run_job(
    defs: dg.Definitions, instance: dg.DagsterInstance, procedure: str, config: dg.Config | None = None, **kwargs: Any
) -> dg.ExecuteInProcessResult:
    name = f"demo__{procedure}"
    run_config = dg.RunConfig(ops={f"{name}_op": config}) if config is not None else kwargs.pop("run_config", None)
    job = defs.resolve_job_def(name)
    return job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False, **kwargs)


def output_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    (output,) = [e for e in result.all_node_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
    return output.event_specific_data.metadata


def failure_metadata(result: dg.ExecuteInProcessResult) -> tuple[str, dict[str, Any]]:
    assert result.success is False
    (node,) = result.job_def.graph.nodes
    data = result.failure_data_for_node(node.name)
    assert data is not None and data.user_failure_data is not None
    return data.user_failure_data.description, data.user_failure_data.metadata


def table_rows(metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The backup table's rows by database."""
    return {r.data["database"]: r.data for r in metadata["connectors/backups"].value.records}


@pytest.fixture
def dagster_project(tmp_path: Path, store: tuple[dict[str, Any], Lister]) -> Iterator[tuple[Path, Lister]]:
    keys, _ = store
    yield write_project(tmp_path / "project" / "connectors.yaml", **keys), store[1]


def test_definitions_hold_the_schedule_and_loading_them_backs_nothing_up(tmp_path: Path) -> None:
    project_file = write_project(tmp_path / "project" / "connectors.yaml")
    defs = build_definitions(project_file)
    dg.Definitions.validate_loadable(defs)
    schedule = defs.resolve_schedule_def("demo__backups")
    assert schedule.job_name == "demo__backup" and schedule.cron_schedule == "0 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    restore_fields = set(RestoreConfig.model_fields)
    assert restore_fields == {"connector", "from_pipeline", "from_connector", "from_org", "force"}
    assert BackupConfig().force is False
    assert (
        not (tmp_path / "project" / DEFAULT_BACKUP_FOLDER).exists()
        and not (tmp_path / "project" / ".connectors").exists()
    )


def test_the_schedule_tick_launches_the_backup_job_which_applies_the_24_hour_rule(
    dagster_project: tuple[Path, Lister], instance: dg.DagsterInstance
) -> None:
    project_file, listed = dagster_project
    defs = build_definitions(project_file)
    assert run_job(defs, instance, "setup", SetupConfig(confirm_prerequisites=True)).success
    before = listed()  # (what a restart-triggered check of the setup may have uploaded)
    defs.resolve_sensor_def("demo__orchestration").evaluate_tick(dg.build_sensor_context(instance=instance))
    assert listed() == before  # a sensor tick backs nothing up

    schedule = defs.resolve_schedule_def("demo__backups")
    ids = ids_of(project_file)
    expected = {
        pipeline_key(ORG, ids["pipeline"]),
        *(connector_key(ORG, ids["pipeline"], ids[e]) for e in ("numbers.running", "numbers.waiting")),
    }
    at = dt.datetime(2026, 12, 2, 10, 0, tzinfo=dt.UTC)
    uploads = []
    for hour in range(2):
        with dg.build_schedule_context(
            instance=instance, scheduled_execution_time=at + dt.timedelta(hours=hour)
        ) as ctx:
            data = schedule.evaluate_tick(ctx)
        (request,) = data.run_requests or []
        assert request.tags["connectors/procedure"] == "backup" and request.tags["connectors/pipeline"] == "demo"
        job = defs.resolve_job_def(schedule.job_name)
        result = job.execute_in_process(
            run_config=request.run_config, tags=request.tags, instance=instance, raise_on_error=False
        )
        metadata = output_metadata(result)
        uploads.append(metadata["connectors/uploaded"].value)
        rows = table_rows(metadata)
        assert set(rows) == {"pipeline", "numbers.running", "numbers.waiting"}
        assert {r["key"] for r in rows.values()} == expected
        assert all(r["bytes"] and r["error"] is None for r in rows.values())
        if hour == 0:
            uploaded = [r for r in rows.values() if r["uploaded"]]
            assert {r["key"] for r in uploaded} == expected - set(before)
            assert all(r["reason"] == "no backup at the key" and r["sha256"] for r in uploaded)
            assert set(listed()) == expected and all(size > 0 for size in listed().values())
        else:
            assert not any(r["uploaded"] for r in rows.values())
            assert all("within max_age_hours 24" in r["reason"] and r["age_hours"] < 1 for r in rows.values())
    assert uploads == [3 - len(before), 0]  # the second run within 24 h uploads nothing
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.job_name == "demo__backup" and run.tags["connectors/pipeline"] == "demo"

    forced = output_metadata(run_job(defs, instance, "backup", BackupConfig(force=True)))
    assert forced["connectors/uploaded"].value == 3
    assert forced["response"].value["databases"][0]["reason"] == "forced"


def test_the_backup_job_fails_on_an_unreachable_s3_endpoint_with_the_report(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    project_file = write_project(tmp_path / "project" / "connectors.yaml")
    assert run_job(build_definitions(project_file), instance, "setup", SetupConfig(confirm_prerequisites=True)).success
    closed = f"http://127.0.0.1:{free_port()}"  # the store moves to an S3 endpoint that nothing serves
    write_project(project_file, **unreachable_store(closed))
    description, metadata = failure_metadata(run_job(build_definitions(project_file), instance, "backup"))
    assert description.startswith("INTERNAL_ERROR: backups of demo to s3://backups: 0 uploaded")
    assert "FAILED" in description and "Could not connect" in description
    report = metadata["response"].value
    assert report["store"] == "s3://backups" and len(report["databases"]) == 3
    assert all(d["error"] and not d["uploaded"] for d in report["databases"])
    rows = table_rows(metadata)
    assert all("Could not connect" in r["error"] for r in rows.values()) and metadata["connectors/failed"].value == 3


def test_the_restore_job_moves_a_connector_onto_this_pipelines_ids(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    folder = tmp_path / "project"
    old_file = write_project(folder / "old.yaml", org="legacy", state_dir="old-state")
    old = Cli(old_file)
    old("setup", "demo", "--confirm-prerequisites")
    old("run", "demo")
    old("backup", "demo")
    old_ids = ids_of(old_file)

    new_file = write_project(folder / "connectors.yaml", state_dir="new-state")
    defs = build_definitions(new_file)
    assert run_job(defs, instance, "setup", SetupConfig(confirm_prerequisites=True)).success
    config = RestoreConfig(
        connector="numbers.running",
        from_pipeline=old_ids["pipeline"],
        from_connector=old_ids["numbers.running"],
        from_org="legacy",
    )
    key = connector_key("legacy", old_ids["pipeline"], old_ids["numbers.running"])
    description, metadata = failure_metadata(run_job(defs, instance, "restore", config))
    assert "pause it first" in description and metadata["response"].value["key"] == key  # still Running

    assert run_job(defs, instance, "pause_connector", ConnectorConfig(connector="numbers.running")).success
    restored = output_metadata(run_job(defs, instance, "restore", config))["response"].value
    new_ids = ids_of(new_file)
    assert (
        restored["restored"]["key"] == key
        and restored["restored"]["mark"]["connector_id"] == new_ids["numbers.running"]
    )
    assert sink_marks(new_file) == {new_ids["numbers.running"]: (3, 5)}

    unknown = RestoreConfig(connector="numbers.nope", from_pipeline="x", from_connector="y")
    with pytest.raises(dg.DagsterInvalidConfigError, match="not in enum type demo_Connector"):  # before any run
        run_job(defs, instance, "restore", unknown)


# ------------------------------------------------------------------------------------------- command line
@pytest.fixture
def no_env_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROJECT_FILE_ENV, raising=False)


@pytest.mark.usefixtures("no_env_project")
def test_cli_backup_and_backups_apply_the_24_hour_rule(tmp_path: Path, store: tuple[dict[str, Any], Lister]) -> None:
    keys, listed = store
    cli = Cli(write_project(tmp_path / "project" / "connectors.yaml", **keys))
    before = cli.json("backup", "demo")
    assert before["response_code"] == "OK" and "does not exist yet" in before["databases"][0]["reason"]
    assert cli.json("backups", "demo", "--format", "json")["backups"] == []
    cli("setup", "demo", "--confirm-prerequisites")

    before = set(listed())  # (what a restart-triggered check of the setup may have uploaded)
    first = cli.json("backup", "demo")
    assert first["response_code"] == "OK" and len(first["databases"]) == 3
    assert {d["key"] for d in first["databases"] if d["uploaded"]} == {d["key"] for d in first["databases"]} - before
    assert set(listed()) == {d["key"] for d in first["databases"]}
    second = cli.json("backup", "demo")
    assert not any(d["uploaded"] for d in second["databases"]) and "0 uploaded" in second["message"]
    forced = cli.json("backup", "demo", "--force")
    assert all(d["uploaded"] and d["reason"] == "forced" for d in forced["databases"])

    listing = cli.json("backups", "demo", "--format", "json")
    ids = ids_of(cli.project)
    assert [(b["key"], b["database"]) for b in listing["backups"]] == sorted(
        [
            (pipeline_key(ORG, ids["pipeline"]), "pipeline"),
            *((connector_key(ORG, ids["pipeline"], ids[e]), e) for e in ("numbers.running", "numbers.waiting")),
        ]
    )
    assert all(b["bytes"] == listed()[b["key"]] and 0 <= b["age_hours"] < 1 for b in listing["backups"])
    text = cli("backups", "demo").stdout
    assert "KEY" in text and "AGE_HOURS" in text and pipeline_key(ORG, ids["pipeline"]) in text


@pytest.mark.usefixtures("no_env_project")
def test_cli_backup_exits_1_on_an_unreachable_store_with_the_report(tmp_path: Path) -> None:
    cli = Cli(write_project(tmp_path / "project" / "connectors.yaml"))
    cli("setup", "demo", "--confirm-prerequisites")
    write_project(cli.project, **unreachable_store(f"http://127.0.0.1:{free_port()}"))
    report = cli.json("backup", "demo", code=1)
    assert report["response_code"] == "INTERNAL_ERROR" and "FAILED" in report["message"]
    assert all("Could not connect" in d["error"] for d in report["databases"])
    listing = cli.json("backups", "demo", code=1)
    assert listing["response_code"] == "INTERNAL_ERROR" and "Could not connect" in listing["message"]


@pytest.mark.usefixtures("no_env_project")
def test_cli_restore_moves_a_connector_onto_a_new_pipeline_and_nothing_is_read_twice(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    old = Cli(write_project(folder / "old.yaml", org="legacy", state_dir="old-state"))
    old("setup", "demo", "--confirm-prerequisites")
    assert old.json("backup", "demo")["response_code"] == "OK"  # taken before any batch: the mark runs ahead of it
    assert json.loads(old("run", "demo").stdout)["records"] == 5
    old_ids = ids_of(old.project)
    assert sink_marks(old.project) == {old_ids["numbers.running"]: (3, 5)}

    # A copy of the project on another state folder (and org): new ids, the same sink and backup folder.
    new = Cli(write_project(folder / "connectors.yaml", state_dir="new-state"))
    new("setup", "demo", "--confirm-prerequisites")
    new_ids = ids_of(new.project)
    assert new_ids["pipeline"] != old_ids["pipeline"] and new_ids["numbers.running"] != old_ids["numbers.running"]
    source = ["--from-pipeline", old_ids["pipeline"], "--from-connector", old_ids["numbers.running"]]
    key = connector_key("legacy", old_ids["pipeline"], old_ids["numbers.running"])

    running = new.json("restore", "demo", "numbers", "running", *source, "--from-org", "legacy", code=1)
    assert running["key"] == key and "pause it first" in running["message"] and key in running["message"]
    new("restore", "demo", "numbers", "nope", *source, code=2)  # an unknown connector is a usage error
    new("connector", "demo", "numbers", "running", "pause")
    missing = new.json("restore", "demo", "numbers", "running", *source, code=1)  # the pipeline's own org: no backup
    assert connector_key(ORG, old_ids["pipeline"], old_ids["numbers.running"]) in missing["message"]
    assert sink_marks(new.project) == {old_ids["numbers.running"]: (3, 5)}  # refused: nothing moved

    restored = new.json("restore", "demo", "numbers", "running", *source, "--from-org", "legacy")
    assert restored["response_code"] == "OK" and restored["restored"]["key"] == key and key in restored["message"]
    assert restored["restored"]["mark"] == {
        "connector_id": new_ids["numbers.running"],
        "position": restored["restored"]["mark"]["position"],
        "batch_seq": 3,
        "total_records": 5,
        "total_bytes": restored["restored"]["mark"]["total_bytes"],
    }
    assert sink_marks(new.project) == {new_ids["numbers.running"]: (3, 5)}  # the mark moved to the new id
    stats = new.json("connector", "demo", "numbers", "running", "stats", "--format", "json")
    assert stats["paused"] is True and stats["connector_id"] == new_ids["numbers.running"]  # still Paused
    assert ids_of(new.project) == new_ids

    again = new.json("restore", "demo", "numbers", "running", *source, "--from-org", "legacy", code=1)
    assert "has a mark of its own" in again["message"] and key in again["message"]  # --force replaces it

    new("connector", "demo", "numbers", "running", "start")
    ran = new("run", "demo")
    assert json.loads(ran.stdout)["records_by_connector"].get("numbers.running", 0) == 0
    assert sink_values(new.project) == [0, 1, 2, 3, 4]  # nothing read twice: the position came from the sink
    assert sink_marks(new.project) == {new_ids["numbers.running"]: (3, 5)}
    stats = new.json("connector", "demo", "numbers", "running", "stats", "--format", "json")
    assert stats["metrics"]["total_records"] == 5 and stats["metrics"]["end_of_input"] is True


def test_a_folder_backup_job_needs_no_connection(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UNSET_PG_DSN", raising=False)
    connections = {"pg": {"kind": "postgres", "dsn": {"env": "UNSET_PG_DSN"}}}  # its secret is not set here
    project_file = write_project(tmp_path / "connectors.yaml", connections=connections)
    lifecycle = Cli(project_file)
    lifecycle.json("wizard", "demo", "prerequisites", "--complete")
    result = run_job(build_definitions(project_file), instance, "backup", BackupConfig(force=True))
    assert result.success, "an unset connection secret does not stop the backup to a folder"
    assert output_metadata(result)["connectors/uploaded"].value == 3


def test_a_failed_backup_at_the_start_of_an_ingest_run_is_reported_not_fatal(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """The first batch of a Dagster run checks the 24-hour rule; an unreachable store does not fail the run: the
    run gets the tag ``connectors/backup_check=failed``, each table's materialization the warning, the pipeline's
    state an event; the next check (here: once the store is back) uploads."""
    project_file = write_project(tmp_path / "project" / "connectors.yaml")
    Cli(project_file)("setup", "demo", "--confirm-prerequisites")
    write_project(project_file, **unreachable_store(f"http://127.0.0.1:{free_port()}"))
    defs = build_definitions(project_file)
    result = defs.resolve_job_def("demo__ingest").execute_in_process(instance=instance, raise_on_error=False)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.tags["connectors/backup_check"] == "failed"
    (materialization,) = result.asset_materializations_for_node("demo__tables")
    warning = materialization.metadata["connectors/backup_warning"].value
    assert "the next check retries it" in warning and "cannot list" in warning
    assert materialization.metadata["connectors/records"].value == 5, "the records were ingested all the same"
    pipeline = Pipeline(load_project(project_file), "demo")
    try:
        assert any(e["procedure"] == "backup" and e["response_code"] != "OK" for e in pipeline.state.events())
    finally:
        pipeline.close()
