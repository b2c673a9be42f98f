"""``connectors wizard PIPELINE ...`` (the configuration wizard, one step at a time) and ``connectors setup``."""

from __future__ import annotations

import click

from connector_cli.context import current_pipeline_name, pipeline_command_group, procedure
from connector_cli.settings import SET_OPTION, parse_settings

wizard_group = pipeline_command_group("wizard", "The configuration wizard, one step at a time.")


@wizard_group.command("prerequisites")
@click.option("--done", "done", multiple=True, metavar="ID", help="Mark a prerequisite done (repeatable).")
@click.option("--all", "all_done", is_flag=True, help="Mark every prerequisite done.")
@click.option("--complete", is_flag=True, help="Complete the step (every prerequisite must be done).")
def wizard_prerequisites(done: tuple[str, ...], all_done: bool, complete: bool) -> None:
    """Show the prerequisite checklist, mark items done, or complete the step."""
    procedure(current_pipeline_name(), lambda lc: lc.prerequisites(list(done) or None, all_done, complete))


@wizard_group.command("configure")
@SET_OPTION
def wizard_configure(settings: tuple[str, ...]) -> None:
    """Store the sink configuration (from the project file, overridden by --set: warehouse, database, schema)."""
    values = parse_settings(settings)
    procedure(current_pipeline_name(), lambda lc: lc.configure(values or None))


@wizard_group.command("connect")
def wizard_connect() -> None:
    """Test every connection and the sink for real."""
    procedure(current_pipeline_name(), lambda lc: lc.connect())


@wizard_group.command("finalize")
def wizard_finalize() -> None:
    """Create the sink tables and start the pipeline."""
    procedure(current_pipeline_name(), lambda lc: lc.finalize())


@wizard_group.command("reset")
def wizard_reset() -> None:
    """Clear the stored configuration and undo the prerequisites."""
    procedure(current_pipeline_name(), lambda lc: lc.reset())


@click.command("setup")
@click.argument("pipeline_name", metavar="PIPELINE")
@click.option("--confirm-prerequisites", is_flag=True, help="Mark every prerequisite done (you confirm they are met).")
def setup(pipeline_name: str, confirm_prerequisites: bool) -> None:
    """Run the whole wizard from the project file, non-interactively."""
    procedure(pipeline_name, lambda lc: lc.setup(confirm_prerequisites))
