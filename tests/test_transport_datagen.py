"""datagen: Feldera semantics, vectorised, resumable from a record count, repeatable by seed, rate honoured."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from connector_core.project import ConnectorSpec
from connector_core.transports import TransportContext, TransportError, open_transport
from connector_core.transports.datagen import DatagenReader


def reader(config: dict[str, Any], columns: dict[str, str] | None = None) -> DatagenReader:
    spec = ConnectorSpec.model_validate({"name": "gen", "transport": {"name": "datagen", "config": config}})
    context = TransportContext(
        pipeline="p",
        table="t",
        connector=spec,
        columns=columns,
        base_dir=Path.cwd(),
        clients=None,  # type: ignore[arg-type]
    )
    opened = open_transport(context)
    assert isinstance(opened, DatagenReader)
    return opened


def read_all(source: DatagenReader, batch: int, limit_reads: int = 10_000) -> pa.Table:
    position: Any = None
    tables = []
    for _ in range(limit_reads):
        result = source.read(position, batch)
        if result.data is not None:
            tables.append(result.data)
        position = result.position
        if result.end_of_input:
            return pa.concat_tables(tables)
    raise AssertionError("no end of input")


def test_increment_is_the_default_and_columns_without_fields_count_up() -> None:
    source = reader({"plan": [{"limit": 5, "fields": {"b": {"scale": 10}}}]}, {"a": "BIGINT", "b": "INTEGER"})
    table = read_all(source, 100)
    assert table.column("a").to_pylist() == [0, 1, 2, 3, 4]
    assert table.column("b").to_pylist() == [0, 10, 20, 30, 40]
    assert table.schema.field("b").type == pa.int32()


def test_values_cycle_in_order_and_range_wraps_half_open() -> None:
    config = {"plan": [{"limit": 7, "fields": {"v": {"values": [99, 100, 101]}, "r": {"range": [5, 8]}}}]}
    table = read_all(reader(config, {"v": "BIGINT", "r": "BIGINT"}), 3)
    assert table.column("v").to_pylist() == [99, 100, 101, 99, 100, 101, 99]
    assert table.column("r").to_pylist() == [5, 6, 7, 5, 6, 7, 5]


@pytest.mark.parametrize("strategy", ["uniform", "zipf"])
def test_random_strategies_stay_inside_the_half_open_range(strategy: str) -> None:
    config = {
        "seed": 7,
        "plan": [
            {
                "limit": 20_000,
                "fields": {
                    "i": {"strategy": strategy, "range": [10, 20]},
                    "f": {"strategy": strategy, "range": [0, 0.5]},
                    "s": {"strategy": strategy, "values": ["a", "b", "c"]},
                },
            }
        ],
    }
    table = read_all(reader(config, {"i": "BIGINT", "f": "DOUBLE", "s": "VARCHAR"}), 5_000)
    ints = table.column("i").to_pylist()
    assert set(ints) == set(range(10, 20))  # every value of [10, 20) appears, 20 never
    floats = table.column("f").to_pylist()
    assert min(floats) >= 0 and max(floats) < 0.5
    counts = {v: table.column("s").to_pylist().count(v) for v in "abc"}
    if strategy == "uniform":
        assert all(5_500 < n < 7_800 for n in counts.values()), counts
    else:  # zipf: rank 1 is the most frequent, and much more than rank 3
        assert counts["a"] > counts["b"] > counts["c"] and counts["a"] > 2 * counts["c"], counts
        assert ints.count(10) > ints.count(11) > ints.count(15)


def test_same_seed_same_rows_whatever_the_batch_size() -> None:
    config = {
        "seed": 42,
        "plan": [
            {
                "limit": 1_000,
                "fields": {"x": {"strategy": "uniform", "range": [0, 1_000_000]}, "n": {"null_percentage": 30}},
            },
            {"limit": 500, "fields": {"x": {"strategy": "zipf", "range": [0, 50]}}},
        ],
    }
    columns = {"x": "BIGINT", "n": "BIGINT"}
    whole = read_all(reader(config, columns), 10_000)
    pieces = read_all(reader(config, columns), 37)
    assert whole.num_rows == 1_500
    assert whole.equals(pieces)
    other_seed = read_all(reader({**config, "seed": 43}, columns), 10_000)
    assert not whole.equals(other_seed)
    nulls = whole.slice(0, 1_000).column("n").null_count
    assert 200 < nulls < 400


def test_restart_resumes_exactly_from_the_position() -> None:
    config = {"seed": 3, "plan": [{"limit": 100, "fields": {"x": {"strategy": "uniform", "range": [0, 10**9]}}}]}
    first = reader(config, {"x": "BIGINT"})
    head = first.read(None, 40)
    assert head.position == 40 and not head.end_of_input
    tail = read_all_from(reader(config, {"x": "BIGINT"}), head.position)
    assert pa.concat_tables([head.data, tail]).equals(read_all(reader(config, {"x": "BIGINT"}), 1000))


def read_all_from(source: DatagenReader, position: int) -> pa.Table:
    tables = []
    while True:
        result = source.read(position, 25)
        tables.append(result.data)
        position = result.position
        if result.end_of_input:
            return pa.concat_tables(tables)


def test_limits_end_the_input_and_an_endless_plan_never_does() -> None:
    limited = reader({"plan": [{"limit": 3}, {"limit": 2}]}, {"id": "BIGINT"})
    assert limited.can_finish
    table = read_all(limited, 2)
    assert table.column("id").to_pylist() == [0, 1, 2, 0, 1]
    after = limited.read(5, 10)
    assert after.end_of_input and after.data is None and after.position == 5

    endless = reader({"plan": [{"limit": 3}, {}]}, {"id": "BIGINT"})
    assert not endless.can_finish
    result = endless.read(3, 1_000)
    assert result.data.num_rows == 1_000 and not result.end_of_input


def test_types_from_columns() -> None:
    config = {
        "plan": [
            {
                "limit": 3,
                "fields": {
                    "s": {"range": [7, 100]},
                    "day": {"range": [19_723, 19_800]},
                    "at": {"range": [1_700_000_000_000, 1_800_000_000_000], "scale": 1_500},
                    "label": {"values": ["x", "y"]},
                    "when": {"values": ["2024-05-01", "2024-05-02"]},
                },
            }
        ]
    }
    columns = {
        "s": "VARCHAR",
        "flag": "BOOLEAN",
        "ratio": "DOUBLE",
        "day": "DATE",
        "at": "TIMESTAMP",
        "label": "STRING",
        "when": "DATE",
    }
    table = read_all(reader(config, columns), 10)
    assert table.column("s").to_pylist() == ["7", "8", "9"]
    assert table.column("flag").to_pylist() == [False, True, False]
    assert table.column("ratio").to_pylist() == [0.0, 1.0, 2.0]
    assert table.column("day").to_pylist()[0] == dt.date(2024, 1, 1)
    assert table.column("at").to_pylist()[1] == dt.datetime(2023, 11, 14, 22, 13, 21, 500_000)
    assert table.column("when").to_pylist() == [dt.date(2024, 5, 1), dt.date(2024, 5, 2), dt.date(2024, 5, 1)]


def test_without_columns_the_fields_define_them() -> None:
    config = {"plan": [{"limit": 2, "fields": {"n": {}, "x": {"range": [0.5, 2.5]}, "v": {"values": ["a"]}}}]}
    table = read_all(reader(config), 10)
    assert table.schema == pa.schema([("n", pa.int64()), ("x", pa.float64()), ("v", pa.string())])
    with pytest.raises(TransportError, match="columns"):
        reader({"plan": [{"limit": 2}]})


def test_values_that_do_not_fit_the_column_type_are_a_transport_error() -> None:
    source = reader({"plan": [{"limit": 2, "fields": {"n": {"values": ["one", "two"]}}}]}, {"n": "BIGINT"})
    with pytest.raises(TransportError, match="'n'"):
        source.read(None, 10)


def test_rate_is_honoured() -> None:
    source = reader({"plan": [{"rate": 200, "limit": 120}]}, {"id": "BIGINT"})
    started = time.monotonic()
    position: Any = None
    produced = 0
    while True:
        result = source.read(position, 1_000)
        produced += result.data.num_rows if result.data is not None else 0
        elapsed = time.monotonic() - started
        assert produced <= 200 * elapsed + 1  # never ahead of the rate
        position = result.position
        if result.end_of_input:
            break
    assert produced == 120
    assert time.monotonic() - started >= 0.5  # 120 records at 200/s take 0.6 s
