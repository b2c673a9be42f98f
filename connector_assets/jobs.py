"""Lifecycle jobs: one single-op job per procedure and pipeline, with a typed ``Config`` (a Launchpad form).

Every op runs its procedure through ``connector_core.lifecycle.run_procedure``, as the CLI does. An OK response
is the op's output (logged and attached as output metadata); any other response, ``INTERNAL_ERROR`` for a state
database that cannot be opened included, fails the op with ``dg.Failure`` carrying the response as JSON metadata,
without retries.

Run config: the classes below (``PrerequisitesConfig`` ... ``RestoreConfig``) are the generic forms, usable from
Python (``dg.RunConfig(ops={op: ConnectorConfig(connector="price.live")})``). Each op takes its pipeline's version,
built by :func:`pipeline_configs` from the project file: the names a user picks become Python enums, which the
Launchpad offers as choices and Dagster checks before a run starts; a connector is one choice of ``table.connector``
endpoints (one field rather than a table and a connector, so only connectors that exist are offered), a connection
one of the pipeline's connections, a prerequisite one of its ids. Every field has a default wherever one exists
(the only connector or connection, flags off, ``recover`` to PAUSED), so a job that needs no input launches with
an empty config.

The backup jobs call the same functions as ``connectors backup`` / ``connectors restore``
(``Lifecycle.backup``, ``Lifecycle.restore``): ``{p}__backup`` (what
the schedule ``{p}__backups`` launches) attaches its report per database as a table; a failed upload fails it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import dagster as dg
from pydantic import Field, create_model

from connector_assets.names import (
    connectors_resource_key,
    dagster_name,
    lifecycle_job_name,
    lifecycle_op_name,
    pipeline_tags,
)
from connector_assets.resource import ConnectorsResource, with_signature
from connector_core.lifecycle import Hook, Lifecycle, Response, RestoreSource, run_procedure
from connector_core.lifecycle.updates import CONNECTION_FIELDS
from connector_core.lifecycle.wizard import SINK_FIELDS
from connector_core.pipeline import Pipeline
from connector_core.project import PipelineSpec, Project, parse_setting_value
from connector_core.vocabulary import RECOVER_TARGETS, Status

#: How a user types a secret into a Launchpad form (the one secret rule, ``connector_core/secrets.py``).
SECRETS_HINT = "secrets only as env:NAME (the name of the environment variable holding it)"


class PrerequisitesConfig(dg.Config):
    """Mark prerequisites of the wizard's checklist done, and/or complete the step."""

    done: list[str] = Field(default=[], description="The prerequisites you have met (their ids), to mark done.")
    all: bool = Field(default=False, description="Mark every prerequisite done.")
    complete: bool = Field(
        default=False,
        description="Also complete the step (INSTALLED -> PREREQUISITES_DONE); refused while a prerequisite is open.",
    )


class ConfigureConfig(dg.Config):
    """Sink settings stored by the wizard on top of the project file's."""

    values: dict[str, str] = Field(
        default={},
        description="Sink settings to store, on top of the project file's (empty: keep the project file's).",
    )


class SetupConfig(dg.Config):
    """Run the whole wizard from the project file."""

    confirm_prerequisites: bool = Field(
        default=False,
        description="Mark every prerequisite done (you confirm they are met); else an open one stops the setup.",
    )


#: The statuses ``recover`` may move a pipeline to (``connector_core.vocabulary.RECOVER_TARGETS``), as the
#: Launchpad's choices.
RecoverTarget = StrEnum("RecoverTarget", {status.name: status.value for status in RECOVER_TARGETS})


class RecoverConfig(dg.Config):
    """Leave ERROR (or a stuck STARTING/PAUSING) for the status you name."""

    to: RecoverTarget = Field(  # type: ignore[valid-type]
        default=RecoverTarget[Status.PAUSED.name],
        description="The status to recover to: PAUSED (nothing ingests until you resume it) or STARTED.",
    )


class UpdateConnectionConfig(dg.Config):
    """New settings of one connection (the pipeline must be PAUSED); they are tested before being stored."""

    connection: str = Field(description="The connection to update (its name in the project file).")
    values: dict[str, str] = Field(
        description=f"Settings to change, e.g. dsn: env:NEW_DSN; true/false and numbers are parsed; {SECRETS_HINT}."
    )


