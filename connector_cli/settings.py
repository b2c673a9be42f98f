"""``--set KEY=VALUE`` options: typed values and ``env:NAME`` secret references.

Values are typed by the core (:func:`connector_core.project.parse_setting_value`). Whether a key may hold a literal
value is the core's one secret rule too (``connector_core.secrets``), applied by the procedure that stores it, so
the command line and the Launchpad refuse the same values with the same words.
"""

from __future__ import annotations

from typing import Any

import click

from connector_core.project import parse_setting_value

SET_OPTION = click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="A configuration value (repeatable): true/false, integers and decimals are parsed; "
    "env:NAME is a secret read from the environment variable NAME (the only way to give a secret).",
)


def parse_value(text: str) -> Any:
    """A ``--set`` value (see ``connector_core.project.parse_setting_value``); a bad one is a usage error."""
    try:
        return parse_setting_value(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from None


def parse_settings(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``("key=value", ...)`` -> ``{key: value}``."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--set")
        values[key] = parse_value(text)
    return values
