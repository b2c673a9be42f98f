"""The metadata of a table's materialization, shared by Dagster runs (``ConnectorsResource.ingest``) and the
command line (``connectors run`` records into the Dagster instance, :mod:`connector_cli.history`), so both write
the same keys: Dagster's standard table metadata (``dagster/row_count``, ``dagster/table_name``,
``dagster/column_schema``), the run's totals (``connectors/records``, ``connectors/bytes``, ``connectors/seconds``,
``connectors/records_per_second``, errors, per-connector counts), ``connectors/commits``,
``connectors/stopped_reason``, ``connectors/stats`` and, after a failed backup check, ``connectors/backup_warning``.

This module imports Dagster and the core only (no resource, no definitions), so the command line imports it cheaply.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import dagster as dg
import pyarrow as pa

from connector_assets.names import BACKUP_WARNING_KEY
from connector_core.ingest import TableReport
from connector_core.pipeline import Pipeline

__all__ = ["materialization_metadata", "table_materialization_metadata", "table_metadata"]


def table_metadata(spec: dg.AssetSpec, row_count: int, sink_schema: pa.Schema | None) -> dict[str, Any]:
    """Dagster's standard table metadata of a materialization: ``dagster/row_count``, and the spec's
    ``dagster/table_name`` and ``dagster/column_schema`` (else the sink table's columns, with Arrow types)."""
    metadata: dict[str, Any] = {"dagster/row_count": dg.MetadataValue.int(row_count)}
    for key in ("dagster/table_name", "dagster/column_schema"):
        if key in spec.metadata:
            metadata[key] = spec.metadata[key]
    if "dagster/column_schema" not in metadata and sink_schema is not None:
        columns = [dg.TableColumn(name=field.name, type=str(field.type)) for field in sink_schema]
        metadata["dagster/column_schema"] = dg.TableSchema(columns=columns)
    return metadata


def materialization_metadata(report: TableReport) -> dict[str, Any]:
    """Numeric metadata of one table's batch (plotted by the UI), totals first, then per connector."""
    ran = [b for b in report.batches if b.skipped_reason is None]
    records = sum(b.records for b in ran)
    seconds = report.seconds
    metadata: dict[str, Any] = {
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


def table_materialization_metadata(
    pipeline: Pipeline,
    report: TableReport,
    spec: dg.AssetSpec,
    sink_schema: pa.Schema | None,
    *,
    commits: int,
    stopped_reason: str,
    backup_warning: str | None = None,
) -> dict[str, Any]:
    """The whole metadata of one table's materialization at the end of a run (Dagster's or ``connectors run``'s):
    standard table metadata, the run's totals, every connector's stats, its commits and why it stopped.
    ``sink_schema`` is read from the sink only when the spec declares no ``dagster/column_schema``."""
    stats = {handle.endpoint: pipeline.stats(handle) for handle in pipeline.connectors(report.table)}
    return {
        **table_metadata(spec, report.row_count, sink_schema),
        **materialization_metadata(report),
        "connectors/stats": dg.MetadataValue.json(stats),
        **({BACKUP_WARNING_KEY: dg.MetadataValue.text(backup_warning)} if backup_warning else {}),
        "connectors/commits": dg.MetadataValue.int(commits),
        "connectors/stopped_reason": dg.MetadataValue.text(stopped_reason),
    }
