"""The one factory of Dagster ``Definitions`` for a project file, and the code location entry point.

``workspace.yaml`` loads this module; :func:`defs` builds the definitions when Dagster asks for them (nothing
happens at import time). ``ConnectorsComponent`` calls the same :func:`build_definitions`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from connector_assets.assets import build_table_assets, table_asset_specs
from connector_assets.jobs import build_lifecycle_jobs
from connector_assets.translator import ConnectorsTranslator, dagster_name
from connector_core.lifecycle import Hook
from connector_core.pipeline import Pipeline
from connector_core.project import Project, ProjectFileError, load_project
from connector_core.state import StateError
from resources import build_pipeline_resources
from sensors import build_orchestration_sensor


def ingest_job_name(pipeline_name: str) -> str:
    """``{pipeline}__ingest``: the asset job over every table of a pipeline (the sensor's target)."""
    return f"{dagster_name(pipeline_name)}__ingest"


def load_project_for_dagster(project_file: str | os.PathLike[str] | None = None) -> Project:
    """:func:`load_project`, with a bad file turned into one ``DagsterInvalidDefinitionError`` naming the file
    and the key paths (what ``dagster dev`` and ``dagster definitions validate`` show as the headline)."""
    try:
        return load_project(project_file)
    except ProjectFileError as error:
        raise dg.DagsterInvalidDefinitionError(str(error)) from None


def build_pipeline_definitions(
    pipeline_name: str,
    project: Project,
    state_dir: str | os.PathLike[str] | None = None,
    translator: ConnectorsTranslator | None = None,
    hooks: Mapping[str, Hook] | None = None,
) -> dg.Definitions:
    """Resources, table assets, ingest job, lifecycle jobs and orchestration sensor of one pipeline."""
    try:
        pipeline = Pipeline(project, pipeline_name, state_dir)
    except StateError as error:
        raise dg.DagsterInvalidDefinitionError(f"pipeline {pipeline_name}: {error}") from None
    try:
        resources = build_pipeline_resources(pipeline)
    finally:
        pipeline.close()
    keys = set(resources)
    dagster_resources = {dagster_name(key): resource for key, resource in resources.items()}
    if len(dagster_resources) != len(resources):
        raise dg.DagsterInvalidDefinitionError(
            f"Invalid project file {project.source_path}:\n  - pipelines.{pipeline_name}.connections: "
            f"names {', '.join(sorted(resources))} give clashing Dagster resource keys ('-' becomes '_'); "
            "rename one of them"
        )
    assets = build_table_assets(pipeline_name, project, state_dir, translator, resource_keys=keys)
    ingest_job = dg.define_asset_job(
        ingest_job_name(pipeline_name),
        selection=dg.AssetSelection.assets(assets),
        description=f"Ingest one batch from each active connector of every table of pipeline {pipeline_name}.",
        tags={"connectors/pipeline": pipeline_name},
    )
    asset_keys = {table: spec.key for table, spec in table_asset_specs(pipeline_name, project, translator).items()}
    sensor = build_orchestration_sensor(pipeline_name, project, state_dir, ingest_job, asset_keys=asset_keys)
    return dg.Definitions(
        assets=[assets],
        jobs=[ingest_job, *build_lifecycle_jobs(pipeline_name, project, state_dir, keys, hooks)],
        sensors=[sensor],
        resources=dagster_resources,
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
    connection plus the sink (``{pipeline}__{connection}``, ``{pipeline}__sink``), the table assets
    (``{pipeline}__tables``), the asset job ``{pipeline}__ingest``, the lifecycle jobs
    (``{pipeline}__{procedure}``) and the sensor ``{pipeline}__orchestration``. ``hooks`` maps a pipeline to
    in-code lifecycle hooks. A bad project file raises one ``DagsterInvalidDefinitionError`` naming the file
    and the key paths.
    """
    project = load_project_for_dagster(project_file)
    by_dagster_name: dict[str, list[str]] = {}
    for name in project.pipelines:
        by_dagster_name.setdefault(dagster_name(name), []).append(name)
    clashes = [names for names in by_dagster_name.values() if len(names) > 1]
    if clashes:
        problems = "; ".join(" and ".join(f"pipelines.{n}" for n in names) for names in clashes)
        raise dg.DagsterInvalidDefinitionError(
            f"Invalid project file {project.source_path}:\n  - {problems}: these pipeline names give the same "
            "Dagster names ('-' becomes '_'); rename one of them"
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


__all__ = ["build_definitions", "build_pipeline_definitions", "defs", "ingest_job_name"]