class UpdateWarehouseConfig(dg.Config):
    """The Snowflake warehouse the sink loads through (the pipeline must be PAUSED)."""

    warehouse: str = Field(description="Name of the Snowflake warehouse to load through from now on.")


class ConnectorConfig(dg.Config):
    """One connector of the pipeline, named by its endpoint ``table.connector``: one choice among the connectors
    that exist (the Launchpad's list), rather than a table and a connector name that may not go together."""

    connector: str = Field(description="The connector, as table.connector (e.g. price.live).")


class BackupConfig(dg.Config):
    """Back up the pipeline's state databases by the 24-hour rule (what the schedule runs hourly)."""

    force: bool = Field(
        default=False,
        description="Upload every state database, however fresh its backup (else only those older than max_age_hours).",
    )


class RestoreConfig(ConnectorConfig):
    """Restore one Paused connector from the backup of another pipeline's connector, onto its own ids."""

    from_pipeline: str = Field(description="The old pipeline's id (its backups are under .../datahub/{id}/).")
    from_connector: str = Field(description="The old connector's id (.../connector/{id}/).")
    from_org: str | None = Field(default=None, description="The old org_slug; empty: this pipeline's own.")
    force: bool = Field(
        default=False, description="Replace the sink mark the connector already has of its own (else refused)."
    )


def choices(name: str, values: Iterable[str]) -> type[StrEnum] | None:
    """An enum of ``values``, each member named by its value (the Launchpad offers the names), or ``None`` when
    there is none or one cannot name a member (``_x_``, ``mro``): the field then stays free text.

    Its name is ``name`` and a digest of the values: Dagster memoizes config shapes process-wide by their fields'
    type names, so an enum of the same name with other values (the pipeline rebuilt after an edit of the project
    file) would get the first one's choices.
    """
    values = list(values)
    if not values:
        return None
    digest = hashlib.sha1("\n".join(values).encode()).hexdigest()[:8]
    try:
        return StrEnum(f"{name}_{digest}", {value: value for value in values})  # type: ignore[return-value]
    except (ValueError, TypeError):
        return None


def choice(enum: type[StrEnum] | None, description: str) -> tuple[Any, Any] | None:
    """A field choosing one member of ``enum``, defaulting to it when it is the only one (``None``: no enum)."""
    if enum is None:
        return None
    members = list(enum)
    return enum, Field(members[0] if len(members) == 1 else ..., description=description)


def pipeline_configs(pipeline_name: str, spec: PipelineSpec) -> dict[type[dg.Config], type[dg.Config]]:
    """Each generic config class -> its version for one pipeline: enums ``{p}_Connector_*`` (``table.connector``
    endpoints), ``{p}_Connection_*`` and ``{p}_Prerequisite_*`` from ``spec``, and descriptions naming what the
    pipeline's sink and connections take. A class with nothing to narrow stays generic."""
    prefix = dagster_name(pipeline_name)
    connectors = choices(f"{prefix}_Connector", (f"{table}.{c.name}" for table, c in spec.iter_connectors()))
    connections = choices(f"{prefix}_Connection", spec.connections)
    prerequisites = choices(f"{prefix}_Prerequisite", (p.id for p in spec.prerequisites))

    def narrowed(base: type[dg.Config], **fields: tuple[Any, Any] | None) -> type[dg.Config]:
        given = {name: field for name, field in fields.items() if field is not None}
        if not given:
            return base
        return create_model(  # type: ignore[call-overload, no-any-return]
            f"{prefix}_{base.__name__}", __base__=base, __module__=__name__, __doc__=base.__doc__, **given
        )

    sink = spec.sink.kind
    takes = "; ".join(f"{name} ({c.kind}) takes {_connection_fields(c.kind)}" for name, c in spec.connections.items())
    done = f"The prerequisites you have met, to mark done: {', '.join(p.id for p in spec.prerequisites)}."
    no_connection = (str, Field(description="This pipeline has no connections: there is nothing to update."))
    return {
        PrerequisitesConfig: narrowed(
            PrerequisitesConfig,
            done=(list[prerequisites], Field(default=[], description=done)) if prerequisites else None,
        ),
        ConfigureConfig: narrowed(
            ConfigureConfig,
            values=(
                dict[str, str],
                Field(
                    default={},
                    description=f"Sink settings to store on top of the project file's; a {sink} sink takes "
                    f"{', '.join(SINK_FIELDS[sink])}. Empty: keep the project file's.",
                ),
            ),
        ),
        UpdateConnectionConfig: narrowed(
            UpdateConnectionConfig,
            connection=choice(connections, "The connection to update.") if spec.connections else no_connection,
            values=(
                dict[str, str],
                Field(
                    description=f"Settings to change: {takes or 'none'}. True/false and numbers are parsed; "
                    f"{SECRETS_HINT}."
                ),
            ),
        ),
        UpdateWarehouseConfig: narrowed(
            UpdateWarehouseConfig,
            warehouse=None
            if sink == "snowflake"
            else (str, Field(description=f"This pipeline's sink is {sink}: it has no warehouse to change.")),
        ),
        ConnectorConfig: narrowed(ConnectorConfig, connector=choice(connectors, "The connector, as table.connector.")),
        RestoreConfig: narrowed(
            RestoreConfig, connector=choice(connectors, "The Paused connector to restore, as table.connector.")
        ),
    }


