"""Hostile project files: alias bombs, deep nesting, duplicate keys, bytes that are not UTF-8, state folders that
cannot be, paths that clash, and files large enough to show what loading costs. Each is one clear
:class:`ProjectFileError` naming the file, the key path and the line."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from connector_core.project import ProjectFileError, load_project, parse_project
from connector_core.yaml_loader import MAX_DEPTH, MIN_EXPANDED_NODES, YamlProblem, load_yaml

PROJECT = """\
pipelines:
  example:
    tables:
      price:
        connectors:
          - name: backfill
            transport:
              name: datagen
              config:
                plan:
                  - limit: 5
                    fields:
                      part: {values: [1, 2, 3]}
"""
VALUES_LINE = 13  # the line of `part: {values: [1, 2, 3]}`


def write(folder: Path, text: str, name: str = "connectors.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def refusal(path: Path) -> str:
    """The message of the :class:`ProjectFileError` that loading ``path`` raises; it names the file."""
    with pytest.raises(ProjectFileError) as info:
        load_project(path)
    message = str(info.value)
    assert message.startswith(f"Invalid project file {path}:") and "Traceback" not in message
    return message


def bomb(levels: int = 9, width: int = 10) -> str:
    """A "billion laughs": ``width ** levels`` values once expanded, as anchors in a datagen field's ``values``
    (``list[Any]``, so it validates), each level one line below the ``values:`` key."""
    rows = [f"&l0 [{', '.join(['lol'] * width)}]"]
    rows += [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    values = "\n".join(f"                          - {row}" for row in rows)
    return PROJECT.replace("part: {values: [1, 2, 3]}", f"part:\n                        values:\n{values}")


# --------------------------------------------------------------------------------------------- alias bombs
@pytest.mark.timeout(20)
def test_an_alias_bomb_in_a_valid_place_is_refused_at_the_alias(tmp_path: Path) -> None:
    path = write(tmp_path, bomb())
    started = time.monotonic()
    message = refusal(path)
    assert time.monotonic() - started < 5
    # l3 holds 11,111 nodes: its 8th alias in l4 takes the document past the floor of 100,000.
    line = VALUES_LINE + 2 + 4
    where = "pipelines.example.tables.price.connectors[0].transport.config.plan[0].fields.part.values[4][7]"
    assert f"{where} (line {line}): alias *l3 expands the document to more than {MIN_EXPANDED_NODES:,} nodes" in message


@pytest.mark.timeout(20)
def test_an_alias_bomb_where_validation_fails_is_refused_too(tmp_path: Path) -> None:
    text = "pipelines:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  {name}: &{name} [{', '.join([f'*{prev}'] * 10)}]\n"
        for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
    )
    assert "pipelines.e[7] (line 6): alias *d expands the document" in refusal(write(tmp_path, text))


def test_the_alias_limit_grows_with_the_file() -> None:
    reused = "&big [" + ", ".join(["x"] * 1000) + "]"
    text = f"a: {reused}\nb: [{', '.join(['*big'] * 150)}]\n"  # 151,000 nodes once expanded
    with pytest.raises(YamlProblem, match=r"b\[98\] \(line 2\): alias \*big expands"):
        load_yaml(text)
    assert len(load_yaml(text + "#" * 160_000)["b"]) == 150  # one node per byte of the file


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(YamlProblem, match=r"a\[0\] \(line 1\): alias \*a refers to no anchor before it"):
        load_yaml("a: &a [*a]\n")


def test_merge_keys_and_plain_aliases_still_work() -> None:
    text = "base: &b {x: 1, y: 2}\nother: {<<: *b, y: 3}\nlist: [*b, *b]\nboth: {<<: [{x: 5}, *b], z: 0}\n"
    assert load_yaml(text) == {
        "base": {"x": 1, "y": 2},
        "other": {"x": 1, "y": 3},
        "list": [{"x": 1, "y": 2}, {"x": 1, "y": 2}],
        "both": {"x": 5, "y": 2, "z": 0},
    }


def test_scalars_are_typed_as_by_the_safe_loader() -> None:
    text = "a: 1\nb: '1'\nc: 1.5\nd: true\ne: ~\nf: 2024-01-02\ng: !!str 7\nh: -0x1F\ni: 'yes'\nj: yes\n"
    assert load_yaml(text) == {
        "a": 1,
        "b": "1",
        "c": 1.5,
        "d": True,
        "e": None,
        "f": datetime.date(2024, 1, 2),
        "g": "7",
        "h": -31,
        "i": "yes",
        "j": True,
    }
    assert load_yaml("") is None and load_yaml("# only a comment\n") is None
    with pytest.raises(YamlProblem, match=r"a \(line 1\): the YAML tag !custom is not supported"):
        load_yaml("a: !custom x\n")
    with pytest.raises(YamlProblem, match=r"line 2: a second YAML document"):
        load_yaml("a: 1\n---\nb: 2\n")


# ------------------------------------------------------------------------------------------------ nesting
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000])
def test_deep_nesting_is_refused_at_its_line(tmp_path: Path, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    message = refusal(write(tmp_path, PROJECT.replace("[1, 2, 3]", f"[1,\n  {nested}]")))
    where = "pipelines.example.tables.price.connectors[0].transport.config.plan[0].fields.part.values[1]"
    assert f"{where}" in message and f"(line {VALUES_LINE + 1}): nested deeper than {MAX_DEPTH} levels" in message
    assert len(message.splitlines()) == 2


def test_deep_block_nesting_is_refused() -> None:
    text = "".join(f"{'  ' * i}k{i}:\n" for i in range(300)) + "  " * 300 + "x\n"
    with pytest.raises(YamlProblem, match=rf"k98.k99 \(line {MAX_DEPTH + 1}\): nested deeper than {MAX_DEPTH} levels"):
        load_yaml(text)
    load_yaml("".join(f"{'  ' * i}k{i}:\n" for i in range(MAX_DEPTH - 1)) + "  " * (MAX_DEPTH - 1) + "x\n")


def test_an_alias_that_nests_too_deep_is_refused() -> None:
    deep = "[" * 60 + "]" * 60
    text = f"a: &deep {deep}\nb: {'[' * 45}*deep{']' * 45}\n"
    with pytest.raises(YamlProblem, match=r"\(line 2\): alias \*deep nests the document deeper than 100"):
        load_yaml(text)


# ------------------------------------------------------------------------------------------- duplicate keys
def test_a_repeated_pipeline_is_refused_naming_both_lines(tmp_path: Path) -> None:
    body = PROJECT.split("\n", 2)[2]
    message = refusal(write(tmp_path, PROJECT + "  example:\n" + body))
    assert "pipelines.example (lines 2 and 14): the key 'example' is given twice in one mapping" in message


def test_a_repeated_table_and_a_repeated_flow_key_are_refused(tmp_path: Path) -> None:
    tables = PROJECT.replace("      price:\n", "      price:\n        columns: {id: BIGINT}\n      price:\n", 1)
    message = refusal(write(tmp_path, tables))
    assert "pipelines.example.tables.price (lines 4 and 6)" in message
    flow = PROJECT.replace("{values: [1, 2, 3]}", "{values: [1], values: [2]}")
    message = refusal(write(tmp_path, flow))
    where = "pipelines.example.tables.price.connectors[0].transport.config.plan[0].fields.part.values"
    assert f"{where} (lines {VALUES_LINE} and {VALUES_LINE}): the key 'values' is given twice" in message


# ------------------------------------------------------------------------------------------ format config keys
FORMATTED = """\
pipelines:
  example:
    tables:
      price:
        connectors:
          - name: files
            transport:
              name: file_input
              config:
                path: prices.csv
            format:
              name: {name}
              config:
                {key}: {value}
