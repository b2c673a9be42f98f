"""A Kafka channel between two pipelines, exactly once end to end, on a real broker (tansu).

Upstream: ``file_input`` -> sink ``{kind: kafka}`` (Arrow IPC by default, or JSON lines; many records per message,
channel headers). Downstream: ``kafka_input`` -> DuckDB, dropping records its writer sent again. Each pipeline has its own project
file and state folder, as two deployments would.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import yaml
from click.testing import CliRunner
from clients_for_tests import RealClients, open_reader, read_until_end
from confluent_kafka import Consumer, Producer, TopicPartition

from connector_cli.main import cli
from connector_core import channel
from connector_core.ingest import IngestSession
from connector_core.pipeline import Pipeline
from connector_core.project import ProjectFileError, load_project, parse_project
from connector_core.sinks import SinkError, SinkMark
from connector_core.sinks.kafka import KafkaSink, message_bounds, read_arrow_message
from connector_core.sinks.state_marks import ConnectorMarks
from connector_core.transports.base import TransportError

REPO = Path(__file__).resolve().parent.parent
COLUMNS = {"id": "BIGINT", "payload": "VARCHAR"}


# ------------------------------------------------------------------------------------------------ helpers
def upstream_project(bootstrap: str, topic: str, batch: int, message_bytes: int) -> dict[str, Any]:
    return {
        "pipelines": {
            "up": {
                "sink": {"kind": "kafka", "connection": "bus", "max_message_bytes": message_bytes},
                "connections": {"bus": {"kind": "kafka", "config": {"bootstrap.servers": bootstrap}}},
                "tables": {
                    "t": {
                        "columns": COLUMNS,
                        "topic": topic,
                        "connectors": [
                            {
                                "name": "file",
                                "max_batch_size": batch,
                                "transport": {"name": "file_input", "config": {"path": "source.json"}},
                                "format": {"name": "json"},
                            }
                        ],
                    }
                },
            }
        }
    }


def downstream_project(bootstrap: str, topic: str, batch: int, *, eof: bool = True) -> dict[str, Any]:
    tables: dict[str, Any] = {
        "t": {
            "columns": COLUMNS,
            "connectors": [
                {
                    "name": "channel",
                    "max_batch_size": batch,
                    "transport": {
                        "name": "kafka_input",
                        "config": {
                            "connection": "bus",
                            "topic": topic,
                            "enable.partition.eof": eof,
                            "poll_timeout_seconds": 0.2,
                        },
                    },
                    "format": {"name": "json"},
                }
            ],
        }
    }
    if not eof:
        # Keeps `connectors run` going while the upstream still writes: a run stops when no connector can
        # finish, and a channel without partition EOF never does (see the kill test).
        tables["keepalive"] = {
            "columns": {"n": "BIGINT"},
            "connectors": [
                {
                    "name": "gen",
                    "max_batch_size": 10,
                    "transport": {"name": "datagen", "config": {"plan": [{"rate": 1000, "limit": 10_000_000}]}},
                }
            ],
        }
    return {
        "pipelines": {
            "down": {
                "sink": {"kind": "duckdb", "path": "down.duckdb"},
                "connections": {"bus": {"kind": "kafka", "config": {"bootstrap.servers": bootstrap}}},
                "tables": tables,
            }
        }
    }


def write_source(folder: Path, records: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": i, "payload": f"record {i} " + "x" * (i % 40)}) for i in range(records)]
    (folder / "source.json").write_text("\n".join(lines) + "\n")


def write_project(folder: Path, data: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "connectors.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def connectors(project: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["--project-file", str(project), *args])
    assert result.exit_code == 0, f"{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def topic_messages(bootstrap: str, topic: str, seconds: float = 20) -> list[Any]:
    """Every message of a one-partition topic, from its start to its end."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "inspect", "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, 0, 0)])
    messages = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(1)
            if message is None:
                continue
            if message.error() is not None:
                break  # end of the partition
            messages.append(message)
        else:
            raise AssertionError(f"topic {topic} did not reach its end in {seconds} s")
    finally:
        consumer.close()
    return messages


