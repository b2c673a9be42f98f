"""``ConnectorsComponent``: a defs.yaml gives the same definitions as ``build_definitions``."""

from __future__ import annotations

import importlib
import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from connector_assets import ConnectorsComponent, build_definitions

PROJECT = """
pipelines:
  orders:
    org_slug: shop
    sink: {kind: duckdb, path: orders.duckdb}
    tables:
      lines:
        columns: {id: BIGINT}
        connectors:
          - name: seed
            transport: {name: datagen, config: {plan: [{limit: 3}]}}
"""


def names(defs: dg.Definitions) -> dict[str, set[str]]:
    return {
        "assets": {key.to_user_string() for key in defs.resolve_all_asset_keys()},
        "jobs": {job.name for job in defs.resolve_all_job_defs()},
        "sensors": {sensor.name for sensor in defs.sensors or []},
        "resources": set(defs.resources or {}),
    }


def orders_folder(sandbox: Any, attributes: dict[str, str]) -> Path:
    """The sandbox's defs folder ``orders``: the module's ``PROJECT`` and a ``defs.yaml`` of the component."""
    folder = sandbox.defs_folder_path / "orders"
    folder.mkdir()
    (folder / "connectors.yaml").write_text(textwrap.dedent(PROJECT))
    component = {"type": "connector_assets.ConnectorsComponent", "attributes": attributes}
    (folder / "defs.yaml").write_text(yaml.safe_dump(component))
    return folder


def test_a_defs_yaml_loads_the_same_definitions_as_the_python_api(tmp_path: Path) -> None:
    with create_defs_folder_sandbox() as sandbox:
        folder = orders_folder(sandbox, {"project_file": "connectors.yaml", "state_dir": "state"})
        with sandbox.load_component_and_build_defs(defs_path=folder) as (component, defs):
            assert isinstance(component, ConnectorsComponent)
            dg.Definitions.validate_loadable(defs)
            assert defs.resources["orders__connectors"].state_dir == str(folder / "state"), "relative to defs.yaml"
            expected = build_definitions(folder / "connectors.yaml", state_dir=str(folder / "state"))
            assert names(defs) == names(expected)
            assert "orders__wizard_connect" in names(defs)["jobs"]
            assert defs.resources["orders__sink"].database == str(folder / "orders.duckdb")


def test_dg_scaffold_writes_a_loadable_component() -> None:
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.scaffold_component(component_cls=ConnectorsComponent, defs_path="sales-eu")
        assert yaml.safe_load((folder / "defs.yaml").read_text())["attributes"] == {"project_file": "connectors.yaml"}
        with sandbox.load_component_and_build_defs(defs_path=folder) as (_, defs):
            assert dg.AssetKey(["sales_eu", "numbers"]) in defs.resolve_all_asset_keys()
            assert "sales_eu__orchestration" in names(defs)["sensors"]


def test_attributes_are_validated_and_a_bad_project_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="project_fil"):
        ConnectorsComponent.from_attributes_dict(attributes={"project_fil": "connectors.yaml"})

    bad = tmp_path / "connectors.yaml"
    bad.write_text("pipelines:\n  orders:\n    tables: {}\n")
    component = ConnectorsComponent.from_attributes_dict(attributes={"project_file": str(bad)})
    with pytest.raises(dg.DagsterInvalidDefinitionError, match=r"pipelines\.orders\.tables") as caught:
        dg.build_defs_for_component(component)
    assert str(bad) in str(caught.value)


def test_the_component_is_registered_for_dg() -> None:
    (entry,) = [e for e in entry_points(group="dagster_dg_cli.registry_modules") if e.name == "dagster_connectors"]
    assert entry.value == "connector_assets.component_registry"
    assert importlib.import_module(entry.value).ConnectorsComponent is ConnectorsComponent


def test_the_components_jobs_and_assets_run_on_the_test_instance(instance: dg.DagsterInstance) -> None:
    with create_defs_folder_sandbox() as sandbox:
        folder = orders_folder(sandbox, {"project_file": "connectors.yaml"})
        with sandbox.load_component_and_build_defs(defs_path=folder) as (_, defs):
            setup = defs.resolve_job_def("orders__setup").execute_in_process(
                instance=instance, run_config={"ops": {"orders__setup_op": {"config": {"confirm_prerequisites": True}}}}
            )
            assert setup.success
            key = dg.AssetKey(["orders", "lines"])
            result = dg.materialize(
                [defs.get_assets_def(key)], resources=defs.resources, instance=instance, selection=[key]
            )
            assert result.success
            (materialization,) = result.asset_materializations_for_node("orders__tables")
            assert materialization.metadata["dagster/row_count"].value == 3
        assert instance.get_latest_materialization_event(key) is not None, "stored in the instance's event log"
