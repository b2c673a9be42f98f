"""Stats on the terminal: the ``--format`` option, the JSON object or a readable text summary."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from connector_cli.context import dump

FORMAT_OPTION = click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: a readable summary; json: the stats object.",
)

#: ``--format`` whose default follows where the output goes: text on a terminal, JSON into a pipe or a file
#: (``connectors connector P T C stats | jq``, as ``fda`` does); an explicit ``--format`` wins.
AUTO_FORMAT_OPTION = click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="text: a readable summary; json: the stats object. Default: text on a terminal, json otherwise (| jq).",
)

PIPELINE_STATS_HEADERS = [
    "CONNECTOR",
    "PAUSED",
    "ACTIVE",
    "RECORDS",
    "BYTES",
    "BUFFERED",
    "END_OF_INPUT",
    "PARSE_ERRORS",
    "TRANSPORT_ERRORS",
    "FATAL_ERROR",
]
HOURLY_STATS_HEADERS = ["HOUR", "CONNECTOR", "RECORDS", "BYTES", "PARSE_ERRORS", "TRANSPORT_ERRORS"]


def stdout_is_terminal() -> bool:
    """Whether standard output is a terminal (a person reads it) rather than a pipe or a file (a program does)."""
    stream = sys.stdout
    return bool(stream is not None and not stream.closed and stream.isatty())


def chosen_format(output_format: str | None) -> str:
    """The explicit ``--format``, else ``text`` on a terminal and ``json`` anywhere else."""
    if output_format is not None:
        return output_format
    return "text" if stdout_is_terminal() else "json"


def echo_stats(stats: dict[str, Any], output_format: str, as_text: Callable[[dict[str, Any]], str]) -> None:
    """Print stats as JSON (``--format json``) or as ``as_text`` writes them."""
    click.echo(dump(stats) if output_format == "json" else as_text(stats))


def _yes(value: Any) -> str:
    return "yes" if value else "no"


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """Left-aligned columns separated by two spaces (``None`` shows as ``-``)."""
    cells = [headers] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def format_connector_stats(stats: dict[str, Any]) -> str:
    """A readable summary of one connector's stats."""
    m = stats["metrics"]
    lines = [
        f"connector {stats['endpoint_name']}" + (f" ({stats['connector_id']})" if stats.get("connector_id") else ""),
        f"  paused: {_yes(stats['paused'])}   active: {_yes(stats['active'])}",
        f"  records: {m['total_records']}   bytes: {m['total_bytes']}   buffered: {m['buffered_records']}   "
        f"end of input: {_yes(m['end_of_input'])}",
        f"  parse errors: {m['num_parse_errors']}   transport errors: {m['num_transport_errors']}",
        f"  fatal error: {stats['fatal_error'] or '-'}",
        f"  config: {json.dumps(stats['config'], default=str)}",
    ]
    if stats["parse_errors"]:
        lines.append("  last parse errors:")
        for error in stats["parse_errors"][-10:]:
            lines.append(f"    {error['timestamp']}  #{error['index']}  {error['message']}")
    return "\n".join(lines)


def _connector_row(stats: dict[str, Any]) -> list[Any]:
    """One connector's line of the pipeline table (the columns of :data:`PIPELINE_STATS_HEADERS`)."""
    m = stats["metrics"]
    return [
        stats["endpoint_name"],
        _yes(stats["paused"]),
        _yes(stats["active"]),
        m["total_records"],
        m["total_bytes"],
        m["buffered_records"],
        _yes(m["end_of_input"]),
        m["num_parse_errors"],
        m["num_transport_errors"],
        stats["fatal_error"],
    ]


def format_pipeline_stats(stats: dict[str, Any]) -> str:
    """A readable summary of every connector of a pipeline and its hourly statistics."""
    lines = [
        f"pipeline {stats['pipeline']}"
        + (f" ({stats['pipeline_id']})" if stats.get("pipeline_id") else "")
        + f": status {stats['status']}, configurationStatus {stats['configurationStatus']}",
        "",
        format_table(PIPELINE_STATS_HEADERS, [_connector_row(s) for s in stats["connectors"]]),
        "",
        "hourly statistics:",
    ]
    if stats["hourly_stats"]:
        hourly = [
            [h[key] for key in ("hour", "connector", "records", "bytes", "parse_errors", "transport_errors")]
            for h in stats["hourly_stats"]
        ]
        lines.append(format_table(HOURLY_STATS_HEADERS, hourly))
    else:
        lines.append("  (none yet)")
    return "\n".join(lines)