def _connection_fields(kind: str) -> str:
    """What ``update_connection`` takes for a connection kind, in words."""
    return "librdkafka settings (dotted names)" if kind == "kafka" else ", ".join(CONNECTION_FIELDS[kind])


def endpoint(connector: str) -> tuple[str, str]:
    """``table.connector`` -> ``(table, connector)``."""
    table, _, name = str(connector).partition(".")
    return table, name


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
    #: The generic config class; the op takes its pipeline's version (:func:`pipeline_configs`).
    config: type[dg.Config] | None = None
    #: Whether the op reaches the pipeline's connections (then it takes its ``ConnectorsResource``), or a function
    #: of the pipeline's spec deciding it (the backup job needs them only for an S3 store).
    needs_connections: bool | Callable[[PipelineSpec], bool] = False
    #: More metadata of the op's output (or failure), from the response JSON.
    metadata: Callable[[dict[str, Any]], dict[str, Any]] | None = None


#: The columns of the backup job's table of databases (``connectors/backups``).
BACKUP_COLUMNS = {
    "database": "string",
    "key": "string",
    "uploaded": "bool",
    "reason": "string",
    "bytes": "int",
    "sha256": "string",
    "age_hours": "float",
    "error": "string",
}


def backup_metadata(answer: dict[str, Any]) -> dict[str, Any]:
    """A backup report as metadata: one table row per database, and the counts of uploaded and failed ones."""
    databases = answer.get("databases") or []
    records = [dg.TableRecord({name: d.get(name) for name in BACKUP_COLUMNS}) for d in databases]
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in BACKUP_COLUMNS.items()])
    return {
        "connectors/backups": dg.MetadataValue.table(records, schema),
        "connectors/uploaded": dg.MetadataValue.int(sum(1 for d in databases if d.get("uploaded"))),
        "connectors/failed": dg.MetadataValue.int(sum(1 for d in databases if d.get("error"))),
        "connectors/store": dg.MetadataValue.text(str(answer.get("store", ""))),
    }


PROCEDURES: tuple[Procedure, ...] = (
    Procedure(
        "wizard_prerequisites",
        "Wizard step 1: mark prerequisites done and complete the checklist.",
        lambda lc, c: lc.prerequisites(done=[str(d) for d in c.done], all_done=c.all, complete=c.complete),
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
        lambda lc, c: lc.recover(Status(c.to)),
        RecoverConfig,
    ),
    Procedure(
        "update_connection",
        "Store new settings of a connection once tested (pipeline PAUSED).",
        lambda lc, c: lc.update_connection(str(c.connection), setting_values(c.values)),
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
        lambda lc, c: lc.start_connector(*endpoint(c.connector)),
        ConnectorConfig,
    ),
    Procedure(
        "pause_connector",
        "Set one connector Paused.",
        lambda lc, c: lc.pause_connector(*endpoint(c.connector)),
        ConnectorConfig,
    ),
    Procedure(
        "backup",
        "Back up every state database whose backup is missing or older than max_age_hours (force: all).",
        lambda lc, c: lc.backup(c.force),
        BackupConfig,
        needs_connections=lambda spec: spec.backup.bucket is not None,  # a folder store needs no connection
        metadata=backup_metadata,
    ),
    Procedure(
        "restore",
        "Restore a Paused connector from another pipeline's connector backup onto its own ids (sink mark moved).",
        lambda lc, c: lc.restore(
            *endpoint(c.connector), RestoreSource(c.from_pipeline, c.from_connector, c.from_org or None), c.force
        ),
        RestoreConfig,
        needs_connections=True,
    ),
)


