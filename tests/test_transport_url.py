"""url_input against a real HTTP server: pieces at newlines, byte positions, Range resume, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from clients_for_tests import open_reader, read_until_end

from connector_core.transports.base import TransportError, TransportReader


def url_reader(url: str, chunk_size: int = 1000, fmt: dict[str, Any] | None = None, **config: Any) -> TransportReader:
    return open_reader("url_input", {"path": url, "chunk_size": chunk_size, **config}, fmt or {"name": "json"})


@pytest.fixture
def body(http_server: Any) -> bytes:
    data = b"".join(json.dumps({"i": i, "pad": "x" * (i % 7)}).encode() + b"\n" for i in range(500))
    (http_server.directory / "data.json").write_bytes(data)
    return data


def test_whole_body_in_bounded_pieces_ending_at_newlines(http_server: Any, body: bytes) -> None:
    reader = url_reader(http_server.url("data.json"), chunk_size=1000)
    results = read_until_end(reader)
    reader.close()
    pieces = [r.data for r in results if r.data]
    assert b"".join(pieces) == body
    assert len(pieces) > 10
    assert all(isinstance(p, bytes) and p.endswith(b"\n") and len(p) <= 1000 for p in pieces)
    offsets = [r.position for r in results]
    assert offsets == sorted(offsets) and offsets[-1] == len(body)
    assert [r.starts_object for r in results if r.data] == [True] + [False] * (len(pieces) - 1)
    assert [r.end_of_input for r in results] == [False] * (len(results) - 1) + [True]
    assert sum(r.bytes_read for r in results) == len(body)
    assert len(http_server.requests) == 1  # one streamed GET for the whole body


def test_max_records_bounds_a_piece(http_server: Any, body: bytes) -> None:
    reader = url_reader(http_server.url("data.json"), chunk_size=1 << 20)
    first = reader.read(None, 7)
    assert first.data is not None and first.data.count(b"\n") == 7
    assert first.position == len(first.data) and not first.end_of_input
    assert first.buffered_records > 0
    rest = read_until_end(reader, first.position, max_records=100)
    reader.close()
    assert first.data + b"".join(r.data for r in rest if r.data) == body
    assert all(r.data.count(b"\n") <= 100 for r in rest if r.data)


@pytest.mark.parametrize("accept_ranges", [True, False])
def test_resume_after_restart_reads_only_the_rest(http_server: Any, body: bytes, accept_ranges: bool) -> None:
    http_server.accept_ranges = accept_ranges
    reader = url_reader(http_server.url("data.json"))
    first = reader.read(None, 50)
    reader.close()  # the process "restarts": a new reader gets the stored position
    resumed = url_reader(http_server.url("data.json"))
    rest = read_until_end(resumed, first.position)
    resumed.close()
    assert first.data + b"".join(r.data for r in rest if r.data) == body
    assert not rest[0].starts_object
    path, headers = http_server.requests[-1]
    assert headers.get("Range") == f"bytes={first.position}-"


@pytest.mark.parametrize("accept_ranges", [True, False])
def test_resume_at_the_end_is_end_of_input(http_server: Any, body: bytes, accept_ranges: bool) -> None:
    http_server.accept_ranges = accept_ranges
    reader = url_reader(http_server.url("data.json"))
    result = reader.read(len(body), 100)
    reader.close()
    assert result.end_of_input and result.data is None and result.position == len(body)


def test_position_beyond_a_shrunk_body_is_an_error(http_server: Any, body: bytes) -> None:
    http_server.accept_ranges = False
    reader = url_reader(http_server.url("data.json"))
    with pytest.raises(TransportError, match="fewer than the stored position"):
        reader.read(len(body) + 10, 100)


def test_last_line_without_newline_is_delivered(http_server: Any) -> None:
    (http_server.directory / "tail.json").write_bytes(b'{"a": 1}\n{"a": 2}')
    results = read_until_end(url_reader(http_server.url("tail.json")))
    assert b"".join(r.data for r in results if r.data) == b'{"a": 1}\n{"a": 2}'
    assert results[-1].end_of_input and results[-1].position == 17


def test_json_array_body_comes_whole(http_server: Any) -> None:
    data = json.dumps([{"i": i} for i in range(300)], indent=1).encode()
    (http_server.directory / "array.json").write_bytes(data)
    reader = url_reader(http_server.url("array.json"), chunk_size=100, fmt={"name": "json", "config": {"array": True}})
    result = reader.read(None, 10)
    assert result.data == data and result.end_of_input and result.starts_object


def test_json_array_is_detected_without_array_flag(http_server: Any) -> None:
    data = b"  \n" + json.dumps([{"i": i} for i in range(300)], indent=1).encode()
    (http_server.directory / "array.json").write_bytes(data)
    results = read_until_end(url_reader(http_server.url("array.json"), chunk_size=100), max_records=5)
    assert [r.data for r in results] == [data] and results[0].starts_object and results[0].end_of_input


@pytest.mark.parametrize("status", [404, 500])
def test_non_2xx_names_url_and_status(http_server: Any, status: int) -> None:
    http_server.respond("broken.json", status, b"nope")
    url = http_server.url("broken.json")
    with pytest.raises(TransportError) as info:
        url_reader(url).read(None, 10)
    assert url in str(info.value) and f"HTTP {status}" in str(info.value)


def test_missing_file_is_404(http_server: Any) -> None:
    with pytest.raises(TransportError, match="HTTP 404"):
        url_reader(http_server.url("missing.json")).read(None, 10)


def test_unreachable_server_names_url() -> None:
    from fixtures_services import free_port

    url = f"http://127.0.0.1:{free_port()}/data.json"
    with pytest.raises(TransportError) as info:
        url_reader(url, timeout_seconds=5).read(None, 10)
    assert url in str(info.value) and "refused" in str(info.value).lower()


def test_headers_are_sent_and_env_secrets_resolved(
    http_server: Any, body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("URL_TOKEN", "s3cret")
    reader = url_reader(http_server.url("data.json"), headers={"Authorization": {"env": "URL_TOKEN"}, "X-Plain": "yes"})
    reader.read(None, 1)
    reader.close()
    _, headers = http_server.requests[-1]
    assert headers["Authorization"] == "s3cret" and headers["X-Plain"] == "yes"