"""


@pytest.mark.parametrize(
    ("name", "key", "value", "problem"),
    [
        ("csv", "delimter", "';'", "unknown key 'delimter'; did you mean 'delimiter'?"),
        ("json", "aray", "true", "unknown key 'aray'; did you mean 'array'?"),
        ("csv", "array", "true", "unknown key 'array'; remove it or check its spelling (allowed: header, delimiter)"),
        ("parquet", "header", "true", "unknown key 'header'; remove it or check its spelling (allowed: none)"),
    ],
)
def test_an_unknown_format_config_key_names_its_path_line_and_nearest_key(
    tmp_path: Path, name: str, key: str, value: str, problem: str
) -> None:
    (tmp_path / "prices.csv").write_text("id\n1\n")
    message = refusal(write(tmp_path, FORMATTED.format(name=name, key=key, value=value)))
    assert f"pipelines.example.tables.price.connectors[0].format.config.{key} (line 14): {problem}" in message


def test_every_unknown_format_config_key_is_named_beside_the_other_problems(tmp_path: Path) -> None:
    (tmp_path / "prices.csv").write_text("id\n1\n")
    text = FORMATTED.format(name="csv", key="hedaer", value="true") + "                delimiter: ';;'\n"
    message = refusal(write(tmp_path, text))
    where = "pipelines.example.tables.price.connectors[0].format.config"
    assert f"{where}.hedaer (line 14): unknown key 'hedaer'; did you mean 'header'?" in message
    assert f"{where}.delimiter (line 15): csv delimiter must be one character, got ';;'" in message


# ------------------------------------------------------------------------------------------------ encoding
def test_a_file_that_is_not_utf8_names_the_offset_and_line(tmp_path: Path) -> None:
    path = tmp_path / "connectors.yaml"
    path.write_bytes(PROJECT.replace("backfill", "b\xe4ckfill").encode("latin-1"))
    offset = PROJECT.index("backfill") + 1
    message = refusal(path)
    assert f"not UTF-8: byte 0xe4 at offset {offset} (line 6, column 20)" in message


# ----------------------------------------------------------------------------------------------- state_dir
def test_a_state_dir_under_a_regular_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    message = refusal(write(tmp_path, "state_dir: blocker/state\n" + PROJECT))
    assert f"state_dir (line 1): {tmp_path / 'blocker' / 'state'} cannot be created" in message
    assert f"{tmp_path / 'blocker'} is a file, not a folder" in message
    message = refusal(write(tmp_path, "state_dir: blocker\n" + PROJECT))
    assert f"state_dir (line 1): {tmp_path / 'blocker'} is a file, not a folder" in message


def test_the_default_state_dir_is_checked_too(tmp_path: Path) -> None:
    (tmp_path / ".connectors").write_text("")
    assert "state_dir: " in refusal(write(tmp_path, PROJECT))


def test_loading_creates_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "state_dir: new/deeper/state\n" + PROJECT)
    before = sorted(tmp_path.rglob("*"))
    assert load_project(path).resolve_state_dir() == tmp_path / "new" / "deeper" / "state"
    assert sorted(tmp_path.rglob("*")) == before


def test_dagster_and_the_cli_show_the_state_dir_refusal(tmp_path: Path) -> None:
    import dagster as dg
    from click.testing import CliRunner

    from connector_assets.definitions import load_project_for_dagster
    from connector_cli.main import cli

    (tmp_path / "blocker").write_text("")
    path = write(tmp_path, "state_dir: blocker/state\n" + PROJECT)
    with pytest.raises(dg.DagsterInvalidDefinitionError, match=r"state_dir \(line 1\): .* cannot be created"):
        load_project_for_dagster(path)
    result = CliRunner().invoke(cli, ["--project-file", str(path), "pipeline", "example", "stats"])
    assert result.exit_code == 2 and "state_dir (line 1)" in result.stderr and result.stdout == ""


# ----------------------------------------------------------------------------------------------- path clashes
SINK = "    sink: {kind: duckdb, path: SINK}\n"


def with_paths(state_dir: str, sink: str) -> str:
    return f"state_dir: {state_dir}\n" + PROJECT.replace("  example:\n", "  example:\n" + SINK.replace("SINK", sink))


@pytest.mark.parametrize("state_dir", ["w.duckdb", "w.duckdb/state", "./sub/../w.duckdb"])
def test_a_state_dir_at_or_in_the_duckdb_file_is_refused(tmp_path: Path, state_dir: str) -> None:
    message = refusal(write(tmp_path, with_paths(state_dir, "w.duckdb")))
    assert "state_dir (line 1): " in message
    assert f"is at or inside the DuckDB file of pipeline example (pipelines.example.sink.path: {tmp_path}" in message


def test_a_duckdb_file_inside_a_pipeline_state_folder_is_refused(tmp_path: Path) -> None:
    message = refusal(write(tmp_path, with_paths("state", "state/example/w.duckdb")))
    assert "pipelines.example.sink.path (line 4): " in message
    assert f"lies inside the state folder of pipeline example ({tmp_path / 'state' / 'example'})" in message
    two = with_paths("state", "state/other/w.duckdb") + PROJECT.split("\n", 1)[1].replace("example", "other")
    assert "lies inside the state folder of pipeline other" in refusal(write(tmp_path, two))


def test_a_state_dir_inside_an_existing_pipeline_state_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "old" / "example").mkdir(parents=True)
    (tmp_path / "old" / "example" / "pipeline.sqlite").write_bytes(b"")
    message = refusal(write(tmp_path, with_paths("old/example/nested", "w.duckdb")))
    assert f"state_dir (line 1): {tmp_path / 'old' / 'example' / 'nested'} is inside the state folder" in message
    assert f"{tmp_path / 'old' / 'example'} holds pipeline.sqlite" in message


def test_absolute_and_parent_paths_stay_allowed(tmp_path: Path) -> None:
    project_dir = tmp_path / "project"
    project_dir.mkdir()
    outside = tmp_path / "elsewhere" / "state"
    path = write(project_dir, with_paths("../elsewhere/state", str(tmp_path / "w.duckdb")))
    assert load_project(path).resolve_state_dir().resolve() == outside
    path = write(project_dir, with_paths(str(outside), "../w.duckdb"))
    assert load_project(path).resolve_state_dir() == outside
    parse_project(load_yaml(with_paths(str(outside), ".connectors/w.duckdb")), path=path)  # not a pipeline's folder


# ------------------------------------------------------------------------------------------------- scale
def test_a_long_start_after_chain_loads() -> None:
    tables = {
        f"t{i}": {"connectors": [{"name": "c", "transport": {"name": "datagen"}, "start_after": f"t{i - 1}.c"}]}
        for i in range(3000)
    }
    parse_project({"pipelines": {"p": {"tables": tables}}})
    tables["t0"]["connectors"][0]["start_after"] = "t2999.c"
    with pytest.raises(ProjectFileError, match="start_after cycle: t0.c waits for label 't2999.c' carried by t2999.c"):
        parse_project({"pipelines": {"p": {"tables": tables}}})


# ---------------------------------------------------------------------------------------- the command line
def test_the_cli_exits_2_on_a_bomb_within_seconds(tmp_path: Path) -> None:
    path = write(tmp_path, bomb(levels=12))
    env = {k: v for k, v in os.environ.items() if k != "CONNECTORS_PROJECT_FILE"}
    command = [sys.executable, "-m", "connector_cli.main", "--project-file", str(path), "pipeline", "example", "stats"]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=10, check=False)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert (
        "values[4][7] (line 19): alias *l3 expands the document" in result.stderr and "Traceback" not in result.stderr
    )
    assert elapsed < 10  # the goal is 2 s (imports included); measured in the report of the change
