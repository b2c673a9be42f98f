"""The metadata of a table's materialization and its hourly observations, shared by Dagster runs
(``ConnectorsResource.ingest``) and the command line (``connectors run`` records into the Dagster instance,
:mod:`connector_cli.history`), so both write the same keys.

A materialization holds few numeric series (each one a plot in the UI): Dagster's ``dagster/row_count``, and
``connectors/records``, ``connectors/records_per_second``, ``connectors/parse_errors``,
``connectors/buffered_records`` (what the table's connectors have read but not yet committed: their lag) and
``connectors/commits``; beside them Dagster's ``dagster/table_name`` and ``dagster/column_schema``, one table value
``connectors/connectors`` with a row per connector of the table (:data:`CONNECTOR_COLUMNS`), ``connectors/stats``
(each connector's stats JSON), ``connectors/stopped_reason`` and, after a failed backup check,
``connectors/backup_warning``.

Each completed UTC hour of a table's statistics becomes one ``AssetObservation`` (:class:`HourlyObservations`):
``connectors/hour`` and the hour's ``connectors/hourly_records``, ``connectors/hourly_bytes``,
``connectors/hourly_parse_errors`` and ``connectors/hourly_transport_errors``.

This module imports Dagster and the core only (no resource, no definitions), so the command line imports it cheaply.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import dagster as dg
import pyarrow as pa

from connector_assets.names import BACKUP_WARNING_KEY
from connector_core.ingest import BatchReport, TableReport
from connector_core.pipeline import ConnectorHandle, Pipeline

__all__ = [
    "CONNECTOR_COLUMNS",
    "HOUR_KEY",
    "HourlyObservations",
    "connectors_table",
    "hourly_observation",
    "materialization_metadata",
    "table_materialization_metadata",
    "table_metadata",
]

#: The columns of a materialization's ``connectors/connectors`` table: this run's figures of each connector
#: (records, bytes, errors), its state afterwards (status, buffered records, end of input, total records) and the
#: error or skip reason of its last batch.
CONNECTOR_COLUMNS = {
    "connector": "string",
    "status": "string",
    "records": "int",
    "bytes": "int",
    "parse_errors": "int",
    "transport_errors": "int",
    "buffered_records": "int",
    "end_of_input": "bool",
    "total_records": "int",
    "note": "string",
}
#: The metadata key of an hourly observation that holds its hour (ISO text, e.g. ``2026-11-23T19:00:00+00:00``).
HOUR_KEY = "connectors/hour"
#: The counters of ``hourly_stats``, each ``connectors/hourly_<name>`` in an hourly observation.
HOURLY_COUNTERS = ("records", "bytes", "parse_errors", "transport_errors")
#: The columns of an hourly observation's ``connectors/hourly_connectors`` table.
HOURLY_COLUMNS = {"connector": "string", **{name: "int" for name in HOURLY_COUNTERS}}
#: Completed hours looked back at: an hour older than this that the instance never observed stays unobserved.
HOURLY_LOOKBACK_HOURS = 24
#: Observations read per page while looking for a table's latest hourly observation.
OBSERVATION_PAGE = 200


def now() -> dt.datetime:
    """The current UTC time (the hourly observations' clock; tests replace it)."""
    return dt.datetime.now(dt.UTC)


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


def _schema(columns: Mapping[str, str]) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns.items()])


def _status(handle: ConnectorHandle) -> str:
    """``fatal error``, ``finished``, ``paused`` or ``running``."""
    metrics = handle.state.metrics()
    if metrics.fatal_error:
        return "fatal error"
    if metrics.finished:
        return "finished"
    return "running" if handle.state.running else "paused"


def connectors_table(handles: list[ConnectorHandle], report: TableReport) -> dg.TableMetadataValue:
    """One row per connector of the table (:data:`CONNECTOR_COLUMNS`), those the run did not read too (0 records)."""
    batches: dict[str, BatchReport] = {batch.endpoint: batch for batch in report.batches}
    records = []
    for handle in handles:
        batch = batches.get(handle.endpoint) or BatchReport(handle.endpoint, handle.connector_id or "")
        metrics = handle.state.metrics()
        note = batch.skipped_reason or batch.fatal_error or batch.error or metrics.fatal_error or ""
        row = {
            "connector": handle.endpoint,
            "status": _status(handle),
            "records": batch.records,
            "bytes": batch.bytes,
            "parse_errors": batch.parse_errors,
            "transport_errors": batch.transport_errors,
            "buffered_records": metrics.buffered_records,
            "end_of_input": metrics.end_of_input,
            "total_records": metrics.total_records,
            "note": note,
        }
        records.append(dg.TableRecord(row))
    return dg.MetadataValue.table(records, _schema(CONNECTOR_COLUMNS))


