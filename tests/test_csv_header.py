"""A CSV object read in several pieces: every piece after the first carries the object's header line, in each byte
transport, within one run and after a restart; ingestion maps the fields by name whatever the declared order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from clients_for_tests import RealClients, open_pipeline, open_reader, read_until_end, run_to_end

from connector_core.transports.base import TransportReader

HEADER = b"extra,price,name,id\n"
ROWS = 60
CSV_FORMAT = {"name": "csv"}


def csv_body() -> bytes:
    return HEADER + b"".join(f"x{i},{i / 4},name {i},{i}\n".encode() for i in range(ROWS))


def check_pieces(open_new: Callable[[], TransportReader]) -> None:
    """Pieces of 7 records: the first starts the object, the others carry its header; so does a piece read by a
    new reader (a restart) from the middle."""
    reader = open_new()
    results = [r for r in read_until_end(reader, max_records=7) if r.data]
    reader.close()
    assert b"".join(bytes(r.data) for r in results) == csv_body()
    assert len(results) > 3
    assert (results[0].starts_object, results[0].header) == (True, None)
    assert all(not r.starts_object and r.header == HEADER for r in results[1:])

    restarted = open_new()
    middle = restarted.read(results[2].position, 7)
    restarted.close()
    assert middle.data == results[3].data and middle.header == HEADER


def test_file_input(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_bytes(csv_body())
    check_pieces(lambda: open_reader("file_input", {"path": "items.csv"}, CSV_FORMAT, base_dir=tmp_path))


def test_s3_input(s3_endpoint: str, s3_bucket: str) -> None:
    clients = RealClients(s3_endpoint=s3_endpoint)
    clients.s3_client(None).put_object(Bucket=s3_bucket, Key="items.csv", Body=csv_body())
    config = {"bucket": s3_bucket, "key": "items.csv", "chunk_size": 200}
    check_pieces(lambda: open_reader("s3_input", config, CSV_FORMAT, clients=clients))


@pytest.mark.parametrize("accept_ranges", [True, False], ids=["range-resume", "server-ignores-ranges"])
def test_url_input(http_server: Any, accept_ranges: bool) -> None:
    http_server.accept_ranges = accept_ranges
    (http_server.directory / "items.csv").write_bytes(csv_body())
    check_pieces(lambda: open_reader("url_input", {"path": http_server.url("items.csv")}, CSV_FORMAT))


def test_command(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_bytes(csv_body())
    config = {"command": ["cat", "items.csv"]}
    check_pieces(lambda: open_reader("command", config, CSV_FORMAT, base_dir=tmp_path))


def test_no_header_is_looked_for_without_a_header_line(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_bytes(csv_body())
    fmt = {"name": "csv", "config": {"header": False}}
    reader = open_reader("file_input", {"path": "items.csv"}, fmt, base_dir=tmp_path)
    assert all(r.header is None for r in read_until_end(reader, max_records=7))


def test_batches_from_the_middle_map_fields_by_name(tmp_path: Path, session_factory: Any) -> None:
    """Declared columns in another order than the file's, and a column the table does not have: every batch
    (and the batches after a new session, as after a restart) lands each field in its column."""
    (tmp_path / "items.csv").write_bytes(csv_body())
    tables = {
        "items": {
            "columns": {"id": "BIGINT", "name": "VARCHAR", "price": "DOUBLE"},
            "connectors": [
                {
                    "name": "file",
                    "max_batch_size": 7,
                    "format": CSV_FORMAT,
                    "transport": {"name": "file_input", "config": {"path": "items.csv"}},
                }
            ],
        }
    }
    pipeline = open_pipeline(tmp_path, tables)
    first = session_factory(pipeline)
    for _ in range(3):
        first.ingest_table("items")
    first.close()
    run_to_end(session_factory(pipeline), "items")
    frame = session_factory(pipeline).sink.read_table("items").sort_values("id")
    assert frame["id"].tolist() == list(range(ROWS))
    assert frame["name"].tolist() == [f"name {i}" for i in range(ROWS)]
    assert frame["price"].tolist() == [i / 4 for i in range(ROWS)]
    assert pipeline.connector("items", "file").state.metrics().num_parse_errors == 0
    pipeline.close()