def message_records(message: Any) -> list[Any]:
    """The records of a channel message, whatever its encoding: dicts of Arrow rows, JSON values of lines."""
    headers = channel.ChannelHeaders.decode(message.headers())
    if headers is not None and headers.encoding == channel.ARROW:
        return read_arrow_message(message.value()).to_pylist()
    return [json.loads(line) for line in message.value().split(b"\n")]


def read_ids(results: list[Any]) -> list[int]:
    """The ``id`` of every record of reads, in order: rows of Arrow tables, JSON lines of bytes."""
    ids: list[int] = []
    for result in results:
        if isinstance(result.data, pa.Table):
            ids += result.data["id"].to_pylist()
        else:
            ids += [json.loads(line)["id"] for line in (result.data or b"").splitlines()]
    return ids


def downstream_ids(folder: Path) -> tuple[int, int, int, int]:
    """count, distinct ids, min and max id of the downstream table."""
    with duckdb.connect(str(folder / "down.duckdb"), read_only=True) as conn:
        return conn.execute('SELECT count(*), count(DISTINCT id), min(id), max(id) FROM main."t"').fetchall()[0]


def connector_id(project: Path, pipeline: str, table: str, connector: str) -> str:
    opened = Pipeline(load_project(project), pipeline)
    try:
        return str(opened.connector(table, connector).connector_id)
    finally:
        opened.close()


# ------------------------------------------------------------------------------------------------ (a) channel
def test_every_record_crosses_the_channel_once_in_multi_record_messages(tmp_path: Path, kafka_bootstrap: str) -> None:
    records, topic = 3_000, f"ch_{uuid.uuid4().hex[:10]}"
    write_source(tmp_path / "up", records)
    up = write_project(tmp_path / "up", upstream_project(kafka_bootstrap, topic, batch=1_000, message_bytes=8_000))
    down = write_project(tmp_path / "down", downstream_project(kafka_bootstrap, topic, batch=700))

    assert connectors(up, "setup", "up")["response_code"] == "OK"  # finalize creates the topic
    assert connectors(up, "run", "up")["records"] == records
    writer = connector_id(up, "up", "t", "file")

    messages = topic_messages(kafka_bootstrap, topic)
    headers = [channel.ChannelHeaders.decode(m.headers()) for m in messages]
    assert all(h is not None and h.writer == writer and h.pipeline == "up" and h.table == "t" for h in headers)
    assert [h.batch for h in headers if h.part == 0] == [1, 2, 3]  # three batches, each in several parts
    assert all(h.parts > 1 and 0 <= h.part < h.parts for h in headers)
    assert all(h.encoding == channel.ARROW for h in headers), "Arrow IPC by default"
    assert all(len(m.value()) <= 8_000 for m in messages)
    assert [m.key() for m in messages] == [writer.encode()] * len(messages)
    sent = [message_records(m) for m in messages]
    counts = [len(rows) for rows in sent]
    assert counts == [h.records for h in headers] and min(counts) > 1 and sum(counts) == records
    assert [row["id"] for rows in sent for row in rows] == list(range(records))
    assert [h.first_record for h in headers] == [sum(counts[:i]) for i in range(len(counts))]

    assert connectors(down, "setup", "down")["response_code"] == "OK"
    ran = connectors(down, "run", "down")
    assert ran["records"] == records
    assert downstream_ids(tmp_path / "down") == (records, records, 0, records - 1)
    assert connectors(down, "run", "down")["records"] == 0, "finished: nothing twice"

    opened = Pipeline(load_project(up), "up")
    try:
        sink = KafkaSinkFor(opened, kafka_bootstrap)
        assert sink.row_count("t") == records
        assert sorted(sink.read_table("t")["id"]) == list(range(records))
    finally:
        opened.close()


def KafkaSinkFor(pipeline: Pipeline, bootstrap: str) -> KafkaSink:  # noqa: N802 - reads as the sink it opens
    from connector_core.sinks import open_sink

    sink = open_sink(pipeline, RealClients(kafka={"bus": {"bootstrap.servers": bootstrap}}))
    assert isinstance(sink, KafkaSink)
    return sink


# ------------------------------------------------------------------------------------------------ (b) resends
class MemoryMarks:
    """Marks kept in memory, as a connector's state would keep them."""

    def __init__(self) -> None:
        self.marks: dict[str, SinkMark] = {}

    def read(self, connector_id: str) -> SinkMark | None:
        return self.marks.get(connector_id)

    def records_of_table(self, _table: str) -> int:
        return sum(mark.total_records for mark in self.marks.values())


