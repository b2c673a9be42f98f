"""End-to-end batches through a Pipeline into a DuckDB sink: parse errors, processors, gating, reconciliation."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from clients_for_tests import DuckDBClients, open_pipeline, run_to_end

from connector_core.ingest import IngestSession
from connector_core.state import ConnectorState

pytestmark = pytest.mark.usefixtures("state_backend")  # every test runs on SQLite state and on PostgreSQL state


def file_connector(path: str, reader: str = "auto", **extra: Any) -> dict[str, Any]:
    return {
        "name": "file",
        "transport": {"name": "file_input", "config": {"path": path}},
        "format": {"name": "json", "config": {"reader": reader}},
        **extra,
    }


@pytest.mark.parametrize(
    ("reader", "reason"),
    [("auto", lambda n: f'"bad {n}"'), ("arrow", lambda n: "string")],
    ids=["duckdb-reader", "arrow-reader"],
)
def test_malformed_records_are_counted_the_last_100_kept_and_the_rest_lands(
    tmp_path: Path, session_factory: Any, reader: str, reason: Any
) -> None:
    bad_lines = set(range(3, 1_000, 7))  # 143 malformed records spread over every batch
    lines = [
        f'{{"id": "bad {n}"}}' if n in bad_lines else json.dumps({"id": n, "name": f"item {n}", "price": n / 10})
        for n in range(1_000)
    ]
    (tmp_path / "items.json").write_text("\n".join(lines) + "\n")
    pipeline = open_pipeline(
        tmp_path,
        {
            "items": {
                "columns": {"id": "BIGINT", "name": "VARCHAR", "price": "DOUBLE"},
                "connectors": [file_connector("items.json", reader=reader, max_batch_size=300)],
            }
        },
    )
    session = session_factory(pipeline)
    reports = run_to_end(session, "items")
    assert [sum(b.records for b in r.batches) for r in reports] == [
        min(300, 1_000 - lo) - len([n for n in bad_lines if lo <= n < lo + 300]) for lo in (0, 300, 600, 900)
    ]
    frame = session.sink.read_table("items")
    assert sorted(frame["id"]) == [n for n in range(1_000) if n not in bad_lines]
    assert reports[-1].row_count == 1_000 - len(bad_lines)

    handle = pipeline.connector("items", "file")
    stats = pipeline.stats(handle)
    assert stats["metrics"]["total_records"] == 1_000 - len(bad_lines)
    assert stats["metrics"]["num_parse_errors"] == len(bad_lines)
    assert stats["metrics"]["end_of_input"] is True
    assert stats["metrics"]["total_bytes"] == (tmp_path / "items.json").stat().st_size
    expected_indices = [n % 300 for n in sorted(bad_lines)][-100:]  # index = record number within its batch
    assert [e["index"] for e in stats["parse_errors"]] == expected_indices
    kept = sorted(bad_lines)[-100:]
    assert all(reason(n) in e["message"] for n, e in zip(kept, stats["parse_errors"], strict=True))

    hourly = [row for row in pipeline.hourly_stats() if row["connector"] == "items.file"]
    assert sum(row["records"] for row in hourly) == 1_000 - len(bad_lines)
    assert sum(row["parse_errors"] for row in hourly) == len(bad_lines)
    assert sum(row["bytes"] for row in hourly) == stats["metrics"]["total_bytes"]
    pipeline.close()


@pytest.mark.parametrize(("reader", "ids"), [("auto", [1, 2, 12]), ("arrow", [1, 2])])
def test_the_duckdb_sink_reads_json_by_duckdb_s_rules_unless_the_arrow_reader_is_asked_for(
    tmp_path: Path, session_factory: Any, reader: str, ids: list[int]
) -> None:
    """DuckDB casts the string "12" into BIGINT; pyarrow's reader rejects it. Lines and arrays follow the same
    rules, whether or not the piece holds a malformed record."""
    (tmp_path / "lines.json").write_text('{"id": 1}\n{"id": "12"}\n{"id": 2}\n')
    (tmp_path / "array.json").write_text('[{"id": 1}, {"id": "12"}, {"id": 2}]')
    (tmp_path / "broken.json").write_text('{"id": 1}\n{"id": "12"}\n{"id": 2\n{"id": 2}\n')
    pipeline = open_pipeline(
        tmp_path,
        {
            name: {"columns": {"id": "BIGINT"}, "connectors": [file_connector(f"{name}.json", reader=reader)]}
            for name in ("lines", "array", "broken")
        },
    )
    session = session_factory(pipeline)
    for name in ("lines", "array", "broken"):
        run_to_end(session, name)
        assert sorted(session.sink.read_table(name)["id"]) == ids, name
        expected_errors = 3 - len(ids) + (name == "broken")
        assert pipeline.connector(name, "file").state.metrics().num_parse_errors == expected_errors, name
    pipeline.close()


@pytest.mark.parametrize(
    ("fmt", "body"),
    [
        ({"name": "json", "config": {"reader": "arrow"}}, b'{"id": 1}\n{"id": 2, "name": "b\xffc"}\n{"id": 3}\n'),
        ({"name": "json"}, b'{"id": 1}\n{"id": 2, "name": "b\xffc"}\n{"id": 3}\n'),
        ({"name": "json"}, b'[{"id": 1}, {"id": 2, "name": "b\xffc"}, {"id": 3}]'),
        ({"name": "csv"}, b"id,name\n1,a\n2,b\xffc\n3,c\n"),
    ],
    ids=["json-arrow", "json-duckdb", "json-array", "csv"],
)
def test_a_record_that_is_not_utf8_is_a_parse_error_and_the_connector_moves_on(
    tmp_path: Path, session_factory: Any, fmt: dict[str, Any], body: bytes
) -> None:
    """It used to reach DuckDB's insert, fail there behind "transaction is aborted" and stop the connector for good."""
    (tmp_path / "in.dat").write_bytes(body)
    connector = {"name": "file", "transport": {"name": "file_input", "config": {"path": "in.dat"}}, "format": fmt}
    pipeline = open_pipeline(
        tmp_path, {"t": {"columns": {"id": "BIGINT", "name": "VARCHAR"}, "connectors": [connector]}}
    )
    session = session_factory(pipeline)
    batch = session.ingest_table("t").batches[0]
    assert (batch.records, batch.parse_errors, batch.error, batch.end_of_input) == (2, 1, None, True)
    assert sorted(session.sink.read_table("t")["id"]) == [1, 3]
    handle = pipeline.connector("t", "file")
    assert handle.state.position()[1] == 1 and handle.state.metrics().num_parse_errors == 1
    assert [e["index"] for e in pipeline.stats(handle)["parse_errors"]] == [1]
    pipeline.close()


