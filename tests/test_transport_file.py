"""file_input: whole lines from a byte offset, chunked, resumable; follow polls for appended lines."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clients_for_tests import read_until_end

from connector_core.project import ConnectorSpec
from connector_core.transports import TransportContext, TransportError, file_input, open_transport
from connector_core.transports.file_input import FileInputReader


def reader(base_dir: Path, config: dict[str, Any], fmt: dict[str, Any] | None = None) -> FileInputReader:
    spec = ConnectorSpec.model_validate(
        {"name": "f", "transport": {"name": "file_input", "config": config}, "format": fmt or {"name": "json"}}
    )
    context = TransportContext(
        pipeline="p",
        table="t",
        connector=spec,
        columns=None,
        base_dir=base_dir,
        clients=None,  # type: ignore[arg-type]
    )
    opened = open_transport(context)
    assert isinstance(opened, FileInputReader)
    return opened


def as_bytes(data: bytes | memoryview | None) -> bytes | None:
    """Line reads are views of the memory-mapped file; compare them as bytes."""
    return bytes(data) if isinstance(data, memoryview) else data


def test_chunks_end_at_newlines_and_rebuild_the_file(tmp_path: Path) -> None:
    lines = [f'{{"id": {i}, "pad": "{"x" * (i % 17)}"}}\n'.encode() for i in range(500)]
    (tmp_path / "in.json").write_bytes(b"".join(lines))
    results = read_until_end(reader(tmp_path, {"path": "in.json", "chunk_size": 1000}))
    assert len(results) > 10
    assert all(as_bytes(r.data).endswith(b"\n") and len(as_bytes(r.data)) <= 1000 for r in results)
    assert b"".join(as_bytes(r.data) for r in results) == b"".join(lines)
    assert [r.starts_object for r in results[:2]] == [True, False]
    assert results[-1].position == (tmp_path / "in.json").stat().st_size
    assert sum(r.bytes_read for r in results) == results[-1].position


def test_max_records_bounds_lines_per_read(tmp_path: Path) -> None:
    (tmp_path / "in.json").write_bytes(b"".join(b'{"id": %d}\n' % i for i in range(25)))
    results = read_until_end(reader(tmp_path, {"path": "in.json"}), max_records=10)
    assert [as_bytes(r.data).count(b"\n") for r in results] == [10, 10, 5]
    assert [r.end_of_input for r in results] == [False, False, True]


@pytest.mark.parametrize("block", [3, 7, 1 << 20])
def test_the_record_bound_cuts_at_the_right_newline_across_counting_blocks(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_input, "_COUNT_BLOCK", block)
    data = b"a\nbb\n\nccc\ndddd"  # 4 newlines, a last line without one
    for max_records, expected in [(1, b"a\n"), (3, b"a\nbb\n\n"), (4, b"a\nbb\n\nccc\n"), (5, data), (9, data)]:
        assert bytes(file_input._first_records(memoryview(data), max_records)) == expected, (block, max_records)


def test_last_line_without_newline_counts_at_end_of_file(tmp_path: Path) -> None:
    (tmp_path / "in.json").write_bytes(b'{"id": 1}\n{"id": 2}')
    results = read_until_end(reader(tmp_path, {"path": "in.json", "chunk_size": 12}))
    assert [as_bytes(r.data) for r in results] == [b'{"id": 1}\n', b'{"id": 2}']


def test_a_line_longer_than_the_chunk_is_read_whole(tmp_path: Path) -> None:
    long_line = b'{"text": "' + b"y" * 5000 + b'"}\n'
    (tmp_path / "in.json").write_bytes(b'{"a": 1}\n' + long_line + b'{"a": 2}\n')
    results = read_until_end(reader(tmp_path, {"path": "in.json", "chunk_size": 64}))
    assert [as_bytes(r.data) for r in results] == [b'{"a": 1}\n', long_line, b'{"a": 2}\n']


def test_restart_resumes_from_the_stored_offset(tmp_path: Path) -> None:
    (tmp_path / "in.json").write_bytes(b"".join(b'{"id": %d}\n' % i for i in range(100)))
    first = reader(tmp_path, {"path": "in.json"}).read(None, 30)
    again = reader(tmp_path, {"path": "in.json"}).read(first.position, 1_000)
    assert as_bytes(first.data).count(b"\n") == 30 and as_bytes(again.data).count(b"\n") == 70
    assert as_bytes(again.data).startswith(b'{"id": 30}\n') and again.end_of_input and not again.starts_object


def test_follow_never_ends_and_picks_up_appended_lines(tmp_path: Path) -> None:
    path = tmp_path / "live.json"
    path.write_bytes(b'{"id": 1}\n{"id": 2')  # the writer is in the middle of line 2
    source = reader(tmp_path, {"path": str(path), "follow": True})
    assert not source.can_finish
    first = source.read(None, 100)
    assert as_bytes(first.data) == b'{"id": 1}\n' and not first.end_of_input
    idle = source.read(first.position, 100)
    assert idle.data is None and idle.position == first.position and not idle.end_of_input
    with open(path, "ab") as out:
        out.write(b'}\n{"id": 3}\n')
    more = source.read(idle.position, 100)
    assert as_bytes(more.data) == b'{"id": 2}\n{"id": 3}\n' and not more.end_of_input


def test_missing_file_is_a_transport_error_naming_the_path(tmp_path: Path) -> None:
    source = reader(tmp_path, {"path": "nope/missing.json"})
    with pytest.raises(TransportError, match=r"nope/missing\.json"):
        source.read(None, 10)


def test_a_file_shorter_than_the_offset_is_a_transport_error(tmp_path: Path) -> None:
    (tmp_path / "in.json").write_bytes(b'{"id": 1}\n')
    with pytest.raises(TransportError, match="truncated"):
        reader(tmp_path, {"path": "in.json"}).read(500, 10)


def test_parquet_and_json_arrays_are_read_whole(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": [1, 2, 3]}), buffer)
    (tmp_path / "in.parquet").write_bytes(buffer.getvalue())
    parquet = reader(tmp_path, {"path": "in.parquet", "chunk_size": 10}, {"name": "parquet"})
    results = read_until_end(parquet)
    assert len(results) == 1 and results[0].data == buffer.getvalue() and results[0].position is True
    assert parquet.read(True, 10).data is None

    (tmp_path / "array.json").write_bytes(b'[\n  {"id": 1},\n  {"id": 2}\n]\n')
    results = read_until_end(reader(tmp_path, {"path": "array.json", "chunk_size": 8}))
    assert [r.data for r in results] == [b'[\n  {"id": 1},\n  {"id": 2}\n]\n']
