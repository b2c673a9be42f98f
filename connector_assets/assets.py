"""The table assets of a pipeline: one ``multi_asset`` whose materialization ingests one batch per connector."""

# No ``from __future__ import annotations``: Dagster inspects the ``context`` annotation of the asset function.

import dataclasses
import os
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg

from connector_assets.translator import ConnectorsTranslator, TableProps, dagster_name
from connector_core.ingest import IngestSession, TableReport
from connector_core.pipeline import Pipeline
from connector_core.project import Project
from resources import ResourceClients, build_pipeline_resources


def pipeline_resource_keys(pipeline_name: str, project: Project, state_dir: str | os.PathLike[str] | None) -> set[str]:
    """The resource keys a pipeline's runs need (its connections and its sink)."""
    pipeline = Pipeline(project, pipeline_name, state_dir)
    try:
        return set(build_pipeline_resources(pipeline))
    finally:
        pipeline.close()


def run_resources(context: dg.OpExecutionContext | dg.AssetExecutionContext, keys: set[str]) -> dict[str, Any]:
    """The pipeline's resources of a run, under the keys ``ResourceClients`` looks them up by.

    ``keys`` are the keys of ``build_pipeline_resources``; Dagster knows each as ``dagster_name(key)``.
    """
    return {key: getattr(context.resources, dagster_name(key)) for key in keys}


def table_asset_specs(
    pipeline_name: str, project: Project, translator: ConnectorsTranslator | None = None
) -> dict[str, dg.AssetSpec]:
    """Table name -> the translator's ``AssetSpec`` (always ``skippable``) for every table of a pipeline."""
    translator = translator or ConnectorsTranslator()
    spec = project.pipeline(pipeline_name)
    specs = {}
    for table_name, table in spec.tables.items():
        asset_spec = translator.get_asset_spec(TableProps(pipeline_name, table_name, table, spec))
        specs[table_name] = asset_spec if asset_spec.skippable else asset_spec.replace_attributes(skippable=True)
    return specs


def build_table_assets(
    pipeline_name: str,
    project: Project,
    state_dir: str | os.PathLike[str] | None = None,
    translator: ConnectorsTranslator | None = None,
    resource_keys: set[str] | None = None,
) -> dg.AssetsDefinition:
    """One subsettable ``multi_asset`` (``{pipeline}__tables``) with an asset per table of the pipeline.

    Materializing a table ingests one bounded batch from each of its *active* connectors into the sink and
    reports ``dagster/row_count``, records, bytes, seconds, throughput, parse errors and per-connector counts.
    A table with no active connector materializes nothing; the run log (and an observation on the asset) says
    why. ``resource_keys`` defaults to the pipeline's connection and sink resource keys.
    """
    specs = table_asset_specs(pipeline_name, project, translator)
    tables_by_key = {spec.key: table for table, spec in specs.items()}
    keys = resource_keys if resource_keys is not None else pipeline_resource_keys(pipeline_name, project, state_dir)

    @dg.multi_asset(
        name=f"{dagster_name(pipeline_name)}__tables",
        specs=list(specs.values()),
        can_subset=True,
        required_resource_keys={dagster_name(key) for key in keys},
        description=f"Ingest one batch from each active connector of pipeline {pipeline_name}.",
    )
    def _tables(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
        pipeline = Pipeline(project, pipeline_name, state_dir)
        try:
            clients = ResourceClients(pipeline, run_resources(context, keys))
            session = IngestSession(pipeline, clients, log=context.log.info)
            try:
                selected = [table for key, table in tables_by_key.items() if key in context.selected_asset_keys]
                for table in selected:
                    key = specs[table].key
                    started = time.perf_counter()
                    report = session.ingest_table(table)
                    seconds = time.perf_counter() - started
                    if report.skipped_reason:
                        message = f"{pipeline_name}.{table}: nothing ingested: {report.skipped_reason}"
                        context.log.warning(message)
                        yield dg.AssetObservation(
                            asset_key=key, metadata={"connectors/skipped_reason": report.skipped_reason}
                        )
                        continue
                    metadata = materialization_metadata(report, seconds)
                    metadata["connectors/stats"] = dg.MetadataValue.json(
                        {h.endpoint: pipeline.stats(h) for h in pipeline.connectors(table)}
                    )
                    context.log.info(
                        f"{pipeline_name}.{table}: {metadata['connectors/records'].value} records in {seconds:.3f}s, "
                        f"{report.row_count} rows in the table"
                    )
                    yield dg.MaterializeResult(asset_key=key, metadata=metadata)
            finally:
                session.close()
        finally:
            pipeline.close()

    return _tables


def materialization_metadata(report: TableReport, seconds: float) -> dict[str, Any]:
    """Numeric metadata of one table's batch (plotted by the UI), totals first, then per connector."""
    ran = [b for b in report.batches if b.skipped_reason is None]
    records = sum(b.records for b in ran)
    metadata: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(report.row_count),
        "connectors/records": dg.MetadataValue.int(records),
        "connectors/bytes": dg.MetadataValue.int(sum(b.bytes for b in ran)),
        "connectors/seconds": dg.MetadataValue.float(round(seconds, 6)),
        "connectors/records_per_second": dg.MetadataValue.float(round(records / seconds, 3) if seconds else 0.0),
        "connectors/parse_errors": dg.MetadataValue.int(sum(b.parse_errors for b in ran)),
        "connectors/transport_errors": dg.MetadataValue.int(sum(b.transport_errors for b in ran)),
        "connectors/connectors": dg.MetadataValue.int(len(ran)),
    }
    for batch in report.batches:
        prefix = f"connectors/{batch.endpoint}"
        if batch.skipped_reason is not None:
            metadata[f"{prefix}/skipped_reason"] = dg.MetadataValue.text(batch.skipped_reason)
            continue
        metadata[f"{prefix}/records"] = dg.MetadataValue.int(batch.records)
        metadata[f"{prefix}/bytes"] = dg.MetadataValue.int(batch.bytes)
        metadata[f"{prefix}/parse_errors"] = dg.MetadataValue.int(batch.parse_errors)
        metadata[f"{prefix}/buffered_records"] = dg.MetadataValue.int(batch.buffered_records)
        metadata[f"{prefix}/end_of_input"] = dg.MetadataValue.bool(batch.end_of_input)
    metadata["connectors/batches"] = dg.MetadataValue.json([dataclasses.asdict(b) for b in report.batches])
    return metadata
