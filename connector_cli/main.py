"""``connectors``: the command line of DESIGN §7, a click front end over the same core functions as Dagster.

This module holds the root group, its global options (``--project-file``, ``--state-dir``) and the entry points
(the console script ``connectors = connector_cli.main:cli`` and ``python -m connector_cli.main``); each command
group lives in its own module. What every command answers and its exit codes: :mod:`connector_cli.context`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from connector_cli.backup import backup, backups, restore
from connector_cli.connector import connector_group
from connector_cli.context import CliState
from connector_cli.docs import docs, schema
from connector_cli.history import dagster_home
from connector_cli.pipeline import pipeline_group
from connector_cli.run import run
from connector_cli.state import state_group
from connector_cli.wizard import setup, wizard_group
from connector_core.project import DEFAULT_PROJECT_FILE, PROJECT_FILE_ENV


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--project-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"The project file (default: ${PROJECT_FILE_ENV}, else ./{DEFAULT_PROJECT_FILE}).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where state databases live (default: state_dir of the project file, else .connectors beside it).",
)
@click.pass_context
def cli(ctx: click.Context, project_file: Path | None, state_dir: Path | None) -> None:
    """Control connectors declared in connectors.yaml: lifecycle, wizard, stats, headless runs and backups."""
    ctx.obj = CliState(project_file, state_dir)


for command in (pipeline_group, connector_group, wizard_group, setup, run, backup, backups, restore, dagster_home):
    cli.add_command(command)
cli.add_command(state_group)  # connectors state migrate (connector_cli/state.py)
for command in (schema, docs):  # the generated reference pages (connector_cli/docs.py)
    cli.add_command(command)


def main() -> None:
    """Entry point for ``python -m connector_cli.main``."""
    cli(prog_name="connectors")


if __name__ == "__main__":
    sys.exit(main())
