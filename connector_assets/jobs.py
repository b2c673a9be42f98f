"""Lifecycle jobs: one single-op job per procedure and pipeline, with a typed ``Config`` (a Launchpad form).

An OK response is the op's output (logged and attached as output metadata); any other response fails the op
with ``dg.Failure`` carrying the response as JSON metadata, without retries.
"""

# No ``from __future__ import annotations`` here: Dagster reads each op's ``config`` annotation at definition
# time, and the ops are built in a factory whose config classes are local variables.

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import dagster as dg
from pydantic import Field

from connector_assets.assets import pipeline_resource_keys, run_resources
from connector_assets.translator import dagster_name
from connector_core.lifecycle import Hook, Lifecycle, Response
from connector_core.pipeline import Pipeline
from connector_core.project import Project, parse_setting_value
from resources import ResourceClients


class PrerequisitesConfig(dg.Config):
    """Mark prerequisites of the wizard's checklist done, and/or complete the step."""

    done: list[str] = Field(default=[], description="Ids of the prerequisites to mark done.")
    all: bool = Field(default=False, description="Mark every prerequisite done.")
    complete: bool = Field(
        default=False,
        description="Complete the step (INSTALLED -> PREREQUISITES_DONE); refused while a prerequisite is open.",
    )


class ConfigureConfig(dg.Config):
    """Sink settings stored by the wizard on top of the project file's."""

    values: dict[str, str] = Field(
        default={},
        description="Sink settings to store: duckdb takes path, schema; snowflake takes connection, database, "
        "schema, warehouse. Empty: keep the project file's.",
    )


class SetupConfig(dg.Config):
    """Run the whole wizard from the project file."""

    confirm_prerequisites: bool = Field(
        default=False, description="Mark every prerequisite done (you confirm they are); else open ones stop setup."
    )


class RecoverTarget(StrEnum):
    """The status a pipeline recovers to."""

    STARTED = "STARTED"
    PAUSED = "PAUSED"


class RecoverConfig(dg.Config):
    """Leave ERROR (or a stuck STARTING/PAUSING) for the status you name."""

    to: RecoverTarget = Field(description="The status to recover to: STARTED or PAUSED.")


class UpdateConnectionConfig(dg.Config):
    """New settings of one connection (the pipeline must be PAUSED); they are tested before being stored."""

    connection: str = Field(description="Name of the connection in the project file.")
    values: dict[str, str] = Field(
        description="Settings to change, as `connectors ... --set` takes them: true/false and numbers are "
        "parsed; secrets only as references, 'env:NAME' (the name of the environment variable)."
    )


class UpdateWarehouseConfig(dg.Config):
    """The Snowflake warehouse the sink loads through (the pipeline must be PAUSED)."""

    warehouse: str = Field(description="Name of the Snowflake warehouse.")


class ConnectorConfig(dg.Config):
    """One connector of the pipeline, addressed as table.connector."""

    table: str = Field(description="Table the connector feeds.")
    connector: str = Field(description="Name of the connector inside the table.")


def setting_values(values: Mapping[str, str]) -> dict[str, Any]:
    """Launchpad values (all text) as typed settings; see ``connector_core.project.parse_setting_value``."""
    return {key: parse_setting_value(value) for key, value in values.items()}


Call = Callable[[Lifecycle, Any], Response]


@dataclass(frozen=True)
class Procedure:
    """How one lifecycle job calls the core: its config class, whether it needs connections, and the call."""

    name: str
    description: str
    call: Call
    config: type[dg.Config] | None = None
    needs_connections: bool = False


PROCEDURES: tuple[Procedure, ...] = (
    Procedure(
        "wizard_prerequisites",
        "Wizard step 1: mark prerequisites done and complete the checklist.",
        lambda lc, c: lc.prerequisites(done=list(c.done), all_done=c.all, complete=c.complete),
        PrerequisitesConfig,
    ),
    Procedure(
        "wizard_configure",
        "Wizard step 2: store the sink configuration (-> CONFIGURED).",
        lambda lc, c: lc.configure(setting_values(c.values)),
        ConfigureConfig,
    ),
    Procedure(
        "wizard_connect",
        "Wizard step 3: reach every connection and the sink for real (-> CONNECTED).",
        lambda lc, c: lc.connect(),
        needs_connections=True,
    ),
    Procedure(
        "wizard_finalize",
        "Wizard step 4: create the sink tables (-> FINALIZED, status STARTED).",
        lambda lc, c: lc.finalize(),
        needs_connections=True,
    ),
    Procedure(
        "wizard_reset",
        "Reset the wizard: stored configuration cleared, prerequisites undone (-> INSTALLED).",
        lambda lc, c: lc.reset(),
    ),
    Procedure(
        "setup",
        "The whole wizard from the project file: prerequisites, configure, connect, finalize.",
        lambda lc, c: lc.setup(confirm_prerequisites=c.confirm_prerequisites),
        SetupConfig,
        needs_connections=True,
    ),
    Procedure("pause", "Pause the pipeline (STARTED -> PAUSED): no connector ingests.", lambda lc, c: lc.pause()),
    Procedure("resume", "Resume the pipeline (PAUSED -> STARTED).", lambda lc, c: lc.resume()),
    Procedure(
        "recover",
        "Leave ERROR or a stuck STARTING/PAUSING for STARTED or PAUSED.",
        lambda lc, c: lc.recover(c.to.value),
        RecoverConfig,
    ),
    Procedure(
        "update_connection",
        "Store new settings of a connection once tested (pipeline PAUSED).",
        lambda lc, c: lc.update_connection(c.connection, setting_values(c.values)),
        UpdateConnectionConfig,
        needs_connections=True,
    ),
    Procedure(
        "update_warehouse",
        "Load through another Snowflake warehouse (pipeline PAUSED).",
        lambda lc, c: lc.update_warehouse(c.warehouse),
        UpdateWarehouseConfig,
        needs_connections=True,
    ),
    Procedure(
        "start_connector",
        "Set one connector Running (it ingests while the pipeline is STARTED).",
        lambda lc, c: lc.start_connector(c.table, c.connector),
        ConnectorConfig,
    ),
    Procedure(
        "pause_connector",
        "Set one connector Paused.",
        lambda lc, c: lc.pause_connector(c.table, c.connector),
        ConnectorConfig,
    ),
)