def memory_sink(
    bootstrap: str, marks: MemoryMarks, columns: dict[str, str] | None, **options: Any
) -> tuple[KafkaSink, str]:
    """A kafka sink of table ``t`` on a new topic, its marks in ``marks``; the sink and its topic."""
    topic = f"ch_{uuid.uuid4().hex[:10]}"
    sink = KafkaSink(
        {"bootstrap.servers": bootstrap},
        topics={"t": topic},
        columns={"t": columns},
        marks=ConnectorMarks(marks.read, marks.records_of_table),
        **options,
    )
    return sink, topic


@pytest.mark.parametrize(("encoding", "message_bytes"), [("json", 100), ("arrow", 1_000)])
def test_json_lines_are_cast_and_sent_in_one_pass_and_a_record_that_does_not_fit_is_refused(
    kafka_bootstrap: str, encoding: str, message_bytes: int
) -> None:
    from connector_core.formats import screen_lines

    marks = MemoryMarks()
    sink, topic = memory_sink(kafka_bootstrap, marks, COLUMNS, max_message_bytes=message_bytes, encoding=encoding)
    sink.ensure_table("t", COLUMNS, None)
    assert sink.reads_json()

    def mark_for(records: int) -> SinkMark:
        return SinkMark("w1", {"line": 12}, 1, records, 0)

    lines = [json.dumps({"id": str(i), "payload": f"p{i}" * 20, "extra": True}) for i in range(10)]
    data = "\n".join([*lines[:4], '{"id": "not a number"}', *lines[4:]]).encode() + b"\n"
    assert sink.write_json_lines("t", data, mark_for) is None, "refused as a whole: nothing is sent"
    screen = sink.json_reader("t").screen
    assert screen is not None
    kept, errors = screen_lines(data, screen, None)
    assert [at for at, _ in errors] == [4]
    assert sink.write_json_lines("t", memoryview(kept), mark_for) == 10
    sink.close()

    messages = topic_messages(kafka_bootstrap, topic)
    headers = [channel.ChannelHeaders.decode(m.headers()) for m in messages]
    assert len(messages) > 1 and all(len(m.value()) <= message_bytes for m in messages)
    assert all(h is not None and h.encoding == encoding for h in headers)
    assert [h.first_record for h in headers if h] == [
        sum(h.records for h in headers[:i] if h) for i in range(len(headers))
    ]
    sent = [record for m in messages for record in message_records(m)]
    assert sent == [{"id": i, "payload": f"p{i}" * 20} for i in range(10)], "cast to the columns, in order"


@pytest.mark.parametrize("encoding", ["arrow", "json"])
def test_a_batch_sent_again_is_dropped_by_the_reader_even_when_it_grew(kafka_bootstrap: str, encoding: str) -> None:
    marks = MemoryMarks()
    sink, topic = memory_sink(
        kafka_bootstrap,
        marks,
        COLUMNS,
        pipeline="up",
        max_message_bytes=200 if encoding == "json" else 700,
        encoding=encoding,
    )
    sink.ensure_table("t", COLUMNS, None)

    def rows(ids: range) -> pa.Table:
        return pa.table({"id": pa.array(ids, pa.int64()), "payload": [f"p{i}" for i in ids]})

    def write(ids: range, seq: int, commit: bool = True) -> None:
        previous = marks.read("w1")
        total = (previous.total_records if previous else 0) + len(ids)
        mark = SinkMark("w1", {"line": ids.stop}, seq, total, 0)
        sink.write("t", rows(ids), mark)
        if commit:
            marks.marks["w1"] = mark

    write(range(0, 30), 1)
    write(range(30, 50), 2, commit=False)  # the writer crashed before its state commit...
    write(range(30, 60), 2)  # ...and sent batch 2 again, grown (its source had more by then)
    write(range(60, 70), 3)
    with pytest.raises(SinkError, match="does not follow"):
        write(range(60, 70), 3)  # a second run racing on the same batch is refused before sending
    sink.close()

    messages = topic_messages(kafka_bootstrap, topic)
    assert len(messages) > 4, "several messages per batch"
    sent = sum(len(message_records(m)) for m in messages)
    assert sent == 90, "20 records were sent twice"
    assert sorted(sink.read_table("t")["id"]) == list(range(70))

    config = {"bootstrap.servers": kafka_bootstrap, "topic": topic, "enable.partition.eof": True}
    reader = open_reader("kafka_input", config, {"name": "json"})
    results = read_until_end(reader, max_records=7, as_stored=True)
    assert all(isinstance(r.data, pa.Table) == (encoding == "arrow") for r in results if r.data is not None)
    assert read_ids(results) == list(range(70)), "each record once, in order, whatever the batch bounds"
    assert results[-1].position["writers"] == {"w1": 70}
    assert all(r.transport_errors == [] for r in results)

    again = open_reader("kafka_input", config, {"name": "json"})  # an older position, stored in the old shape
    older = read_until_end(again, position={"0": 0}, as_stored=True)
    assert read_ids(older) == list(range(70))
    reader.close()
    again.close()


