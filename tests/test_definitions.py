"""The Definitions factory: loadable, clear errors for a bad project file, per-pipeline names, translator specs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from connector_assets import ConnectorsResource, ConnectorsTranslator, TableProps, build_definitions
from connector_assets.translator import table_code_version
from connector_core.project import load_project

PROJECT = """
pipelines:
  shop:
    org_slug: acme
    sink: {kind: duckdb, path: shop.duckdb}
    tables:
      price:
        columns: {part: BIGINT, vendor: BIGINT, price: INTEGER}
        connectors:
          - name: backfill
            labels: [price.backfill]
            transport: {name: datagen, config: {plan: [{limit: 10}]}}
          - name: feed
            start_after: price.backfill
            transport: {name: file_input, config: {path: feed.json}}
            format: {name: json}
      vendor:
        connectors:
          - name: seed
            transport: {name: datagen, config: {plan: [{limit: 3}]}}
  crm-eu:
    org_slug: sales
    sink: {kind: duckdb, path: crm.duckdb}
    tables:
      contacts:
        connectors:
          - name: seed
            transport: {name: datagen, config: {plan: [{limit: 3}]}}
"""

PROCEDURES = [
    "wizard_prerequisites",
    "wizard_configure",
    "wizard_connect",
    "wizard_finalize",
    "wizard_reset",
    "setup",
    "pause",
    "resume",
    "recover",
    "update_connection",
    "update_warehouse",
    "start_connector",
    "pause_connector",
    "backup",
    "restore",
]


def write(folder: Path, text: str, name: str = "connectors.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def with_connections(folder: Path, pipeline: str, **connections: dict[str, Any]) -> Path:
    """A project file with one pipeline of these connections and one datagen table."""
    table = {"connectors": [{"name": "a", "transport": {"name": "datagen"}}]}
    spec = {"pipelines": {pipeline: {"connections": connections, "tables": {"t": table}}}}
    return write(folder, yaml.safe_dump(spec, sort_keys=False))


def op_def(defs: dg.Definitions, job_name: str) -> dg.OpDefinition:
    """The single op of a lifecycle job."""
    (node,) = defs.resolve_job_def(job_name).graph.nodes
    return node.definition


@pytest.fixture(scope="module")
def project_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("project"), PROJECT)


@pytest.fixture(scope="module")
def defs(project_file: Path) -> dg.Definitions:
    return build_definitions(project_file)


def test_definitions_load_with_every_name_prefixed_by_its_pipeline(defs: dg.Definitions) -> None:
    dg.Definitions.validate_loadable(defs)
    jobs = {job.name for job in defs.resolve_all_job_defs()} - {"__ASSET_JOB"}
    expected = {f"{p}__{procedure}" for p in ("shop", "crm_eu") for procedure in [*PROCEDURES, "ingest"]}
    assert jobs == expected
    assert {s.name for s in defs.sensors} == {"shop__orchestration", "crm_eu__orchestration"}
    assert set(defs.resources) == {"shop__sink", "shop__connectors", "crm_eu__sink", "crm_eu__connectors"}
    assert set(defs.resolve_all_asset_keys()) == {
        dg.AssetKey(["shop", "price"]),
        dg.AssetKey(["shop", "vendor"]),
        dg.AssetKey(["crm-eu", "contacts"]),
    }
    sensor = defs.resolve_sensor_def("shop__orchestration")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.job_name == "shop__ingest"
    ingest = defs.resolve_job_def("shop__ingest")
    assert ingest.asset_layer.executable_asset_keys == {dg.AssetKey(["shop", "price"]), dg.AssetKey(["shop", "vendor"])}


def test_two_definitions_of_different_projects_merge_without_clashes(defs: dg.Definitions, tmp_path: Path) -> None:
    other = write(
        tmp_path,
        """
        pipelines:
          billing:
            tables:
              invoices:
                connectors:
                  - name: seed
                    transport: {name: datagen, config: {plan: [{limit: 1}]}}
        """,
    )
    merged = dg.Definitions.merge(defs, build_definitions(other))
    dg.Definitions.validate_loadable(merged)
    assert {f"{p}__{r}" for p in ("shop", "crm_eu", "billing") for r in ("sink", "connectors")} == set(merged.resources)
    assert merged.resolve_job_def("billing__pause").name == "billing__pause"


def test_only_connection_ops_require_resources(defs: dg.Definitions) -> None:
    connect = op_def(defs, "shop__wizard_connect")
    assert connect.name == "shop__wizard_connect_op"
    assert connect.required_resource_keys == {"shop__connectors"}
    assert op_def(defs, "shop__pause").required_resource_keys == set()
    tables = defs.get_assets_def(dg.AssetKey(["shop", "price"]))
    assert tables.node_def.name == "shop__tables"
    assert "shop__connectors" in tables.required_resource_keys


def test_the_execution_resource_nests_the_connection_resources(tmp_path: Path) -> None:
    project_file = with_connections(
        tmp_path,
        "pg",
        main={"kind": "postgres", "dsn": {"env": "CONNECTORS_TEST_PG_DSN"}},
        bus={"kind": "kafka", "config": {"bootstrap.servers": "127.0.0.1:9092", "sasl.password": {"env": "KAFKA_PW"}}},
    )
    defs = build_definitions(project_file)
    dg.Definitions.validate_loadable(defs)
    connectors = defs.resources["pg__connectors"]
    assert isinstance(connectors, ConnectorsResource)
    assert connectors.pipeline_name == "pg" and connectors.project_file == str(project_file)
    assert connectors.connection_main is defs.resources["pg__main"], "the same object: one resource in the UI"
    assert connectors.connection_bus is defs.resources["pg__bus"]
    assert connectors.sink is defs.resources["pg__sink"]
    assert op_def(defs, "pg__wizard_connect").required_resource_keys == {"pg__connectors"}


def test_connection_names_that_give_taken_or_clashing_resource_keys_are_refused(tmp_path: Path) -> None:
    postgres = {"kind": "postgres", "dsn": {"env": "PG_DSN"}}
    clash = with_connections(tmp_path, "shop", **{"sink": postgres, "a-b": postgres, "a_b": postgres})
    with pytest.raises(dg.DagsterInvalidDefinitionError) as caught:
        build_definitions(clash)
    message = str(caught.value)
    assert "pipelines.shop.connections: names a-b, a_b give clashing Dagster resource keys" in message
    assert "pipelines.shop.connections.sink: its Dagster resource key shop__sink is taken" in message


def test_lifecycle_configs_are_typed_launchpad_forms(defs: dg.Definitions) -> None:
    field = op_def(defs, "shop__recover").config_schema.as_field().config_type.fields["to"]
    assert field.description and "STARTED" in field.description
    choices = field.config_type.inner_type.enum_values  # Noneable: it has a default
    assert ({v.config_value for v in choices}, field.default_value) == ({"STARTED", "PAUSED"}, "PAUSED")
    fields = op_def(defs, "shop__wizard_prerequisites").config_schema.as_field().config_type.fields
    assert set(fields) == {"done", "all", "complete"}
    assert all(not f.is_required and f.description for f in fields.values())


def test_bad_project_file_is_one_clear_definition_error(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        """
        pipelines:
          shop:
            tables:
              price:
                connectors:
                  - name: live
                    transport: {name: datagen, config: {plan: [{limit: 1}], bogus: 1}}
        """,
    )
    with pytest.raises(dg.DagsterInvalidDefinitionError) as caught:
        build_definitions(bad)
    message = str(caught.value)
    assert str(bad) in message
    assert "pipelines.shop.tables.price.connectors[0].transport.config.bogus" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_missing_project_file_names_the_file_and_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTORS_PROJECT_FILE", str(tmp_path / "nowhere.yaml"))
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="nowhere.yaml") as caught:
        build_definitions()
    assert "CONNECTORS_PROJECT_FILE" in str(caught.value)


def test_pipeline_names_that_give_the_same_dagster_names_are_refused(tmp_path: Path) -> None:
    clash = write(
        tmp_path,
        """
        pipelines:
          crm-eu: {tables: {t: {connectors: [{name: a, transport: {name: datagen}}]}}}
          crm_eu: {tables: {t: {connectors: [{name: a, transport: {name: datagen}}]}}}
        """,
    )
    with pytest.raises(dg.DagsterInvalidDefinitionError, match=r"pipelines\.crm-eu and pipelines\.crm_eu"):
        build_definitions(clash)


def test_translator_spec_of_a_table(defs: dg.Definitions, project_file: Path) -> None:
    spec = defs.get_assets_def(dg.AssetKey(["shop", "price"])).specs_by_key[dg.AssetKey(["shop", "price"])]
    assert spec.group_name == "shop"
    assert spec.kinds == {"datagen", "file", "duckdb"}
    assert spec.owners == ["team:acme"]
    assert spec.skippable
    assert spec.metadata["dagster/table_name"] == "main.price"
    assert spec.metadata["dagster/column_schema"] == dg.TableSchema(
        columns=[
            dg.TableColumn("part", "BIGINT"),
            dg.TableColumn("vendor", "BIGINT"),
            dg.TableColumn("price", "INTEGER"),
        ]
    )
    assert spec.metadata["connectors/endpoints"].value == ["price.backfill", "price.feed"]
    assert spec.metadata["connectors/start_after"].value == {"price.feed": ["price.backfill"]}
    project = load_project(project_file)
    assert spec.code_version == table_code_version(project.pipelines["shop"].tables["price"])
    vendor = defs.get_assets_def(dg.AssetKey(["shop", "vendor"])).specs_by_key[dg.AssetKey(["shop", "vendor"])]
    assert vendor.kinds == {"datagen", "duckdb"}
    assert "dagster/column_schema" not in vendor.metadata
    assert vendor.code_version != spec.code_version
    contacts_key = dg.AssetKey(["crm-eu", "contacts"])
    assert defs.get_assets_def(contacts_key).specs_by_key[contacts_key].group_name == "crm_eu"


def test_code_version_follows_the_table_config(project_file: Path) -> None:
    table = load_project(project_file).pipelines["shop"].tables["vendor"]
    changed = table.model_copy(update={"columns": {"id": "BIGINT"}})
    assert table_code_version(table) == table_code_version(table.model_copy())
    assert table_code_version(changed) != table_code_version(table)


class PrefixedTranslator(ConnectorsTranslator):
    def get_asset_spec(self, props: TableProps) -> dg.AssetSpec:
        spec = super().get_asset_spec(props)
        return spec.replace_attributes(key=spec.key.with_prefix("raw"), skippable=False)


def test_a_translator_subclass_changes_keys_everywhere(project_file: Path) -> None:
    defs = build_definitions(project_file, translator=PrefixedTranslator())
    key = dg.AssetKey(["raw", "shop", "price"])
    spec = defs.get_assets_def(key).specs_by_key[key]
    assert spec.skippable, "a table with no active connector must be allowed to materialize nothing"
    ingest = defs.resolve_job_def("shop__ingest")
    assert key in ingest.asset_layer.executable_asset_keys


REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("valid", [True, False], ids=["example", "bad-key"])
def test_dagster_definitions_validate_on_the_workspace(tmp_path: Path, valid: bool) -> None:
    """``dagster definitions validate -w workspace.yaml`` passes on the example project file (a copy, so the
    state lands in tmp) and, on a bad key, prints the key path without a traceback."""
    text = (REPO / "connectors.yaml").read_text()
    if not valid:
        text = text.replace("labels: [price.backfill]", "labels: [price.backfill]\n            colour: red")
    project_file = tmp_path / "connectors.yaml"
    project_file.write_text(text)
    env = {**os.environ, "CONNECTORS_PROJECT_FILE": str(project_file), "DAGSTER_HOME": str(tmp_path)}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    if valid:
        assert result.returncode == 0, output
        assert "Validation successful" in output
    else:
        assert result.returncode != 0
        assert "pipelines.example.tables.price.connectors[0].colour" in output and "unknown key" in output
        assert "Traceback" not in output
