"""The one factory of Dagster ``Definitions`` for a project file, and the code location entry point.

``workspace.yaml`` loads this module; :func:`defs` builds the definitions when Dagster asks for them (nothing
happens at import time). ``ConnectorsComponent`` calls the same :func:`build_definitions`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

import dagster as dg

from connector_assets.assets import build_table_assets
from connector_assets.jobs import build_lifecycle_jobs
from connector_assets.names import (
    connection_resource_key,
    connectors_resource_key,
    dagster_name,
    ingest_job_name,
    lifecycle_job_name,
    pipeline_tags,
    sink_resource_key,
)
from connector_assets.resource import ConnectorsResource
from connector_assets.translator import ConnectorsTranslator
from connector_core.lifecycle import Hook
from connector_core.pipeline import Pipeline
from connector_core.project import Project, ProjectFileError, load_project
from connector_core.state import StateError
from resources import PipelineResources, build_pipeline_resources
from schedules import build_backup_schedule
from sensors import build_orchestration_sensor


def load_project_for_dagster(project_file: str | os.PathLike[str] | None = None) -> Project:
    """:func:`load_project`, with a bad file turned into one ``DagsterInvalidDefinitionError`` naming the file
    and the key paths (what ``dagster dev`` and ``dagster definitions validate`` show as the headline)."""
    try:
        return load_project(project_file)
    except ProjectFileError as error:
        raise dg.DagsterInvalidDefinitionError(str(error)) from None


def _invalid(project: Project, problems: list[str]) -> dg.DagsterInvalidDefinitionError:
    lines = "".join(f"\n  - {problem}" for problem in problems)
    return dg.DagsterInvalidDefinitionError(f"Invalid project file {project.source_path}:{lines}")


def _clashes(names: Iterable[str], dagster_key: Callable[[str], str]) -> list[list[str]]:
    """Groups of names that give one Dagster name."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(dagster_key(name), []).append(name)
    return [group for group in groups.values() if len(group) > 1]


def _resource_key_problems(project: Project, pipeline_name: str) -> list[str]:
    """Connections whose resource keys clash with each other's, the sink's or the ConnectorsResource's."""
    connections = project.pipeline(pipeline_name).connections
    path = f"pipelines.{pipeline_name}.connections"
    problems = [
        f"{path}: names {', '.join(names)} give clashing Dagster resource keys ('-' becomes '_'); rename one of them"
        for names in _clashes(connections, lambda name: connection_resource_key(pipeline_name, name))
    ]
    taken = {sink_resource_key(pipeline_name), connectors_resource_key(pipeline_name)}
    problems += [
        f"{path}.{name}: its Dagster resource key {connection_resource_key(pipeline_name, name)} is taken by the "
        "pipeline's own resources; rename the connection"
        for name in connections
        if connection_resource_key(pipeline_name, name) in taken
    ]
    return problems


#: Dagster's run tag read by run monitoring: a run still unfinished that many seconds after it started is ended.
MAX_RUNTIME_TAG = "dagster/max_runtime"


def ingest_max_runtime(project: Project, pipeline_name: str) -> float:
    """Seconds after which run monitoring may end an ingest run: twice ``max_run_seconds`` plus 10 s.

    A run stops itself after ``max_run_seconds`` (plus its start-up, the batch in progress and its
    materializations), so only a run whose worker is gone (killed with the daemon's process group, a lost host)
    lasts this long. Without this tag such a run stays STARTED and the table waits for it forever (the sensor never
    requests a second run for a table with one in progress; on an instance whose run queue limits ``connectors/table``
    to one run, the one run it queues never leaves the queue); with ``run_monitoring`` enabled on the instance the
    run is marked failed and the next one starts. Ending a live run this way is safe too: a
    terminated run commits the batch in progress, and the sink's marks keep every record exactly once.
    """
    return 2 * project.pipeline(pipeline_name).max_run_seconds + 10