def test_duckdb_without_file_access_reads_json_with_pyarrow(tmp_path: Path) -> None:
    (tmp_path / "lines.json").write_text('{"id": 1}\n{"id": "12"}\n{"id": 2}\n')
    pipeline = open_pipeline(
        tmp_path, {"lines": {"columns": {"id": "BIGINT"}, "connectors": [file_connector("lines.json")]}}
    )
    clients = DuckDBClients(tmp_path / "closed.duckdb", {"enable_external_access": False})
    with IngestSession(pipeline, clients, log=lambda _: None) as session:  # type: ignore[arg-type]
        run_to_end(session, "lines")
        assert sorted(session.sink.read_table("lines")["id"]) == [1, 2]  # pyarrow's rules: "12" is an error
    assert pipeline.connector("lines", "file").state.metrics().num_parse_errors == 1
    pipeline.close()


def test_nothing_is_ingested_unless_the_pipeline_is_started_and_the_connector_running(
    tmp_path: Path, session_factory: Any
) -> None:
    (tmp_path / "a.json").write_text('{"id": 1}\n')
    pipeline = open_pipeline(
        tmp_path,
        {
            "t": {
                "connectors": [file_connector("a.json"), {**file_connector("a.json"), "name": "later", "paused": True}]
            }
        },
        status="PAUSED",
    )
    session = session_factory(pipeline)
    report = session.ingest_table("t")
    assert report.batches == [] and "PAUSED" in report.skipped_reason and "not STARTED" in report.skipped_reason
    skipped = session.ingest_batch(pipeline.connector("t", "file"))
    assert skipped.records == 0 and "PAUSED" in skipped.skipped_reason

    with pipeline.state.transaction() as conn:
        pipeline.state.put(conn, "status", "STARTED")
    assert "Paused" in session.ingest_batch(pipeline.connector("t", "later")).skipped_reason
    first = session.ingest_table("t")
    assert [b.endpoint for b in first.batches] == ["t.file"] and first.row_count == 1
    done = session.ingest_table("t")
    assert done.batches == [] and "paused" in done.skipped_reason.lower() and "finished" in done.skipped_reason

    pipeline.connector("t", "file").state.set_running(False, "test")
    assert "every connector of table t is paused" in session.ingest_table("t").skipped_reason
    pipeline.close()


def test_datagen_table_is_created_from_the_first_batch(tmp_path: Path, session_factory: Any) -> None:
    pipeline = open_pipeline(
        tmp_path,
        {
            "gen": {
                "connectors": [
                    {
                        "name": "dg",
                        "max_batch_size": 40,
                        "transport": {
                            "name": "datagen",
                            "config": {
                                "seed": 1,
                                "plan": [
                                    {"limit": 100, "fields": {"k": {"range": [0, 5]}, "label": {"values": ["a", "b"]}}}
                                ],
                            },
                        },
                    }
                ]
            }
        },
    )
    session = session_factory(pipeline)
    reports = run_to_end(session, "gen")
    assert [r.batches[0].records for r in reports] == [40, 40, 20]
    assert reports[-1].batches[0].end_of_input
    assert "finished" in session.ingest_table("gen").skipped_reason
    frame = session.sink.read_table("gen").sort_values("k", kind="stable")
    assert list(frame.columns) == ["k", "label"]
    assert sorted(frame["k"].tolist()) == sorted([n % 5 for n in range(100)])
    assert pipeline.stats(pipeline.connector("gen", "dg"))["metrics"]["total_records"] == 100
    pipeline.close()