def test_a_reader_takes_arrow_json_and_plain_messages_in_order_one_kind_per_batch(kafka_bootstrap: str) -> None:
    """Writers of both encodings (and a plain producer) on one topic: every record once, in order; a batch holds
    one kind (JSON lines, or Arrow with one schema), so an Arrow batch reaches the sink as one table."""
    marks = MemoryMarks()
    arrow_sink, topic = memory_sink(kafka_bootstrap, marks, COLUMNS, max_message_bytes=1_000)
    arrow_sink.ensure_table("t", COLUMNS, None)
    json_sink = KafkaSink(
        {"bootstrap.servers": kafka_bootstrap},
        topics={"t": topic},
        columns={"t": COLUMNS},
        marks=ConnectorMarks(marks.read, marks.records_of_table),
        encoding="json",
    )

    def rows(ids: range, **more: Any) -> pa.Table:
        return pa.table({"id": pa.array(ids, pa.int64()), "payload": [f"p{i}" for i in ids], **more})

    def write(sink: KafkaSink, writer: str, table: pa.Table) -> None:
        previous = marks.read(writer) or SinkMark(writer, None, 0, 0, 0)
        mark = SinkMark(writer, {}, previous.batch_seq + 1, previous.total_records + table.num_rows, 0)
        sink.write("t", table, mark)
        marks.marks[writer] = mark

    write(arrow_sink, "w1", rows(range(0, 10)))
    write(json_sink, "w2", rows(range(10, 20)))
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, value=json.dumps({"id": 20, "payload": "plain"}).encode())
    producer.flush(10)
    nulls = pa.array([None] * 5, pa.int32())
    write(arrow_sink, "w3", rows(range(21, 26), more=nulls))  # another schema
    write(arrow_sink, "w1", rows(range(26, 30)))
    arrow_sink.close()
    json_sink.close()

    config = {"bootstrap.servers": kafka_bootstrap, "topic": topic, "enable.partition.eof": True}
    reader = open_reader("kafka_input", config, {"name": "json"})
    results = [r for r in read_until_end(reader, as_stored=True) if r.data is not None]
    reader.close()
    assert read_ids(results) == list(range(30)), "every record once, in order"
    kinds = [r.data.schema.names if isinstance(r.data, pa.Table) else "lines" for r in results]
    assert kinds == [["id", "payload"], "lines", ["id", "payload", "more"], ["id", "payload"]]
    assert [r.data.num_rows for r in results if isinstance(r.data, pa.Table)] == [10, 5, 4]
    assert results[-1].position["writers"] == {"w1": 14, "w2": 10, "w3": 5}


@pytest.mark.parametrize(
    ("encoding", "value", "expected"),
    [
        ("arrow", b"not an arrow stream", "not an Arrow IPC stream"),
        ("parquet", b"PAR1", "in encoding 'parquet', which this reader cannot read"),
    ],
)
def test_a_channel_message_that_is_not_what_its_headers_say_stops_the_reader(
    kafka_bootstrap: str, encoding: str, value: bytes, expected: str
) -> None:
    sink, topic = memory_sink(kafka_bootstrap, MemoryMarks(), COLUMNS)
    sink.ensure_table("t", COLUMNS, None)
    headers = channel.ChannelHeaders("w", 0, 1, 1, 0, 1, encoding=encoding).encode()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, value=value, key=b"w", headers=headers)
    producer.flush(10)
    config = {"bootstrap.servers": kafka_bootstrap, "topic": topic, "enable.partition.eof": True}
    reader = open_reader("kafka_input", config, {"name": "json"})
    try:
        with pytest.raises(TransportError, match=expected):
            read_until_end(reader)
    finally:
        reader.close()