def build_pipeline_definitions(
    pipeline_name: str,
    project: Project,
    state_dir: str | os.PathLike[str] | None = None,
    translator: ConnectorsTranslator | None = None,
    hooks: Mapping[str, Hook] | None = None,
) -> dg.Definitions:
    """Resources, table assets, ingest job, lifecycle and backup jobs, orchestration sensor and backup schedule of
    one pipeline."""
    problems = _resource_key_problems(project, pipeline_name)
    if problems:
        raise _invalid(project, problems)
    try:
        pipeline = Pipeline(project, pipeline_name, state_dir)
    except ProjectFileError as error:  # a state_dir override (the component's) that cannot hold state
        raise dg.DagsterInvalidDefinitionError(str(error)) from None
    except StateError as error:
        raise dg.DagsterInvalidDefinitionError(f"pipeline {pipeline_name}: {error}") from None
    try:
        resources = build_pipeline_resources(pipeline)
    finally:
        pipeline.close()
    connectors = ConnectorsResource.for_pipeline(project, pipeline_name, state_dir, resources)
    assets = build_table_assets(pipeline_name, project, translator)
    ingest_job = dg.define_asset_job(
        ingest_job_name(pipeline_name),
        selection=dg.AssetSelection.assets(assets),
        description=f"Stream the active connectors of the selected tables of pipeline {pipeline_name} into the sink "
        "until they are paused or finished, the run is terminated or max_run_seconds passed.",
        tags={**pipeline_tags(pipeline_name), MAX_RUNTIME_TAG: f"{ingest_max_runtime(project, pipeline_name):g}"},
    )
    lifecycle_jobs = build_lifecycle_jobs(pipeline_name, project, state_dir, hooks)
    (backup_job,) = [job for job in lifecycle_jobs if job.name == lifecycle_job_name(pipeline_name, "backup")]
    return dg.Definitions(
        assets=[assets],
        jobs=[ingest_job, *lifecycle_jobs],
        schedules=[build_backup_schedule(pipeline_name, backup_job)],
        sensors=[build_orchestration_sensor(pipeline_name, project, state_dir, assets, ingest_job)],
        resources={connectors_resource_key(pipeline_name): connectors, **resources_by_key(pipeline_name, resources)},
    )


def build_definitions(
    project_file: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    translator: ConnectorsTranslator | None = None,
    hooks: Mapping[str, Mapping[str, Hook]] | None = None,
) -> dg.Definitions:
    """Dagster definitions for every pipeline of a project file.

    The file is ``project_file``, else ``$CONNECTORS_PROJECT_FILE``, else ``./connectors.yaml``; ``state_dir``
    overrides the file's (relative paths are relative to the project file). Per pipeline: one resource per
    connection plus the sink (``{pipeline}__{connection}``, ``{pipeline}__sink``) and the execution resource
    ``{pipeline}__connectors`` nesting them, the table assets (``{pipeline}__tables``), the asset job
    ``{pipeline}__ingest``, the lifecycle jobs (``{pipeline}__{procedure}``, ``{pipeline}__backup`` and
    ``{pipeline}__restore`` among them), the sensor ``{pipeline}__orchestration`` and the schedule
    ``{pipeline}__backups`` (hourly, running). ``hooks`` maps a pipeline to in-code lifecycle hooks. A bad project file
    raises one ``DagsterInvalidDefinitionError`` naming the file and the key paths.
    """
    project = load_project_for_dagster(project_file)
    clashes = _clashes(project.pipelines, dagster_name)
    if clashes:
        problems = "; ".join(" and ".join(f"pipelines.{n}" for n in names) for names in clashes)
        raise _invalid(
            project,
            [f"{problems}: these pipeline names give the same Dagster names ('-' becomes '_'); rename one of them"],
        )
    return dg.Definitions.merge(
        *(
            build_pipeline_definitions(name, project, state_dir, translator, (hooks or {}).get(name))
            for name in project.pipelines
        )
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The code location of ``workspace.yaml``: the project file from ``$CONNECTORS_PROJECT_FILE`` or
    ``./connectors.yaml``."""
    return build_definitions()


def resources_by_key(pipeline_name: str, resources: PipelineResources) -> dict[str, dg.ConfigurableResource]:
    """A pipeline's connection and sink resources under their Dagster keys, ``{p}__{connection}`` and ``{p}__sink``."""
    keyed = {connection_resource_key(pipeline_name, name): r for name, r in resources.connections.items()}
    if resources.sink is not None:
        keyed[sink_resource_key(pipeline_name)] = resources.sink
    return keyed


__all__ = ["build_definitions", "build_pipeline_definitions", "defs", "ingest_job_name", "load_project_for_dagster"]