def test_python_and_command_processors_run_in_order(tmp_path: Path, session_factory: Any) -> None:
    (tmp_path / "steps_for_test_ingest.py").write_text(
        "import pyarrow.compute as pc\ndef keep_cheap(table):\n    return table.filter(pc.less(table['price'], 5))\n"
    )
    doubler = (
        "import sys, json\nfor line in sys.stdin:\n    r = json.loads(line); r['price'] *= 2; print(json.dumps(r))\n"
    )
    (tmp_path / "p.json").write_text("".join(json.dumps({"id": i, "price": i}) + "\n" for i in range(10)))
    pipeline = open_pipeline(
        tmp_path,
        {
            "t": {
                "columns": {"id": "BIGINT", "price": "DOUBLE"},
                "connectors": [
                    file_connector(
                        "p.json",
                        processors=[
                            {"kind": "python", "function": "steps_for_test_ingest:keep_cheap"},
                            {"kind": "command", "command": [sys.executable, "-c", doubler]},
                        ],
                    )
                ],
            }
        },
    )
    session = session_factory(pipeline)
    report = session.ingest_table("t")
    assert report.batches[0].records == 5
    frame = session.sink.read_table("t").sort_values("id")
    assert frame["price"].tolist() == [0, 2, 4, 6, 8]
    pipeline.close()


def test_a_failing_command_processor_is_reported_and_the_batch_retried(tmp_path: Path, session_factory: Any) -> None:
    (tmp_path / "p.json").write_text('{"id": 1}\n')
    pipeline = open_pipeline(
        tmp_path,
        {
            "t": {
                "columns": {"id": "BIGINT"},
                "connectors": [
                    file_connector(
                        "p.json",
                        processors=[{"kind": "command", "command": [sys.executable, "-c", "import sys; sys.exit(3)"]}],
                    )
                ],
            }
        },
    )
    session = session_factory(pipeline)
    report = session.ingest_table("t").batches[0]
    assert report.records == 0 and report.transport_errors == 1 and "exited with 3" in report.error
    handle = pipeline.connector("t", "file")
    assert handle.state.position() == (None, 0)
    assert handle.state.metrics().num_transport_errors == 1
    pipeline.close()


def test_a_transport_error_is_counted_not_raised(tmp_path: Path, session_factory: Any) -> None:
    pipeline = open_pipeline(tmp_path, {"t": {"connectors": [file_connector("does-not-exist.json")]}})
    session = session_factory(pipeline)
    report = session.ingest_table("t")
    batch = report.batches[0]
    assert batch.transport_errors == 1 and "does-not-exist.json" in batch.error
    metrics = pipeline.connector("t", "file").state.metrics()
    assert metrics.num_transport_errors == 1 and metrics.total_records == 0
    (tmp_path / "does-not-exist.json").write_text('{"id": 5}\n')
    assert session.ingest_table("t").batches[0].records == 1  # the transport is reopened
    pipeline.close()


def test_a_crash_between_sink_commit_and_state_commit_is_caught_up(
    tmp_path: Path, session_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in.json").write_text("".join(f'{{"id": {i}}}\n' for i in range(50)))
    pipeline = open_pipeline(
        tmp_path, {"t": {"columns": {"id": "BIGINT"}, "connectors": [file_connector("in.json", max_batch_size=20)]}}
    )
    handle = pipeline.connector("t", "file")
    session = session_factory(pipeline)
    session.ingest_batch(handle)

    state_class = type(handle.state)  # the backend's
    real_commit = state_class.commit_batch

    def crash(self: ConnectorState, batch: Any) -> None:
        raise KeyboardInterrupt("killed after the sink commit")

    monkeypatch.setattr(state_class, "commit_batch", crash)
    with pytest.raises(KeyboardInterrupt):
        session.ingest_batch(handle)
    monkeypatch.setattr(state_class, "commit_batch", real_commit)
    assert handle.state.position()[1] == 1  # the state database missed batch 2 ...
    assert session.sink.mark(handle.connector_id).batch_seq == 2  # ... which the sink holds

    fresh = session_factory(pipeline)
    while not handle.state.metrics().finished:
        fresh.ingest_batch(handle)
    ids = fresh.sink.read_table("t")["id"].tolist()
    assert sorted(ids) == list(range(50))
    metrics = handle.state.metrics()
    assert metrics.total_records == 50
    assert metrics.total_bytes == (tmp_path / "in.json").stat().st_size
    assert handle.state.position() == (fresh.sink.mark(handle.connector_id).position, 3)
    pipeline.close()
