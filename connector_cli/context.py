"""What every command shares: the project of the global options, running a function on an opened pipeline, answers.

Every command opens its pipeline the core's way, :func:`connector_core.lifecycle.run_procedure`, so the command line
and the Dagster jobs answer alike: a state database that cannot be opened, or an unexpected exception, answers
``INTERNAL_ERROR`` naming the pipeline. A response prints as its JSON (``Response.as_dict()``) and the command exits 0
when it is OK, 1 otherwise. Bad input never prints a traceback: a bad project file prints the
:class:`ProjectFileError` message, an unknown pipeline, table, connector or connection a usage error naming what
exists (both exit 2).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click

from connector_cli import history
from connector_core.lifecycle import Lifecycle, Response, run_procedure
from connector_core.pipeline import Pipeline
from connector_core.project import PipelineSpec, Project, ProjectFileError, load_project
from connector_core.vocabulary import ResponseCode


class ProjectFileProblem(click.ClickException):
    """A project file that cannot be used: its message, exit code 2, no traceback."""

    exit_code = 2


@dataclass
class CliState:
    """The global options, and the project loaded on first use."""

    project_file: Path | None
    state_dir: Path | None
    _project: Project | None = field(default=None, repr=False)

    def project(self) -> Project:
        """The project file (option, else ``$CONNECTORS_PROJECT_FILE``, else ``./connectors.yaml``)."""
        if self._project is None:
            try:
                self._project = load_project(self.project_file)
            except ProjectFileError as exc:
                raise ProjectFileProblem(str(exc)) from None
        return self._project


def cli_state() -> CliState:
    """The global options of the running command."""
    return click.get_current_context().find_object(CliState)


def pipeline_command_group(name: str, summary: str) -> click.Group:
    """A command group whose first argument is ``PIPELINE`` (its commands read it with :func:`current_pipeline_name`)."""

    @click.group(name, help=summary)
    @click.argument("pipeline_name", metavar="PIPELINE")
    @click.pass_context
    def group(ctx: click.Context, pipeline_name: str) -> None:
        ctx.meta["pipeline"] = pipeline_name

    return group


def current_pipeline_name() -> str:
    """The ``PIPELINE`` argument of the running command's group."""
    return click.get_current_context().meta["pipeline"]


@contextlib.contextmanager
def unknown_names_are_usage_errors() -> Iterator[None]:
    """Turn a :class:`LookupError` (an unknown pipeline, table, connector...) into a usage error (exit 2)."""
    try:
        yield
    except LookupError as exc:
        raise click.UsageError(str(exc.args[0]) if exc.args else str(exc)) from None


def pipeline_spec(pipeline_name: str) -> PipelineSpec:
    """A pipeline of the project file; an unknown name is a usage error naming the pipelines."""
    with unknown_names_are_usage_errors():
        return cli_state().project().pipeline(pipeline_name)


def on_pipeline(pipeline_name: str, call: Callable[[Pipeline], Response]) -> Response:
    """Open a pipeline, run ``call`` on it and close it (:func:`run_procedure`); its response, or the core's."""
    pipeline_spec(pipeline_name)
    state = cli_state()
    return run_procedure(state.project(), pipeline_name, call, state.state_dir)


def dump(payload: Any) -> str:
    """Indented JSON of a response or of stats."""
    return json.dumps(payload, indent=2, default=str)


def finish(response: Response) -> NoReturn:
    """Print a response JSON and exit: 0 when it is OK, 1 otherwise."""
    click.echo(dump(response.as_dict()))
    raise click.exceptions.Exit(0 if response.ok else 1)


def respond(pipeline_name: str, call: Callable[[Pipeline], Response]) -> NoReturn:
    """Run ``call`` on an opened pipeline, print its response and exit."""
    finish(on_pipeline(pipeline_name, call))


def read_pipeline(pipeline_name: str, read: Callable[[Pipeline], dict[str, Any]]) -> dict[str, Any]:
    """What ``read`` returns from an opened pipeline; a pipeline that cannot be read finishes with the response."""
    response = on_pipeline(pipeline_name, lambda pipeline: Response(ResponseCode.OK, data=read(pipeline)))
    if not response.ok:
        finish(response)
    return response.data


class ClientsOnFirstUse:
    """The pipeline's ``ConnectionClients`` (``resources.build_clients``), built on first use.

    Dagster is imported only when a step really asks for a connection, so commands that reach none stay light, and
    a missing secret fails just the step that needs it (which reports it, e.g. ``CONNECTION_FAILED``).
    """

    def __init__(self, pipeline: Pipeline):
        self._pipeline = pipeline
        self._clients: Any = None

    def __getattr__(self, name: str) -> Any:
        """Every ``ConnectionClients`` method, from the clients built on the first call."""
        if name.startswith("_"):
            raise AttributeError(name)
        if self._clients is None:
            from resources import build_clients  # imports Dagster

            self._clients = build_clients(self._pipeline)
        return getattr(self._clients, name)


def procedure(pipeline_name: str, call: Callable[[Lifecycle], Response]) -> NoReturn:
    """Run one lifecycle procedure on a pipeline, print it and exit. Its clients are built on first use, so a
    procedure that reaches no connection (nor an S3 backup store) never imports Dagster. With ``DAGSTER_HOME`` set,
    a procedure that may change something is recorded in the Dagster instance (:mod:`connector_cli.history`)."""
    redact = str

    def run(pipeline: Pipeline) -> Response:
        nonlocal redact
        redact = pipeline.redact
        return call(Lifecycle(pipeline, ClientsOnFirstUse(pipeline)))

    response = on_pipeline(pipeline_name, run)
    if history.recording_enabled():
        ctx = click.get_current_context()
        table = ctx.meta.get("connector", (None,))[0]
        history.record_procedure(
            cli_state().project(),
            pipeline_name,
            *command_words(ctx),
            response,
            None if table is None else [table],
            redact,
        )
    finish(response)


def command_words(ctx: click.Context) -> tuple[list[str], list[str]]:
    """The running command after ``connectors``: its names (``pipeline pause``), and its words with the arguments
    (``pipeline example pause``)."""
    names: list[str] = []
    words: list[str] = []
    while ctx.parent is not None:
        arguments = [
            str(ctx.params[param.name])
            for param in ctx.command.params
            if isinstance(param, click.Argument) and param.name and ctx.params.get(param.name) is not None
        ]
        name = ctx.info_name or ctx.command.name or ""
        names.insert(0, name)
        words[:0] = [name, *arguments]
        ctx = ctx.parent
    return names, words
