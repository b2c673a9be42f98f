"""The table assets of a pipeline: ``@connector_assets`` (the shape of ``@dlt_assets`` / ``@sling_assets``) and the
default asset body built with it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import dagster as dg

from connector_assets.checks import table_check_specs
from connector_assets.names import connectors_resource_key, tables_asset_name
from connector_assets.resource import ConnectorsResource, with_signature
from connector_assets.translator import ConnectorsTranslator, build_connector_asset_specs
from connector_core.project import Project


def connector_assets(
    *,
    project: Project,
    pipeline_name: str,
    translator: ConnectorsTranslator | None = None,
    name: str | None = None,
    group_name: str | None = None,
    description: str | None = None,
    op_tags: Mapping[str, Any] | None = None,
    pool: str | None = None,
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """The tables of one pipeline as one subsettable ``multi_asset`` around your own asset body.

    One asset per table, its spec from ``translator`` (default :class:`ConnectorsTranslator`); ``name`` defaults
    to ``{pipeline}__tables``, ``group_name`` replaces the translator's groups. Each table has the asset checks
    ``hourly_volume``, ``parse_error_rate`` and ``backup_age`` (:mod:`connector_assets.checks`, WARN), which
    :meth:`ConnectorsResource.ingest` evaluates after the table's result. The body gets the pipeline's
    :class:`ConnectorsResource` under the key you bind it to:

    .. code-block:: python

        project = load_project("connectors.yaml")

        @connector_assets(project=project, pipeline_name="example")
        def example_tables(context: dg.AssetExecutionContext, connectors: ConnectorsResource):
            yield from connectors.ingest(context)

        defs = dg.Definitions(
            assets=[example_tables],
            resources={"connectors": ConnectorsResource.for_pipeline(project, "example")},
        )
    """
    specs = build_connector_asset_specs(project, pipeline_name, translator)
    if group_name is not None:
        specs = [spec.replace_attributes(group_name=group_name) for spec in specs]
    return dg.multi_asset(
        name=name or tables_asset_name(pipeline_name),
        specs=specs,
        check_specs=table_check_specs(spec.key for spec in specs),
        can_subset=True,
        description=description or f"Stream the active connectors of pipeline {pipeline_name} into their tables.",
        op_tags=op_tags,
        pool=pool,
    )


def build_table_assets(
    pipeline_name: str, project: Project, translator: ConnectorsTranslator | None = None
) -> dg.AssetsDefinition:
    """``@connector_assets`` with the default body: ``{pipeline}__tables``, an asset per table of the pipeline.

    Materializing a table streams its *active* connectors into the sink, batch after batch, until they are paused
    or finished, the run is terminated or ``max_run_seconds`` passed (see :meth:`ConnectorsResource.ingest`); the body needs the pipeline's resource under ``{pipeline}__connectors``.
    """
    resource_key = connectors_resource_key(pipeline_name)

    def ingest_tables(context: dg.AssetExecutionContext, **resources: ConnectorsResource) -> Iterator[Any]:
        yield from resources[resource_key].ingest(context)

    body = with_signature(ingest_tables, context=dg.AssetExecutionContext, **{resource_key: ConnectorsResource})
    return connector_assets(project=project, pipeline_name=pipeline_name, translator=translator)(body)