def test_a_message_lost_before_a_later_one_of_its_batch_is_taken_from_the_resend() -> None:
    """The reader skips over records 10-19 (their message timed out, the next one arrived): they are kept as a
    hole, in the position, and taken from the resent batch; every other record of the resend is dropped."""

    def message(first: int, records: int, batch: int) -> channel.ChannelHeaders:
        return channel.ChannelHeaders("w", first, records, batch, 0, 1)

    progress = channel.WriterProgress()
    assert progress.keep(message(0, 10, 1)).ranges == [(0, 10)]
    later = progress.keep(message(20, 10, 2))  # part 2 of batch 2 arrived, part 1 (records 10-19) did not
    assert later.ranges == [(0, 10)] and later.gap == (10, 20) and progress.holes == {"w": [[10, 20]]}
    stored = channel.WriterProgress(dict(progress.next_records), progress.holes)  # as the position stores it
    resend = stored.keep(message(5, 30, 2))  # the writer sends records 5-34 again (its batch grew)
    assert resend.ranges == [(5, 15), (25, 30)] and resend.count == 15 and not stored.holes
    lines = b"\n".join(str(n).encode() for n in range(5, 35))
    assert resend.select(lines, 30).split(b"\n") == [str(n).encode() for n in (*range(10, 20), *range(30, 35))]
    assert stored.keep(message(10, 10, 2)).count == 0, "a second resend brings nothing new"


