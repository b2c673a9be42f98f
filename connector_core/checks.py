"""Data-quality checks of a table, as plain functions (no Dagster): the hourly volume against its trailing window,
the parse-error rate of a run and the age of the newest backups. ``connector_assets`` turns each
:class:`CheckOutcome` into an asset check result."""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from connector_core.backups import BackupStore, backs_up_files, database_backups_note, list_backups
from connector_core.pipeline import Pipeline

#: Completed hours before the last one that form the trailing window.
WINDOW_HOURS = 24
#: Fewer hours of history than this: the volume check passes with a note.
MIN_HISTORY_HOURS = 6
#: How many (scaled) MADs an hour may lie from the window's median.
MAD_FACTOR = 5.0
#: The smallest tolerated spread, as a fraction of the median (a flat history does not flag small changes).
MIN_RELATIVE_SPREAD = 0.1
#: Parse errors / (records + parse errors) above this warn.
PARSE_ERROR_THRESHOLD = 0.01


@dataclass
class CheckOutcome:
    """Whether a check passed, and what it saw (JSON-ready values)."""

    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)


def now() -> dt.datetime:
    """The current UTC time (the checks' clock; tests replace it)."""
    return dt.datetime.now(dt.UTC)


def window_rule(
    window: Sequence[float], value: float, *, min_hours: int = MIN_HISTORY_HOURS, k: float = MAD_FACTOR
) -> CheckOutcome:
    """``value`` against a trailing ``window`` of hourly values: it passes within ``median ± k·spread``, where
    ``spread = max(1.4826·MAD, MIN_RELATIVE_SPREAD·median, 1)`` (the MAD scaled to a normal standard deviation,
    floored so a flat or tiny history does not flag ordinary changes); the lower bound is at least 0. With fewer than
    ``min_hours`` values it passes with a note (not enough history)."""
    meta: dict[str, Any] = {"value": value, "window_hours": len(window)}
    if len(window) < min_hours:
        meta["note"] = f"not enough history: {len(window)} h of at least {min_hours} h"
        return CheckOutcome(True, meta)
    median = statistics.median(window)
    mad = statistics.median(abs(v - median) for v in window)
    spread = max(1.4826 * mad, MIN_RELATIVE_SPREAD * median, 1.0)
    lower, upper = max(0.0, median - k * spread), median + k * spread
    meta.update(median=median, mad=mad, expected_min=round(lower, 3), expected_max=round(upper, 3))
    return CheckOutcome(lower <= value <= upper, meta)


def _hour(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


def _last_completed_hour(at: dt.datetime | None) -> dt.datetime:
    current = (at or now()).astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return current - dt.timedelta(hours=1)


def table_hourly_records(pipeline: Pipeline, table: str, column: str = "records") -> dict[dt.datetime, int]:
    """Records (or another column of ``hourly_stats``) per UTC hour summed over the table's connectors."""
    totals: dict[dt.datetime, int] = {}
    for handle in pipeline.connectors(table):
        if handle.connector_id is None:
            continue
        for row in handle.state.hourly_stats():
            hour = _hour(row["hour"])
            totals[hour] = totals.get(hour, 0) + int(row[column])
    return totals


def last_hour_counts(pipeline: Pipeline, table: str, at: dt.datetime | None = None) -> tuple[int, int]:
    """The table's records and parse errors in the last completed hour (for a check run without ingesting)."""
    last = _last_completed_hour(at)
    records = table_hourly_records(pipeline, table).get(last, 0)
    return records, table_hourly_records(pipeline, table, "parse_errors").get(last, 0)


def hourly_volume(
    pipeline: Pipeline, table: str, at: dt.datetime | None = None, window_hours: int = WINDOW_HOURS
) -> CheckOutcome:
    """The table's records in the last completed hour against the previous ``window_hours`` completed hours
    (:func:`window_rule`). Hours since its first statistics without a row count 0 records; hours before it are
    not history."""
    last = _last_completed_hour(at)
    totals = table_hourly_records(pipeline, table)
    first = min(totals) if totals else last
    hours = [last - dt.timedelta(hours=i) for i in range(window_hours, 0, -1)]
    window = [float(totals.get(h, 0)) for h in hours if h >= first]
    outcome = window_rule(window, float(totals.get(last, 0)))
    outcome.metadata["hour"] = last.isoformat()
    return outcome


def parse_error_rate(records: int, parse_errors: int, threshold: float = PARSE_ERROR_THRESHOLD) -> CheckOutcome:
    """``parse_errors / (records + parse_errors)``; fails above ``threshold`` (0 when nothing was read)."""
    seen = records + parse_errors
    rate = parse_errors / seen if seen else 0.0
    meta: dict[str, Any] = {
        "rate": round(rate, 6),
        "records": records,
        "parse_errors": parse_errors,
        "threshold": threshold,
    }
    if not seen:
        meta["note"] = "nothing read"
    return CheckOutcome(rate <= threshold, meta)


def backup_age(pipeline: Pipeline, store: BackupStore, table: str, at: dt.datetime | None = None) -> CheckOutcome:
    """The age of the newest backup of each of the table's connectors' databases (one listing of the store): fails
    when one is older than ``backup.max_age_hours``, or missing while the store holds any backup of the pipeline;
    fails with the reason when the store cannot be listed."""
    max_age = pipeline.spec.backup.max_age_hours
    meta: dict[str, Any] = {"max_age_hours": max_age}
    if not backs_up_files(pipeline):
        return CheckOutcome(True, meta | {"note": database_backups_note(pipeline)})
    try:
        listed = list_backups(pipeline, store, now=at or now())
    except Exception as exc:  # an unreachable store is a failed check, never a failed run
        meta["error"] = f"{type(exc).__name__}: {exc}"
        return CheckOutcome(False, meta)
    ages: dict[str, float] = {}
    for entry in listed:
        label = entry["database"]
        ages[label] = min(ages.get(label, entry["age_hours"]), entry["age_hours"])
    problems = []
    connectors: dict[str, float | None] = {}
    for handle in pipeline.connectors(table):
        age = ages.get(handle.endpoint)
        connectors[handle.endpoint] = age
        if age is None:
            if listed and handle.connector_id is not None:
                problems.append(f"{handle.endpoint}: no backup")
        elif age > max_age:
            problems.append(f"{handle.endpoint}: {age:.1f} h old")
    meta["age_hours"] = connectors
    if not listed:
        meta["note"] = "no backup of the pipeline yet"
    if problems:
        meta["problems"] = problems
    return CheckOutcome(not problems, meta)