def _run_procedure(
    context: dg.OpExecutionContext,
    procedure: Procedure,
    config: Any,
    pipeline_name: str,
    project: Project,
    state_dir: str | os.PathLike[str] | None,
    hooks: Mapping[str, Hook] | None,
    connectors: ConnectorsResource | None,
) -> dg.Output:
    """Run one procedure through ``connector_core.lifecycle.run_procedure``: an OK response is the op's output,
    any other (a state database that cannot be opened included) fails the op with it as metadata."""

    def call(pipeline: Pipeline) -> Response:
        clients = connectors.clients(pipeline) if connectors is not None else None
        return procedure.call(Lifecycle(pipeline, clients, dict(hooks or {})), config)

    response = run_procedure(project, pipeline_name, call, state_dir)
    answer = response.as_dict()
    code, message = answer["response_code"], answer["message"]
    more = procedure.metadata(answer) if procedure.metadata is not None else {}
    if not response.ok:
        context.log.error(f"{pipeline_name} {procedure.name}: {code}: {message}")
        raise dg.Failure(
            description=f"{code}: {message}",
            metadata={"response": dg.MetadataValue.json(answer), "response_code": code, **more},
            allow_retries=False,
        )
    context.log.info(f"{pipeline_name} {procedure.name}: {code}: {message}")
    metadata: dict[str, Any] = {"response": dg.MetadataValue.json(answer), "message": message, **more}
    for key in ("status", "configurationStatus"):
        if isinstance(answer.get(key), str):
            metadata[key] = answer[key]
    return dg.Output(answer, metadata=metadata)


def _build_job(
    procedure: Procedure,
    pipeline_name: str,
    project: Project,
    state_dir: str | os.PathLike[str] | None,
    hooks: Mapping[str, Hook] | None,
    configs: Mapping[type[dg.Config], type[dg.Config]],
) -> dg.JobDefinition:
    resource_key = connectors_resource_key(pipeline_name)
    tags = pipeline_tags(pipeline_name, procedure=procedure.name)

    def run(context: dg.OpExecutionContext, config: Any = None, **resources: ConnectorsResource) -> dg.Output:
        connectors = resources.get(resource_key)
        return _run_procedure(context, procedure, config, pipeline_name, project, state_dir, hooks, connectors)

    parameters: dict[str, Any] = {"context": dg.OpExecutionContext}
    if procedure.config is not None:
        parameters["config"] = configs.get(procedure.config, procedure.config)
    needs = procedure.needs_connections
    if needs(project.pipeline(pipeline_name)) if callable(needs) else needs:
        parameters[resource_key] = ConnectorsResource
    op = dg.op(
        name=lifecycle_op_name(pipeline_name, procedure.name),
        description=procedure.description,
        out=dg.Out(dict, description="The procedure's response JSON."),
        tags=tags,
    )(with_signature(run, **parameters))

    @dg.job(
        name=lifecycle_job_name(pipeline_name, procedure.name),
        description=f"{procedure.description} Pipeline {pipeline_name}.",
        tags=tags,
    )
    def _job() -> None:
        op()

    return _job


def build_lifecycle_jobs(
    pipeline_name: str,
    project: Project,
    state_dir: str | os.PathLike[str] | None = None,
    hooks: Mapping[str, Hook] | None = None,
) -> list[dg.JobDefinition]:
    """The lifecycle jobs of one pipeline, named ``{pipeline}__{procedure}``.

    Procedures: ``wizard_prerequisites``, ``wizard_configure``, ``wizard_connect``, ``wizard_finalize``,
    ``wizard_reset``, ``setup``, ``pause``, ``resume``, ``recover``, ``update_connection``, ``update_warehouse``,
    ``start_connector``, ``pause_connector``, ``backup``, ``restore``. Ops that reach connections take the pipeline's
    :class:`ConnectorsResource` (key ``{pipeline}__connectors``). Each op's config is its pipeline's version of
    the procedure's config class (:func:`pipeline_configs`). ``hooks`` are in-code validators/callbacks, winning
    over the project file's.
    """
    configs = pipeline_configs(pipeline_name, project.pipeline(pipeline_name))
    return [_build_job(p, pipeline_name, project, state_dir, hooks, configs) for p in PROCEDURES]
