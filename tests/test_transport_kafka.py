"""kafka_input against a real broker (tansu; librdkafka's mock cluster only for ``start_from: latest``)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from clients_for_tests import RealClients, json_lines, open_reader, read_until_count, read_until_end
from confluent_kafka import Consumer, TopicPartition
from fixtures_services import free_port, new_topic, produce, topic_with

from connector_core.transports.base import ReadResult, TransportError, TransportReader

EOF = {"enable.partition.eof": True}


def kafka_reader(bootstrap: str, topic: str, name: str = "c", **config: Any) -> TransportReader:
    clients = RealClients(kafka={"main": {"bootstrap.servers": bootstrap}})
    settings = {"connection": "main", "topic": topic, **config}
    return open_reader("kafka_input", settings, {"name": "json"}, name=name, clients=clients)


def records(result: ReadResult) -> list[dict[str, Any]]:
    assert isinstance(result.data, bytes) or result.data is None
    return json_lines(result)


def read_new_records(reader: TransportReader, position: Any, count: int) -> tuple[list[dict[str, Any]], Any]:
    """Read until ``count`` records came (new messages reach the consumer's fetcher a moment after produce)."""
    return read_until_count(reader, count, position, 1000, records=records)


def test_reads_every_partition_in_bounded_batches_until_end(kafka_bootstrap: str) -> None:
    topic = topic_with(kafka_bootstrap, [{"i": i} for i in range(300)], partitions=3)
    reader = kafka_reader(kafka_bootstrap, topic, **EOF)
    assert reader.can_finish
    results = read_until_end(reader, max_records=40)
    reader.close()
    got = [r["i"] for result in results for r in records(result)]
    assert sorted(got) == list(range(300))  # every record once
    assert all(len(records(r)) <= 40 for r in results)
    assert results[-1].position == {"0": 100, "1": 100, "2": 100}
    assert results[-1].end_of_input and results[-1].buffered_records == 0
    assert [r.end_of_input for r in results].count(True) == 1
    first = next(r for r in results if r.data)
    assert first.buffered_records > 0  # lag = high watermark - next offset
    assert first.bytes_read == sum(len(json.dumps(r)) for r in records(first))


def test_chunk_size_bounds_the_bytes_of_a_batch_and_the_rest_comes_next(kafka_bootstrap: str) -> None:
    # Sizes vary, so the reader's estimate of what fits fetches more than fits now and then.
    values = [{"i": i, "pad": "x" * (i % 5 * 40)} for i in range(300)]
    topic = topic_with(kafka_bootstrap, values, partitions=2)
    reader = kafka_reader(kafka_bootstrap, topic, chunk_size=1000, **EOF)
    results = read_until_end(reader, max_records=10_000)
    reader.close()
    largest = max(len(json.dumps(v)) for v in values)
    assert all(r.bytes_read < 1000 + largest for r in results)  # one message may cross the bound
    assert len([r for r in results if r.data]) >= sum(len(json.dumps(v)) for v in values) // (1000 + largest)
    got = [r["i"] for result in results for r in records(result)]
    assert sorted(got) == list(range(300))  # messages consumed beyond a full batch are read again, once
    for partition in (0, 1):
        in_partition = [i for i in got if i % 2 == partition]
        assert in_partition == sorted(in_partition)
    assert results[-1].position == {"0": 150, "1": 150}


def test_lag_counts_what_is_left(kafka_bootstrap: str) -> None:
    topic = topic_with(kafka_bootstrap, [{"i": i} for i in range(50)])
    reader = kafka_reader(kafka_bootstrap, topic, **EOF)
    result = reader.read(None, 10)
    deadline = time.monotonic() + 10
    while not result.data and time.monotonic() < deadline:
        result = reader.read(result.position, 10)
    reader.close()
    assert result.position == {"0": 10}
    assert result.buffered_records == 40 and not result.end_of_input


def test_resume_from_stored_position_reads_only_the_rest(kafka_bootstrap: str) -> None:
    topic = topic_with(kafka_bootstrap, [{"i": i} for i in range(100)], partitions=2)
    reader = kafka_reader(kafka_bootstrap, topic, **EOF)
    first = reader.read(None, 30)
    reader.close()
    assert sum(first.position.values()) == len(records(first))
    # A restart: the position comes back from the sink (as JSON), start_from must not apply any more.
    stored = json.loads(json.dumps(first.position))
    resumed = kafka_reader(kafka_bootstrap, topic, start_from={"offsets": [45, 45]}, **EOF)
    results = read_until_end(resumed, stored, max_records=1000)
    resumed.close()
    again = [r["i"] for result in results for r in records(result)]
    assert sorted(again + [r["i"] for r in records(first)]) == list(range(100))


def test_a_stale_position_rewinds_the_same_reader(kafka_bootstrap: str) -> None:
    """The sink failed to store a batch: the next read gets the older position and must re-read from it."""
    topic = topic_with(kafka_bootstrap, [{"i": i} for i in range(20)])
    reader = kafka_reader(kafka_bootstrap, topic, **EOF)
    first = reader.read(None, 5)
    second = reader.read(first.position, 5)
    replay = reader.read(first.position, 5)
    reader.close()
    assert records(second) == records(replay) == [{"i": i} for i in range(5, 10)]


def test_start_from_offsets_per_partition(kafka_bootstrap: str) -> None:
    topic = topic_with(kafka_bootstrap, [{"i": i} for i in range(20)], partitions=2)  # even -> p0, odd -> p1
    reader = kafka_reader(kafka_bootstrap, topic, start_from={"offsets": [8, 0]}, **EOF)
    results = read_until_end(reader, None, 1000)
    reader.close()
    got = sorted(r["i"] for result in results for r in records(result))
    assert got == sorted([16, 18, *range(1, 20, 2)])
    assert results[-1].position == {"0": 10, "1": 10}


def test_without_partition_eof_there_is_no_end_and_batches_stay_short(kafka_bootstrap: str) -> None:
    topic = topic_with(kafka_bootstrap, [{"i": i} for i in range(5)])
    reader = kafka_reader(kafka_bootstrap, topic, poll_timeout_seconds=5)
    assert not reader.can_finish
    got, position = read_until_count(reader, 5, seconds=15, may_end=False, records=records)
    started = time.monotonic()
    idle = reader.read(position, 100)  # caught up: returns at the partition's end, not after 5 s
    elapsed = time.monotonic() - started
    reader.close()
    assert got == [{"i": i} for i in range(5)]
    assert idle.data is None and not idle.end_of_input and idle.position == {"0": 5}
    assert elapsed < 4


def test_new_messages_after_the_end_are_read(kafka_bootstrap: str) -> None:
    topic = topic_with(kafka_bootstrap, [{"i": 0}])
    reader = kafka_reader(kafka_bootstrap, topic, **EOF)
    position = read_until_end(reader, None, 100)[-1].position
    produce(kafka_bootstrap, topic, [{"i": 1}, {"i": 2}])
    got, position = read_new_records(reader, position, 2)
    results = read_until_end(reader, position, 100)
    reader.close()
    assert got == [{"i": 1}, {"i": 2}]
    assert all(r.data is None for r in results) and results[-1].position == {"0": 3}


def test_default_group_id_receives_the_position(kafka_bootstrap: str) -> None:
    topic = topic_with(kafka_bootstrap, [{"i": i} for i in range(10)])
    name = f"g{uuid.uuid4().hex[:6]}"
    reader = kafka_reader(kafka_bootstrap, topic, name=name, **EOF)
    first = reader.read(None, 4)
    while not first.data:
        first = reader.read(first.position, 4)
    reader.read(first.position, 4)  # the sink stored first.position: it is copied to the consumer group
    group = f"connectors-p-t-{name}"
    checker = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    committed = -1
    deadline = time.monotonic() + 10
    while committed != first.position["0"] and time.monotonic() < deadline:
        committed = checker.committed([TopicPartition(topic, 0)], timeout=5)[0].offset
    checker.close()
    reader.close()
    assert committed == first.position["0"] == 4


def test_start_from_latest_on_mock_cluster(kafka_mock_bootstrap: str) -> None:
    """tansu 0.6 answers ListOffsets(latest) with a batch count, so ``latest`` is checked on the mock cluster."""
    topic = new_topic()
    produce(kafka_mock_bootstrap, topic, [{"i": i} for i in range(8)], partitions=4)  # auto-created, 4 partitions
    reader = kafka_reader(kafka_mock_bootstrap, topic, start_from="latest", **EOF)
    results = read_until_end(reader, None, 100)
    assert all(r.data is None for r in results)
    position = results[-1].position
    assert position == {"0": 2, "1": 2, "2": 2, "3": 2}
    produce(kafka_mock_bootstrap, topic, [{"i": 100 + i} for i in range(4)], partitions=4)
    got, position = read_new_records(reader, position, 4)
    reader.close()
    assert sorted(r["i"] for r in got) == [100, 101, 102, 103]
    assert position == {"0": 3, "1": 3, "2": 3, "3": 3}


def test_missing_topic_is_a_transport_error(kafka_bootstrap: str) -> None:
    reader = kafka_reader(kafka_bootstrap, "no_such_topic_here")
    with pytest.raises(TransportError, match="topic 'no_such_topic_here' does not exist"):
        reader.read(None, 10)
    reader.close()


def test_unreachable_broker_is_a_transport_error() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    reader = kafka_reader(bootstrap, "x", metadata_timeout_seconds=1)
    with pytest.raises(TransportError) as info:
        reader.read(None, 10)
    reader.close()
    assert bootstrap in str(info.value) and "topic x" in str(info.value)


def test_unknown_librdkafka_setting_is_a_transport_error(kafka_bootstrap: str) -> None:
    with pytest.raises(TransportError, match="no.such.setting"):
        kafka_reader(kafka_bootstrap, "x", **{"no.such.setting": 1})
