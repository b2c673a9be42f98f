"""``ConnectorsComponent``: the connector definitions of a project file, declared in a ``defs.yaml``.

.. code-block:: yaml

    type: connector_assets.ConnectorsComponent
    attributes:
      project_file: connectors.yaml   # relative to this defs.yaml's folder
      state_dir: .connectors          # optional; default: the project file's, else .connectors beside it
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from connector_assets.names import dagster_name

STARTER_PROJECT = """\
# A connectors project file (see the dagster-connectors README). Start the pipeline with the {pipeline}__setup job, or
# `connectors --project-file connectors.yaml setup {pipeline} --confirm-prerequisites`.
pipelines:
  {pipeline}:
    sink: {{kind: duckdb, path: warehouse.duckdb}}
    tables:
      numbers:
        columns: {{n: BIGINT}}
        connectors:
          - name: generated
            transport: {{name: datagen, config: {{plan: [{{limit: 1000}}]}}}}
"""


class ConnectorsScaffolder(dg.Scaffolder):
    """``dg scaffold defs ...ConnectorsComponent PATH``: a ``defs.yaml`` and, if absent, a starter project file."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        """Write ``defs.yaml`` (``project_file: connectors.yaml``) and a datagen pipeline named after the folder."""
        dg.scaffold_component(request, {"project_file": "connectors.yaml"})
        project_file = request.target_path / "connectors.yaml"
        if not project_file.exists():
            pipeline = dagster_name(request.target_path.name) or "pipeline"
            project_file.write_text(STARTER_PROJECT.format(pipeline=pipeline))


@dg.scaffold_with(ConnectorsScaffolder)
class ConnectorsComponent(dg.Component, dg.Resolvable, dg.Model):
    """Every pipeline of a connectors project file: table assets, lifecycle jobs, sensors and resources."""

    project_file: str = Field(
        description="The project file (connectors.yaml); a relative path is relative to the defs.yaml folder."
    )
    state_dir: str | None = Field(
        default=None,
        description="Where the state databases live; a relative path is relative to the defs.yaml folder. "
        "Default: the project file's state_dir, else .connectors beside the project file.",
    )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The same definitions as the ``workspace.yaml`` code location, built by ``build_definitions``."""
        from connector_assets.definitions import build_definitions  # heavy: only when building

        base = _component_dir(context)
        state_dir = str(_resolve(base, self.state_dir)) if self.state_dir else None
        return build_definitions(project_file=_resolve(base, self.project_file), state_dir=state_dir)


def _component_dir(context: dg.ComponentLoadContext) -> Path:
    """The folder of the component's ``defs.yaml`` (the working directory when there is none, as in tests)."""
    try:
        path = Path(context.path)
    except Exception:  # a load context that is not tied to a file
        return Path.cwd()
    return path.parent if path.is_file() else path


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path
