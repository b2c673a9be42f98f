"""The ``connectors`` command line (DESIGN §7): a click front end over ``connector_core``.

``main`` holds the root group and its global options, ``context`` what every command shares (the project, running
a function on an opened pipeline, printing responses and exit codes), ``settings`` the ``--set`` values, ``output``
the text form of stats, ``history`` the recording of CLI work into the Dagster instance (``DAGSTER_HOME``) and
``dagster-home``, and ``pipeline``, ``connector``, ``wizard``, ``run`` and ``backup`` (``backup``, ``backups``,
``restore``) one command group each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connector_cli.main import cli

__all__ = ["cli"]


def __getattr__(name: str) -> Any:
    """``connector_cli.cli``, imported on first use (so ``python -m connector_cli.main`` runs main.py only once)."""
    if name == "cli":
        from connector_cli.main import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
