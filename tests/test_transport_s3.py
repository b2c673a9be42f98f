"""s3_input against moto's S3 server through dagster-aws ``S3Resource``: key order, ranges, resume, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from clients_for_tests import RealClients, open_reader, read_until_end

from connector_core.transports.base import ReadResult, TransportError, TransportReader


@pytest.fixture
def clients(s3_endpoint: str) -> RealClients:
    return RealClients(s3_endpoint=s3_endpoint)


@pytest.fixture
def bucket(s3_bucket: str) -> str:
    return s3_bucket


def put(clients: RealClients, bucket: str, key: str, body: bytes) -> None:
    clients.s3_client(None).put_object(Bucket=bucket, Key=key, Body=body)


def s3_reader(clients: RealClients, fmt: str = "json", **config: Any) -> TransportReader:
    return open_reader("s3_input", config, {"name": fmt}, clients=clients)


def read_all(reader: TransportReader, position: Any = None, max_records: int = 10_000) -> list[ReadResult]:
    """Read until end of input, each position passed through JSON first, as the sink stores it."""
    return read_until_end(reader, position, max_records, as_stored=True)


def csv(rows: range) -> bytes:
    return b"id,name\n" + b"".join(f"{i},n{i}\n".encode() for i in rows)


def test_objects_under_prefix_in_key_order_one_per_read(clients: RealClients, bucket: str) -> None:
    put(clients, bucket, "in/2024-01-02.csv", csv(range(3, 6)))
    put(clients, bucket, "in/2024-01-01.csv", csv(range(0, 3)))
    put(clients, bucket, "in/sub/", b"")  # a folder marker
    put(clients, bucket, "other/x.csv", csv(range(100, 101)))
    results = read_all(s3_reader(clients, fmt="csv", bucket=bucket, prefix="in/"))
    assert [r.data for r in results] == [csv(range(0, 3)), csv(range(3, 6))]
    assert all(r.starts_object for r in results)
    assert [r.position for r in results] == [
        {"after": "in/2024-01-01.csv", "offset": 0},
        {"after": "in/2024-01-02.csv", "offset": 0},
    ]
    assert [r.end_of_input for r in results] == [False, True]
    assert [r.bytes_read for r in results] == [len(csv(range(0, 3))), len(csv(range(3, 6)))]


def test_large_object_in_ranges_cut_at_newlines(clients: RealClients, bucket: str) -> None:
    body = b"".join(json.dumps({"i": i, "pad": "y" * (i % 13)}).encode() + b"\n" for i in range(2000))
    put(clients, bucket, "big/data.json", body)
    results = read_all(s3_reader(clients, bucket=bucket, prefix="big/", chunk_size=4096))
    pieces = [r.data for r in results]
    assert b"".join(pieces) == body
    assert len(pieces) > 10 and all(p.endswith(b"\n") and len(p) <= 4096 for p in pieces)
    assert [r.starts_object for r in results] == [True] + [False] * (len(results) - 1)
    middle = results[0].position
    assert middle == {"after": None, "key": "big/data.json", "offset": len(pieces[0])}
    assert results[-1].position == {"after": "big/data.json", "offset": 0} and results[-1].end_of_input


def test_max_records_bounds_a_piece(clients: RealClients, bucket: str) -> None:
    put(clients, bucket, "k.json", b"".join(b'{"i": %d}\n' % i for i in range(100)))
    result = s3_reader(clients, bucket=bucket, key="k.json").read(None, 30)
    assert result.data is not None and result.data.count(b"\n") == 30
    assert result.position == {"after": None, "key": "k.json", "offset": len(result.data)}


def test_resume_inside_an_object_and_after_it(clients: RealClients, bucket: str) -> None:
    first_body = b"".join(b'{"a": %d}\n' % i for i in range(500))
    put(clients, bucket, "p/1.json", first_body)
    put(clients, bucket, "p/2.json", b'{"b": 1}\n')
    reader = s3_reader(clients, bucket=bucket, prefix="p/", chunk_size=1000)
    first = reader.read(None, 10_000)
    # A restart: a new reader continues from the stored position.
    rest = read_all(s3_reader(clients, bucket=bucket, prefix="p/", chunk_size=1000), first.position)
    assert first.data + b"".join(r.data for r in rest if r.data) == first_body + b'{"b": 1}\n'
    assert rest[-1].data == b'{"b": 1}\n' and rest[-1].starts_object
    assert not rest[0].starts_object


def test_listing_at_read_time_finds_new_objects(clients: RealClients, bucket: str) -> None:
    put(clients, bucket, "log/001.json", b'{"n": 1}\n')
    reader = s3_reader(clients, bucket=bucket, prefix="log/")
    done = read_all(reader)
    assert done[-1].end_of_input
    put(clients, bucket, "log/002.json", b'{"n": 2}\n')
    more = read_all(reader, done[-1].position)
    assert [r.data for r in more] == [b'{"n": 2}\n'] and more[-1].end_of_input
    again = reader.read(more[-1].position, 10)
    assert again.end_of_input and again.data is None and again.position == more[-1].position


def test_empty_prefix_is_end_of_input(clients: RealClients, bucket: str) -> None:
    result = s3_reader(clients, bucket=bucket, prefix="nothing/").read(None, 10)
    assert result.end_of_input and result.data is None


def test_single_key_without_trailing_newline(clients: RealClients, bucket: str) -> None:
    put(clients, bucket, "one.json", b'{"x": 1}\n{"x": 2}')
    put(clients, bucket, "one.json.bak", b'{"x": 3}\n')
    results = read_all(s3_reader(clients, bucket=bucket, key="one.json", chunk_size=10))
    assert b"".join(r.data for r in results) == b'{"x": 1}\n{"x": 2}'
    assert results[-1].position == {"after": "one.json", "offset": 0}


def test_parquet_objects_come_whole(clients: RealClients, bucket: str) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table({"v": list(range(1000))}), sink)
    put(clients, bucket, "pq/a.parquet", sink.getvalue())
    result = s3_reader(clients, fmt="parquet", bucket=bucket, prefix="pq/", chunk_size=100).read(None, 10)
    assert result.data == sink.getvalue() and result.end_of_input
    assert pq.read_table(io.BytesIO(result.data)).column("v").to_pylist() == list(range(1000))


def test_json_array_objects_come_whole(clients: RealClients, bucket: str) -> None:
    array = json.dumps([{"i": i} for i in range(200)], indent=1).encode()
    put(clients, bucket, "arr/1.json", array)
    put(clients, bucket, "arr/2.json", b'{"i": 1}\n{"i": 2}\n')
    results = read_all(s3_reader(clients, bucket=bucket, prefix="arr/", chunk_size=64), max_records=1)
    assert [r.data for r in results] == [array, b'{"i": 1}\n', b'{"i": 2}\n']


def test_missing_bucket_names_it(clients: RealClients) -> None:
    with pytest.raises(TransportError, match="bucket 'no-such-bucket' does not exist"):
        s3_reader(clients, bucket="no-such-bucket", prefix="x/").read(None, 10)
    with pytest.raises(TransportError, match="bucket 'no-such-bucket' does not exist"):
        s3_reader(clients, bucket="no-such-bucket", key="x.json").read(None, 10)


def test_missing_key_names_it(clients: RealClients, bucket: str) -> None:
    with pytest.raises(TransportError, match=f"no object s3://{bucket}/absent.json"):
        s3_reader(clients, bucket=bucket, key="absent.json").read(None, 10)


def test_object_shorter_than_position_is_an_error(clients: RealClients, bucket: str) -> None:
    put(clients, bucket, "s/a.json", b'{"a": 1}\n')
    position = {"after": None, "key": "s/a.json", "offset": 500}
    with pytest.raises(TransportError, match="fewer than the stored offset 500"):
        s3_reader(clients, bucket=bucket, prefix="s/").read(position, 10)