def test_arrow_messages_keep_the_column_types_and_the_downstream_casts_to_its_columns(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    topic = f"ch_{uuid.uuid4().hex[:10]}"
    typed = {"id": "INTEGER", "ok": "BOOLEAN", "price": "DOUBLE", "day": "DATE", "at": "TIMESTAMP", "code": "VARCHAR"}
    up = upstream_project(kafka_bootstrap, topic, batch=2, message_bytes=10_000)
    up["pipelines"]["up"]["tables"]["t"]["columns"] = typed
    down = downstream_project(kafka_bootstrap, topic, batch=10)
    down["pipelines"]["down"]["tables"]["t"]["columns"] = {**typed, "id": "BIGINT", "code": "BIGINT"}
    records = [
        {"id": 1, "ok": True, "price": 0.5, "day": "2024-02-29", "at": "2024-02-29 12:34:56.789", "code": "12"},
        {"id": 2, "ok": None, "price": None, "day": None, "at": None, "code": None},
        {"id": 3, "ok": False, "price": -1e300, "day": "1970-01-01", "at": "1970-01-01 00:00:00", "code": "x"},
    ]
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "source.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    up_file, down_file = write_project(tmp_path / "up", up), write_project(tmp_path / "down", down)
    connectors(up_file, "setup", "up")
    assert connectors(up_file, "run", "up")["records"] == 3
    messages = topic_messages(kafka_bootstrap, topic)
    sent = read_arrow_message(messages[0].value())
    assert sent.schema.field("day").type == pa.date32() and sent.schema.field("at").type == pa.timestamp("us")
    assert sent.schema.field("id").type == pa.int32(), "the upstream table's types travel as they are"

    connectors(down_file, "setup", "down")
    ran = connectors(down_file, "run", "down")
    assert ran["records"] == 2, "the record whose code is no number does not fit the downstream table"
    with duckdb.connect(str(tmp_path / "down" / "down.duckdb"), read_only=True) as conn:
        rows = conn.execute(
            'SELECT id, ok, price, CAST(day AS VARCHAR), CAST("at" AS VARCHAR), code FROM main."t" ORDER BY id'
        ).fetchall()
    assert rows == [(1, True, 0.5, "2024-02-29", "2024-02-29 12:34:56.789", 12), (2, None, None, None, None, None)]


def test_an_older_copy_of_the_upstream_state_resends_and_nothing_lands_twice(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    records, topic = 2_000, f"ch_{uuid.uuid4().hex[:10]}"
    write_source(tmp_path / "up", records)
    up = write_project(tmp_path / "up", upstream_project(kafka_bootstrap, topic, batch=300, message_bytes=5_000))
    down = write_project(tmp_path / "down", downstream_project(kafka_bootstrap, topic, batch=250))
    connectors(up, "setup", "up")
    clients = RealClients(kafka={"bus": {"bootstrap.servers": kafka_bootstrap}})

    pipeline = Pipeline(load_project(up), "up")
    handle = pipeline.connector("t", "file")
    with IngestSession(pipeline, clients, log=lambda _: None) as session:
        for _ in range(2):
            assert session.ingest_batch(handle).records == 300
    state_file = handle.state.path
    assert state_file is not None
    old_copy = tmp_path / "old-state.db"
    with sqlite3.connect(state_file) as live, sqlite3.connect(old_copy) as copy:
        live.backup(copy)  # a consistent copy after batch 2
    pipeline.close()

    assert connectors(up, "run", "up")["records"] == records - 600
    for suffix in ("", "-wal", "-shm"):  # put the old state back: the writer is at batch 2 again
        Path(f"{state_file}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(old_copy, state_file)
    assert connectors(up, "run", "up")["records"] == records - 600, "everything after batch 2 sent again"

    sent = sum(len(message_records(m)) for m in topic_messages(kafka_bootstrap, topic))
    assert sent == 2 * records - 600
    connectors(down, "setup", "down")
    assert connectors(down, "run", "down")["records"] == records
    assert downstream_ids(tmp_path / "down") == (records, records, 0, records - 1)


# ------------------------------------------------------------------------------------------------ (c) kill -9
KILL_RECORDS = 30_000
KILLS = 24
KILL_PHASE_SECONDS = 36  # stop killing after this long, whatever the count

#: Loaded by the runs' Python (``sitecustomize`` on their PYTHONPATH): it widens the window between a batch's
#: delivery to the broker and its state commit, so that random kills also land there (a resend follows).
SLOW_STATE_COMMIT = """
import time
from connector_core.state import SQLiteConnectorState

state_commit = SQLiteConnectorState.commit_batch


def slow_state_commit(self, batch):
    time.sleep(0.015)
    state_commit(self, batch)


SQLiteConnectorState.commit_batch = slow_state_commit
"""


class Run:
    """One ``connectors run`` process of one side, its progress (stderr) in a file of its own."""

    def __init__(self, project: Path, pipeline: str, log: Path, python_path: list[Path]) -> None:
        self.log = log
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in [*python_path, REPO])}
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "connector_cli.main", "--project-file", str(project), "run", pipeline],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=project.parent,
                env=env,
            )
        self.kill_at: float | None = None  #: set once the run has committed its first batch

    def ingesting(self) -> bool:
        """Whether the run has reported a batch (Python and Dagster take a second or two to load first)."""
        return b" records" in self.log.read_bytes()


