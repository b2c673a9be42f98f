"""``connectors state migrate PIPELINE --to postgres``: move a pipeline's state from its SQLite files into PostgreSQL.

First point the pipeline at PostgreSQL in the project file (``state: {kind: postgres, connection: NAME, schema:
connectors}``), then migrate: the core function :func:`connector_core.state_migrate.migrate_to_postgres` copies
every row in one PostgreSQL transaction and verifies it before it commits. The answer is the usual JSON
(``{"response_code": "OK", "message": ..., "rows": ..., "connectors": ...}``), exit 0; a refusal or a failed
verification answers its code and a message naming the way out, exit 1, with nothing written; the global
``--project-file`` and ``--state-dir`` say which project and which SQLite state folder.
"""

from __future__ import annotations

import click

from connector_cli.context import ProjectFileProblem, cli_state, finish, pipeline_spec
from connector_core.lifecycle import Response
from connector_core.project import ProjectFileError
from connector_core.state_migrate import MigrationError, migrate_to_postgres
from connector_core.vocabulary import ResponseCode


@click.group("state")
def state_group() -> None:
    """The state backend of a pipeline: move its state from the SQLite files to PostgreSQL."""


@state_group.command("migrate")
@click.argument("pipeline_name", metavar="PIPELINE")
@click.option(
    "--to",
    "to",
    type=click.Choice(["postgres"]),
    required=True,
    help="The backend to copy the state into: postgres, the schema the pipeline's state: key names.",
)
@click.option("--force", is_flag=True, help="Replace the state the PostgreSQL schema already holds of the pipeline.")
def state_migrate(pipeline_name: str, to: str, force: bool) -> None:
    """Copy the pipeline's SQLite state into PostgreSQL in one transaction and verify it (counts, ids, statuses).

    Add `state: {kind: postgres, connection: NAME, schema: connectors}` to the pipeline in the project file first.
    The SQLite files are only read (they can be archived afterwards); nothing is written when it refuses or fails.
    """
    pipeline_spec(pipeline_name)  # an unknown pipeline is a usage error naming the pipelines
    state = cli_state()
    try:
        report = migrate_to_postgres(state.project(), pipeline_name, state.state_dir, force=force)
    except ProjectFileError as exc:
        raise ProjectFileProblem(str(exc)) from None
    except MigrationError as exc:
        finish(Response(exc.response_code, str(exc)))
    finish(Response(ResponseCode.OK, report.message, report.as_dict()))