def materialization_metadata(report: TableReport, handles: list[ConnectorHandle]) -> dict[str, Any]:
    """The run's few numeric series of one table (records, records/s, parse errors, buffered records of its
    connectors ``handles``), and the per-connector figures as one table value (``connectors/connectors``)."""
    ran = [b for b in report.batches if b.skipped_reason is None]
    records = sum(b.records for b in ran)
    seconds = report.seconds
    return {
        "connectors/records": dg.MetadataValue.int(records),
        "connectors/records_per_second": dg.MetadataValue.float(round(records / seconds, 3) if seconds else 0.0),
        "connectors/parse_errors": dg.MetadataValue.int(sum(b.parse_errors for b in ran)),
        "connectors/buffered_records": dg.MetadataValue.int(sum(h.state.metrics().buffered_records for h in handles)),
        "connectors/connectors": connectors_table(handles, report),
    }


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
    standard table metadata, the run's series, the per-connector table, every connector's stats, the run's commits
    and why it stopped. ``sink_schema`` is read from the sink only when the spec declares no
    ``dagster/column_schema``."""
    handles = pipeline.connectors(report.table)
    stats = {handle.endpoint: pipeline.stats(handle) for handle in handles}
    return {
        **table_metadata(spec, report.row_count, sink_schema),
        **materialization_metadata(report, handles),
        "connectors/commits": dg.MetadataValue.int(commits),
        "connectors/stats": dg.MetadataValue.json(stats),
        **({BACKUP_WARNING_KEY: dg.MetadataValue.text(backup_warning)} if backup_warning else {}),
        "connectors/stopped_reason": dg.MetadataValue.text(stopped_reason),
    }


def _hour(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


def hourly_observation(
    key: dg.AssetKey, hour: dt.datetime, rows: list[dict[str, Any]], extra: Mapping[str, Any] | None = None
) -> dg.AssetObservation:
    """The observation of one hour of a table: its connectors' ``hourly_stats`` ``rows`` of that hour summed
    (``connectors/hourly_records``...), the hour as text (:data:`HOUR_KEY`) and a row per connector."""
    metadata: dict[str, Any] = {HOUR_KEY: dg.MetadataValue.text(hour.isoformat())}
    for name in HOURLY_COUNTERS:
        metadata[f"connectors/hourly_{name}"] = dg.MetadataValue.int(sum(int(row[name]) for row in rows))
    records = [dg.TableRecord({name: row[name] for name in HOURLY_COLUMNS}) for row in rows]
    metadata["connectors/hourly_connectors"] = dg.MetadataValue.table(records, _schema(HOURLY_COLUMNS))
    return dg.AssetObservation(asset_key=key, metadata={**metadata, **(extra or {})})


class HourlyObservations:
    """Records each completed UTC hour of the tables' statistics (``Pipeline.hourly_stats``, summed over each
    table's connectors) as one ``AssetObservation`` in a Dagster instance, once per hour and table.

    Reported with ``instance.report_runless_asset_event`` by both paths (a Dagster run and ``connectors run``), so
    they do not mix with a run's own events (its progress observations) and whichever process comes first records
    an hour. An hour is *completed* once the UTC clock has left it: batches only ever add to the current hour.
    Hours without statistics (nothing read, no error) are not observed.

    **Once per hour:** the instance is the record of what was observed. A table's latest observed hour is the
    :data:`HOUR_KEY` of its newest observation carrying one, looked up (newest first, stopping at the first found)
    among the observations stored in the last :data:`HOURLY_LOOKBACK_HOURS` hours, since an hour of that window can
    only have been observed within it; only later completed hours are recorded, oldest first, so the newest one
    stays the latest. The lookup is done once per table and object, then kept in memory, and :meth:`report` does
    nothing until the UTC hour changes, so a streaming run calls it after every round at no cost. Completed hours
    older than the window are not back-filled (an instance configured after weeks of history gets the last day).
    Two processes reporting the same table at the same moment may both record an hour (no lock spans the lookup
    and the report); the sensor never runs a table twice at once, so only a concurrent ``connectors run`` can.
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        pipeline: Pipeline,
        keys: Mapping[str, dg.AssetKey],
        extra: Mapping[str, Any] | None = None,
    ):
        self.instance = instance
        self.pipeline = pipeline
        self.keys = dict(keys)
        self.extra = dict(extra or {})
        self._latest: dict[str, dt.datetime | None] = {}
        self._checked: dt.datetime | None = None

    def report(self) -> list[dg.AssetObservation]:
        """Record the completed hours not observed yet of every table; the observations recorded."""
        current = now().replace(minute=0, second=0, microsecond=0)
        if current == self._checked:
            return []
        window_start = current - dt.timedelta(hours=HOURLY_LOOKBACK_HOURS)
        endpoints = {handle.endpoint: handle.table for handle in self.pipeline.connectors()}
        by_table: dict[str, dict[dt.datetime, list[dict[str, Any]]]] = {}
        for row in self.pipeline.hourly_stats():
            table = endpoints.get(row["connector"])
            hour = _hour(row["hour"])
            if table in self.keys and window_start <= hour < current:
                by_table.setdefault(table, {}).setdefault(hour, []).append(row)
        observations = []
        for table, hours in by_table.items():
            latest = self._latest_observed(table, window_start)
            for hour in sorted(h for h in hours if latest is None or h > latest):
                observation = hourly_observation(self.keys[table], hour, hours[hour], self.extra)
                self.instance.report_runless_asset_event(observation)
                observations.append(observation)
                self._latest[table] = hour
        self._checked = current
        return observations

    def _latest_observed(self, table: str, window_start: dt.datetime) -> dt.datetime | None:
        """The newest hour the instance holds an hourly observation of for ``table`` (see the class)."""
        if table in self._latest:
            return self._latest[table]
        records_filter = dg.AssetRecordsFilter(asset_key=self.keys[table], after_timestamp=window_start.timestamp())
        cursor, latest = None, None
        while latest is None:
            page = self.instance.fetch_observations(records_filter, limit=OBSERVATION_PAGE, cursor=cursor)
            for record in page.records:
                observation = record.asset_observation
                value = observation.metadata.get(HOUR_KEY) if observation is not None else None
                if value is not None:
                    latest = _hour(str(value.value))
                    break
            if not page.has_more:
                break
            cursor = page.cursor
        self._latest[table] = latest
        return latest