def test_kill_9_on_either_side_at_random_moments_neither_loses_nor_duplicates(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    chance = random.Random(seed)
    topic = f"ch_{uuid.uuid4().hex[:10]}"
    write_source(tmp_path / "up", KILL_RECORDS)
    up = write_project(tmp_path / "up", upstream_project(kafka_bootstrap, topic, batch=150, message_bytes=4_000))
    down = write_project(tmp_path / "down", downstream_project(kafka_bootstrap, topic, batch=400, eof=False))
    connectors(up, "setup", "up")
    connectors(down, "setup", "down")
    slow = tmp_path / "slow-commit"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_STATE_COMMIT)

    # Both sides run at once; each run is killed at a random moment after its first batch, and started again.
    projects = {"up": up, "down": down}
    running: dict[str, Run] = {}
    kills = {"up": 0, "down": 0}
    upstream_done = False
    started = time.monotonic()
    while sum(kills.values()) < KILLS and time.monotonic() - started < KILL_PHASE_SECONDS:
        for side, project in projects.items():
            if side == "up" and upstream_done:
                continue
            if side not in running:
                running[side] = Run(project, side, tmp_path / f"{side}-{kills[side]}.log", [slow])
            run = running[side]
            if run.process.poll() is not None:  # it finished on its own (only the upstream can)
                assert run.process.returncode == 0, f"{side} failed (seed {seed}): {run.log.read_text()[-2000:]}"
                upstream_done = True
                del running[side]
            elif run.kill_at is None and run.ingesting():
                run.kill_at = time.monotonic() + chance.uniform(0.0, 1.2)  # the random moment of the kill
            elif run.kill_at is not None and time.monotonic() >= run.kill_at:
                run.process.kill()  # SIGKILL
                run.process.wait()
                kills[side] += 1
                del running[side]
        time.sleep(0.01)  # this loop's polling interval
    for run in running.values():
        run.process.kill()
        run.process.wait()
    assert kills["up"] >= 4 and kills["down"] >= 4, f"kills {kills} (seed {seed})"

    # Let both finish: the upstream to its end of input, then the downstream with partition EOF turned on (while
    # the upstream wrote, an end of the topic was no end of input).
    assert connectors(up, "run", "up")["response_code"] == "OK", f"seed {seed}"
    write_project(tmp_path / "down", downstream_project(kafka_bootstrap, topic, batch=400, eof=True))
    assert connectors(down, "run", "down")["response_code"] == "OK", f"seed {seed}"

    sent = sum(len(message_records(m)) for m in topic_messages(kafka_bootstrap, topic))
    context = f"kills {kills}, {sent} records sent for {KILL_RECORDS} (seed {seed})"
    assert downstream_ids(tmp_path / "down") == (KILL_RECORDS, KILL_RECORDS, 0, KILL_RECORDS - 1), context
    opened = Pipeline(load_project(up), "up")
    try:
        assert opened.connector("t", "file").state.metrics().total_records == KILL_RECORDS, context
    finally:
        opened.close()


# ------------------------------------------------------------------------------------------------ (d) errors
@pytest.mark.parametrize(
    ("connections", "expected"),
    [
        ({}, "pipelines.up.sink.connection: no connection 'bus' (connections: none)"),
        (
            {"bus": {"kind": "postgres", "dsn": {"env": "PG_DSN"}}},
            "pipelines.up.sink.connection: connection 'bus' is a postgres connection; a kafka sink needs a kafka one",
        ),
    ],
    ids=["unknown connection", "not a kafka connection"],
)
def test_a_kafka_sink_needs_a_kafka_connection_of_its_pipeline(connections: dict[str, Any], expected: str) -> None:
    data = upstream_project("127.0.0.1:9", "topic", batch=10, message_bytes=10_000)
    data["pipelines"]["up"]["connections"] = connections
    with pytest.raises(ProjectFileError) as error:
        parse_project(data)
    assert expected in str(error.value)


def test_project_file_errors_of_a_channel_name_the_key(tmp_path: Path) -> None:
    data = upstream_project("127.0.0.1:9", "topic", batch=10, message_bytes=10_000)
    data["pipelines"]["up"]["sink"] = {"kind": "duckdb"}
    with pytest.raises(ProjectFileError, match=r"pipelines\.up\.tables\.t\.topic: only a kafka sink writes topics"):
        parse_project(data)

    data = upstream_project("127.0.0.1:9", "bad topic!", batch=10, message_bytes=10_000)
    with pytest.raises(ProjectFileError, match=r"pipelines\.up\.tables\.t\.topic"):
        parse_project(data)

    data = upstream_project("127.0.0.1:9", "topic", batch=10, message_bytes=10)
    with pytest.raises(ProjectFileError, match=r"pipelines\.up\.sink\.max_message_bytes"):
        parse_project(data)

    path = write_project(tmp_path, upstream_project("127.0.0.1:9", "topic", batch=10, message_bytes=10_000))
    path.write_text(path.read_text().replace("connection: bus", "connection: nope"))
    with pytest.raises(ProjectFileError, match=r"pipelines\.up\.sink\.connection \(line \d+\): no connection 'nope'"):
        load_project(path)


