"""The asset checks of the table assets (``hourly_volume``, ``parse_error_rate``, ``backup_age``), evaluated in the
step right after each table's result; the rules are :mod:`connector_core.checks`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import dagster as dg

from connector_core import checks
from connector_core.backups import open_store
from connector_core.clients import ConnectionClients
from connector_core.pipeline import Pipeline
from resources import ResourceClients

HOURLY_VOLUME = "hourly_volume"
PARSE_ERROR_RATE = "parse_error_rate"
BACKUP_AGE = "backup_age"

DESCRIPTIONS = {
    HOURLY_VOLUME: "Records of the last completed hour within median ± k·MAD of the previous 24 hours.",
    PARSE_ERROR_RATE: f"Parse errors / (records + parse errors) of the run at most {checks.PARSE_ERROR_THRESHOLD:.0%}.",
    BACKUP_AGE: "The newest backup of each connector's state database younger than backup.max_age_hours.",
}


def table_check_specs(keys: Iterable[dg.AssetKey]) -> list[dg.AssetCheckSpec]:
    """The three checks of every table asset."""
    return [
        dg.AssetCheckSpec(name, asset=key, description=description)
        for key in keys
        for name, description in DESCRIPTIONS.items()
    ]


def table_check_results(
    context: dg.AssetExecutionContext,
    pipeline: Pipeline,
    clients: ResourceClients,
    table: str,
    key: dg.AssetKey,
    counts: tuple[int, int] | None = (0, 0),
) -> Iterator[dg.AssetCheckResult]:
    """The results of the table's checks the run selected; a check that cannot be computed fails (WARN) with the
    reason in its metadata, the run goes on. ``counts`` are the run's records and parse errors of the table;
    ``None`` (the checks run without the table) takes those of the last completed hour."""
    selected = {check.name for check in context.selected_asset_check_keys if check.asset_key == key}
    for name, outcome in check_outcomes(pipeline, clients, table, counts, selected):
        yield dg.AssetCheckResult(
            check_name=name,
            asset_key=key,
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=_metadata(outcome.metadata),
        )


def table_check_evaluations(
    pipeline: Pipeline, clients: ConnectionClients, table: str, key: dg.AssetKey, counts: tuple[int, int]
) -> list[dg.AssetCheckEvaluation]:
    """Every check of the table as evaluations to report outside a run (what ``connectors run`` records in the
    Dagster instance, so the asset page shows the CLI's checks as it shows a Dagster run's)."""
    return [
        dg.AssetCheckEvaluation(
            asset_key=key,
            check_name=name,
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=_metadata(outcome.metadata),
        )
        for name, outcome in check_outcomes(pipeline, clients, table, counts, set(DESCRIPTIONS))
    ]


def check_outcomes(
    pipeline: Pipeline,
    clients: ConnectionClients,
    table: str,
    counts: tuple[int, int] | None,
    names: set[str],
) -> Iterator[tuple[str, checks.CheckOutcome]]:
    """The outcome of each check in ``names`` (a check that cannot be computed fails, with the reason)."""

    def parse_rate() -> checks.CheckOutcome:
        records, parse_errors = counts if counts is not None else checks.last_hour_counts(pipeline, table)
        outcome = checks.parse_error_rate(records, parse_errors)
        outcome.metadata["scope"] = "run" if counts is not None else "last completed hour"
        return outcome

    rules = {
        HOURLY_VOLUME: lambda: checks.hourly_volume(pipeline, table),
        PARSE_ERROR_RATE: parse_rate,
        BACKUP_AGE: lambda: checks.backup_age(pipeline, open_store(pipeline, clients), table),
    }
    for name, rule in rules.items():
        if name not in names:
            continue
        try:
            outcome = rule()
        except Exception as exc:  # a check never fails the run
            outcome = checks.CheckOutcome(False, {"error": f"{type(exc).__name__}: {exc}"})
        yield name, outcome


def _metadata(values: dict[str, Any]) -> dict[str, Any]:
    """Dagster metadata: numbers and text as they are, the rest as JSON."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or isinstance(value, (dict, list)):
            out[name] = dg.MetadataValue.json(value)
        else:
            out[name] = value
    return out