def lifecycle_job_name(pipeline_name: str, procedure: str) -> str:
    """``{pipeline}__{procedure}``, e.g. ``example__wizard_connect``."""
    return f"{dagster_name(pipeline_name)}__{procedure}"


def _run_procedure(
    context: dg.OpExecutionContext,
    procedure: Procedure,
    config: Any,
    pipeline_name: str,
    project: Project,
    state_dir: str | os.PathLike[str] | None,
    resource_keys: set[str],
    hooks: Mapping[str, Hook] | None,
) -> dg.Output:
    pipeline = Pipeline(project, pipeline_name, state_dir)
    try:
        clients = None
        if procedure.needs_connections:
            clients = ResourceClients(pipeline, run_resources(context, resource_keys))
        lifecycle = Lifecycle(pipeline, clients, dict(hooks or {}))
        answer = procedure.call(lifecycle, config).as_dict()
    finally:
        pipeline.close()
    code, message = answer.get("response_code"), answer.get("message", "")
    if code != "OK":
        context.log.error(f"{pipeline_name} {procedure.name}: {code}: {message}")
        raise dg.Failure(
            description=f"{code}: {message}",
            metadata={"response": dg.MetadataValue.json(answer), "response_code": code},
            allow_retries=False,
        )
    context.log.info(f"{pipeline_name} {procedure.name}: OK: {message}")
    metadata: dict[str, Any] = {"response": dg.MetadataValue.json(answer), "message": message}
    for key in ("status", "configurationStatus"):
        if isinstance(answer.get(key), str):
            metadata[key] = answer[key]
    return dg.Output(answer, metadata=metadata)


def _build_job(
    procedure: Procedure,
    pipeline_name: str,
    project: Project,
    state_dir: str | os.PathLike[str] | None,
    resource_keys: set[str],
    hooks: Mapping[str, Hook] | None,
) -> dg.JobDefinition:
    name = lifecycle_job_name(pipeline_name, procedure.name)
    keys = set(resource_keys) if procedure.needs_connections else set()
    op_args = {
        "name": f"{name}_op",  # an op may not share its job's (graph's) name
        "description": procedure.description,
        "required_resource_keys": {dagster_name(key) for key in keys},
        "out": dg.Out(dict, description="The procedure's response JSON."),
        "tags": {"connectors/pipeline": pipeline_name, "connectors/procedure": procedure.name},
    }

    def run(context: dg.OpExecutionContext, config: Any) -> dg.Output:
        return _run_procedure(context, procedure, config, pipeline_name, project, state_dir, keys, hooks)

    config_cls = procedure.config
    if config_cls is None:

        @dg.op(**op_args)
        def _op(context: dg.OpExecutionContext) -> dg.Output:
            return run(context, None)

    else:

        @dg.op(**op_args)
        def _op(context: dg.OpExecutionContext, config: config_cls) -> dg.Output:  # type: ignore[valid-type]
            return run(context, config)

    @dg.job(
        name=name,
        description=f"{procedure.description} Pipeline {pipeline_name}.",
        tags={"connectors/pipeline": pipeline_name, "connectors/procedure": procedure.name},
    )
    def _job() -> None:
        _op()

    return _job


def build_lifecycle_jobs(
    pipeline_name: str,
    project: Project,
    state_dir: str | os.PathLike[str] | None = None,
    resource_keys: set[str] | None = None,
    hooks: Mapping[str, Hook] | None = None,
) -> list[dg.JobDefinition]:
    """The lifecycle jobs of one pipeline, named ``{pipeline}__{procedure}``.

    Procedures: ``wizard_prerequisites``, ``wizard_configure``, ``wizard_connect``, ``wizard_finalize``,
    ``wizard_reset``, ``setup``, ``pause``, ``resume``, ``recover``, ``update_connection``, ``update_warehouse``,
    ``start_connector``, ``pause_connector``. Ops that reach connections require the pipeline's resources
    (``resource_keys``, default: its connection and sink keys). ``hooks`` are in-code validators/callbacks,
    winning over the project file's.
    """
    if resource_keys is None:
        resource_keys = pipeline_resource_keys(pipeline_name, project, state_dir)
    return [_build_job(p, pipeline_name, project, state_dir, resource_keys, hooks) for p in PROCEDURES]