def test_update_warehouse_on_a_kafka_sink_says_why_not(tmp_path: Path) -> None:
    path = write_project(tmp_path, upstream_project("127.0.0.1:9", "topic", batch=10, message_bytes=10_000))
    opened = Pipeline(load_project(path), "up")
    try:
        opened.ensure_created()
        with opened.state.transaction() as conn:
            opened.state.put(conn, "status", "PAUSED")
    finally:
        opened.close()
    result = CliRunner().invoke(cli, ["--project-file", str(path), "pipeline", "up", "update-warehouse", "WH"])
    answer = json.loads(result.stdout)
    assert answer["response_code"] == "CONNECTOR_CONFIGURATION_PARSING_ERROR"
    assert "the sink is kafka" in answer["message"]


def test_message_bounds_cut_records_by_size() -> None:
    import numpy as np

    offsets = np.array([0, 4, 8, 12, 40, 44], dtype=np.int64)  # records of 3 bytes + newline, one of 27 + newline
    assert message_bounds(offsets, 7) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert message_bounds(offsets, 1_000) == [(0, 5)]
    assert message_bounds(offsets[:1], 10) == []


def test_channel_topic_is_created_by_the_sink_with_its_partitions(kafka_bootstrap: str) -> None:
    marks = MemoryMarks()
    sink, topic = memory_sink(kafka_bootstrap, marks, None, partitions=2)
    assert sink.table_schema("t") is None
    inferred = pa.schema([("n", pa.int64())])
    assert sink.ensure_table("t", None, inferred) == inferred
    assert sink.table_schema("t") == inferred
    sink.check()
    metadata = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "x"}).list_topics(topic, timeout=10)
    assert len(metadata.topics[topic].partitions) == 2


def test_a_restore_onto_a_connector_that_sent_batches_is_refused_unless_forced() -> None:
    marks = MemoryMarks()
    sink, _ = memory_sink("127.0.0.1:9", marks, COLUMNS)  # nothing listens: move_mark reaches no broker
    assert sink.move_mark("old", "new") is None, "a fresh target: the restored state database is the mark"
    marks.marks["new"] = SinkMark("new", {"line": 5}, 2, 5, 50)
    with pytest.raises(SinkError, match="has a mark of its own"):
        sink.move_mark("old", "new")
    assert sink.move_mark("old", "new", replace=True) is None


LINEAGE_PROJECT = """
pipelines:
  up:
    sink: {kind: kafka, connection: bus}
    connections:
      bus: {kind: kafka, config: {bootstrap.servers: "127.0.0.1:9092"}}
    processors:
      cheap: {kind: sql, query: "SELECT * FROM batch WHERE price < $limit", params: {limit: {type: number}}}
    tables:
      prices:
        topic: shared.prices
        connectors:
          - name: gen
            transport: {name: datagen}
            processors:
              - {use: cheap, args: {limit: 10}}
  down:
    connections:
      bus: {kind: kafka, config: {bootstrap.servers: "127.0.0.1:9092"}}
      other: {kind: kafka, config: {bootstrap.servers: "127.0.0.1:9999"}}
    tables:
      prices_copy:
        connectors:
          - name: channel
            transport: {name: kafka_input, config: {connection: bus, topic: shared.prices}}
            format: {name: json}
      elsewhere:
        connectors:
          - name: same_topic_other_cluster
            transport: {name: kafka_input, config: {connection: other, topic: shared.prices}}
            format: {name: json}
"""


def test_a_table_fed_through_a_channel_shows_its_upstream_table_and_processors(tmp_path: Path) -> None:
    import dagster as dg

    from connector_assets import build_definitions

    project_file = tmp_path / "connectors.yaml"
    project_file.write_text(LINEAGE_PROJECT)
    defs = build_definitions(project_file)
    graph = defs.resolve_asset_graph()
    downstream = graph.get(dg.AssetKey(["down", "prices_copy"]))
    assert downstream.parent_keys == {dg.AssetKey(["up", "prices"])}, "lineage across the channel"
    assert not graph.get(dg.AssetKey(["down", "elsewhere"])).parent_keys, "another cluster's topic is not it"
    upstream = graph.get(dg.AssetKey(["up", "prices"]))
    assert upstream.child_keys == {dg.AssetKey(["down", "prices_copy"])}
    spec = next(s for s in defs.resolve_all_asset_specs() if s.key == dg.AssetKey(["up", "prices"]))
    assert spec.metadata["connectors/processors"].value == {"prices.gen": ["cheap(limit=10)"]}
    assert "`prices.gen` is processed by `cheap(limit=10)`" in (spec.description or "")
