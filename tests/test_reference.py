"""The generated docs (reference, JSON Schema, CLI help, response codes) are up to date, the schema accepts the
project files we show, and every refusal names its way out (the command, or the nearest valid key)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from connector_assets import names
from connector_cli.docs import generated_pages
from connector_cli.main import cli
from connector_core.hints import RESPONSE_CODE_FIXES
from connector_core.lifecycle import Lifecycle
from connector_core.pipeline import Pipeline
from connector_core.project import ProjectFileError, parse_project
from connector_core.reference import REGENERATE, project_json_schema, schema_text, undocumented_keys
from connector_core.vocabulary import ResponseCode

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLE = ROOT / "connectors.yaml"


# ------------------------------------------------------------------------------------------- generated pages
@pytest.mark.parametrize("page", ["project-file.md", "connectors.schema.json", "cli.md", "lifecycle.md"])
def test_committed_page_is_what_the_code_generates(page: str) -> None:
    pages = {path.name: text for path, text in generated_pages(DOCS).items()}
    committed = (DOCS / page).read_text(encoding="utf-8") if (DOCS / page).is_file() else None
    assert committed == pages[page], f"docs/{page} is out of date; run `{REGENERATE}` from the repository root"


def test_every_key_has_a_description() -> None:
    assert undocumented_keys() == [], "add Field(description=...) to these keys, then run `connectors docs`"


def test_reference_names_every_transport_and_format_config() -> None:
    text = (DOCS / "project-file.md").read_text()
    for section in ("DatagenConfig", "FileInputConfig", "KafkaInputConfig", "CommandInputConfig", "CsvFormatConfig"):
        assert f"## {section}\n" in text
    assert "| `start_after` |" in text and "| `enable.partition.eof` |" in text


def test_docs_command_writes_then_checks(tmp_path: Path) -> None:
    runner = CliRunner()
    stale = runner.invoke(cli, ["docs", "--check", "--out-dir", str(tmp_path)])
    assert stale.exit_code == 1 and "run `connectors docs`" in stale.output
    assert runner.invoke(cli, ["docs", "--out-dir", str(tmp_path)]).exit_code == 0
    assert (tmp_path / "project-file.md").is_file() and (tmp_path / "cli.md").is_file()
    checked = runner.invoke(cli, ["docs", "--check", "--out-dir", str(tmp_path)])
    assert checked.exit_code == 0, checked.output


def test_schema_command_prints_the_schema() -> None:
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0 and json.loads(result.output) == project_json_schema()
    markdown = CliRunner().invoke(cli, ["schema", "--markdown"])
    assert markdown.output.startswith("# The project file")


def test_every_response_code_says_what_fixes_it() -> None:
    assert set(RESPONSE_CODE_FIXES) == set(ResponseCode)


def test_dagster_page_names_every_name_of_names_py() -> None:
    text = (DOCS / "dagster.md").read_text()
    public = [n for n, v in vars(names).items() if callable(v) and n.endswith(("_name", "_key"))]
    assert public and [n for n in public if not n.startswith("_") and f"`{n}`" not in text] == []


def test_readme_links_only_to_files_of_the_repository() -> None:
    text = (ROOT / "README.md").read_text()
    assert "../shared" not in text and "DESIGN.md" not in text
    targets = re.findall(r"\]\(([^)#]+)[^)]*\)", text)
    local = [t for t in targets if "://" not in t]
    assert "docs/project-file.md" in local and "docs/dagster.md" in local
    assert [t for t in local if not (ROOT / t).exists()] == []


# ------------------------------------------------------------------------------------------------ JSON Schema
jsonschema = pytest.importorskip("jsonschema")


def validator() -> Any:
    schema = project_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def shown_project_files() -> list[tuple[str, Any]]:
    """The example and every YAML block with top-level ``pipelines`` in the README and the docs."""
    found = [("connectors.yaml", yaml.safe_load(EXAMPLE.read_text()))]
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for index, block in enumerate(re.findall(r"```yaml\n(.*?)```", page.read_text(), re.DOTALL)):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and "pipelines" in data:
                found.append((f"{page.name} block {index}", data))
    return found


def test_example_names_the_schema_on_its_first_line() -> None:
    first = EXAMPLE.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=docs/connectors.schema.json"
    assert (ROOT / "docs/connectors.schema.json").read_text() == schema_text()


def test_shown_project_files_validate_against_the_schema() -> None:
    files = shown_project_files()
    assert len(files) >= 3  # the example, docs/processors.md, docs/channels.md
    check = validator()
    for name, data in files:
        assert [error.message for error in check.iter_errors(data)] == [], name


def test_schema_knows_each_transport_config() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    config = data["pipelines"]["example"]["tables"]["price"]["connectors"][0]["transport"]["config"]
    config["sede"] = 7
    errors = [error.message for error in validator().iter_errors(data)]
    assert any("'sede'" in message for message in errors)
    data["pipelines"]["example"]["tables"]["price"]["connectors"][0]["transport"] = {
        "name": "file_input",
        "config": {"path": "x.json"},
    }
    data["pipelines"]["example"]["tables"]["price"]["connectors"][0]["format"] = {"name": "csv", "config": {"x": 1}}
    errors = [error.message for error in validator().iter_errors(data)]
    assert errors and all("'x'" in message for message in errors)


# ---------------------------------------------------------------------------------------- messages: a way out
def project(tmp_path: Path, prerequisites: bool = True) -> dict[str, Any]:
    return {
        "pipelines": {
            "p": {
                "sink": {"kind": "duckdb", "path": str(tmp_path / "w.duckdb")},
                "prerequisites": [{"id": "acl", "title": "Grant READ"}] if prerequisites else [],
                "tables": {"t": {"connectors": [{"name": "c", "transport": {"name": "datagen"}}]}},
            }
        }
    }


def lifecycle(tmp_path: Path, prerequisites: bool = True) -> Lifecycle:
    pipeline = Pipeline(parse_project(project(tmp_path, prerequisites)), "p", state_dir=tmp_path / "state")
    return Lifecycle(pipeline)


def test_configuring_names_setup_and_the_prerequisites_flag(tmp_path: Path) -> None:
    life = lifecycle(tmp_path)
    response = life.pause()
    assert response.response_code == "INVALID_CONNECTOR_STATUS"
    assert "Run `connectors setup p --confirm-prerequisites`" in response.message
    without = lifecycle(tmp_path / "other", prerequisites=False).resume()
    assert "Run `connectors setup p` to set it up first." in without.message


def test_setup_without_confirmation_names_the_flag(tmp_path: Path) -> None:
    response = lifecycle(tmp_path).setup()
    assert response.response_code == "PREREQUISITES_INCOMPLETE"
    assert "`connectors setup p --confirm-prerequisites`" in response.message
    assert "`connectors setup p --confirm-prerequisites`" in response.data["steps"][-1]["message"]


def test_a_wizard_step_out_of_order_names_the_next_step(tmp_path: Path) -> None:
    response = lifecycle(tmp_path).finalize()
    assert response.response_code == "INVALID_CONNECTOR_CONFIGURATION_STATUS"
    assert "`connectors wizard p prerequisites --all --complete`" in response.message


def test_paused_pipeline_names_resume_and_a_given_up_connector_names_start(tmp_path: Path) -> None:
    life = lifecycle(tmp_path)
    with life.state.transaction() as conn:
        life.state.put(conn, "status", "PAUSED")
    handle = life.pipeline.connector("t", "c")
    assert "Run `connectors pipeline p resume` first." in life.pipeline.idle_reason(handle)
    assert "`connectors pipeline p resume`" in life.pause().message
    with life.state.transaction() as conn:
        life.state.put(conn, "status", "STARTED")
    life.pipeline.ensure_created()
    for _ in range(3):
        handle.state.record_failed_read("boom", 3)
    assert "`connectors connector p t c start` retries it" in life.pipeline.idle_reason(handle)
    assert life.pause_connector("t", "c").ok
    assert "`connectors connector p t c start` starts it" in life.pipeline.idle_reason(handle)


def test_error_names_recover(tmp_path: Path) -> None:
    life = lifecycle(tmp_path)
    life.pipeline.ensure_created()
    with life.state.transaction() as conn:
        life.state.put(conn, "status", "ERROR")
    assert "`connectors pipeline p recover --to STARTED|PAUSED`" in life.resume().message


# ------------------------------------------------------------------------------------- unknown keys: near miss
def problems(data: dict[str, Any]) -> str:
    with pytest.raises(ProjectFileError) as info:
        parse_project(data)
    return str(info.value)


def test_unknown_key_suggests_the_nearest(tmp_path: Path) -> None:
    data = project(tmp_path)
    connector = data["pipelines"]["p"]["tables"]["t"]["connectors"][0]
    connector["transprot"] = connector.pop("transport")
    assert "connectors[0].transprot: unknown key 'transprot'; did you mean 'transport'?" in problems(data)


def test_near_misses_inside_unions_and_transport_configs(tmp_path: Path) -> None:
    data = project(tmp_path)
    pipeline = data["pipelines"]["p"]
    pipeline["sink"]["pth"] = "x.duckdb"
    pipeline["connections"] = {"k": {"kind": "kafka", "config": {"bootstrap.servers": "b:9092"}, "confg": {}}}
    pipeline["tables"]["t"]["connectors"][0]["transport"]["config"] = {"plan": [{"limti": 3}], "sede": 1}
    message = problems(data)
    assert "sink.pth: unknown key 'pth'; did you mean 'path'?" in message
    assert "connections.k.confg: unknown key 'confg'; did you mean 'config'?" in message
    assert "transport.config.sede: unknown key 'sede'; did you mean 'seed'?" in message
    assert "transport.config.plan[0].limti: unknown key 'limti'; did you mean 'limit'?" in message


def test_unknown_key_without_a_near_one_lists_the_allowed(tmp_path: Path) -> None:
    data = project(tmp_path)
    data["pipelines"]["p"]["colour"] = "red"
    message = problems(data)
    assert (
        "pipelines.p.colour: unknown key 'colour'; remove it or check its spelling (allowed: org_slug, sink," in message
    )
