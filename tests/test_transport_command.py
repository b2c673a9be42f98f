"""command transport with real programs written by the tests in sh and awk: pieces, stderr, resume, exit codes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from clients_for_tests import json_lines, open_reader, read_until_count, read_until_end

from connector_core.transports.base import ReadResult, TransportError, TransportReader

GENERATOR = r"""#!/bin/sh
# Writes $1 JSON lines, logs to stderr, and counts its runs in runs.txt.
echo run >> runs.txt
echo "starting $1" >&2
awk -v n="$1" 'BEGIN { for (i = 0; i < n; i++) printf "{\"i\": %d, \"pad\": \"%s\"}\n", i, substr("xxxxxxxxxx", 1, i % 10) }'
echo "done" >&2
"""


def expected_output(n: int) -> bytes:
    return b"".join(f'{{"i": {i}, "pad": "{"x" * (i % 10)}"}}\n'.encode() for i in range(n))


def command_reader(base_dir: Path, command: list[str], logs: list[str] | None = None, **config: Any) -> TransportReader:
    log = logs.append if logs is not None else print
    return open_reader("command", {"command": command, **config}, {"name": "json"}, base_dir=base_dir, log=log)


def runs(base_dir: Path) -> int:
    return len((base_dir / "runs.txt").read_text().splitlines())


@pytest.fixture
def generator(tmp_path: Path) -> Path:
    (tmp_path / "gen.sh").write_text(GENERATOR)
    return tmp_path


def test_reads_all_output_in_pieces_until_exit_0(generator: Path) -> None:
    logs: list[str] = []
    reader = command_reader(generator, ["sh", "gen.sh", "500"], logs, chunk_size=1000)
    results = read_until_end(reader)
    reader.close()
    pieces = [r.data for r in results if r.data]
    assert b"".join(pieces) == expected_output(500)
    assert len(pieces) > 10 and all(p.endswith(b"\n") and len(p) <= 1000 for p in pieces)
    assert [r.end_of_input for r in results].count(True) == 1 and results[-1].end_of_input
    assert results[-1].position == len(expected_output(500))
    assert [r.starts_object for r in results if r.data] == [True] + [False] * (len(pieces) - 1)
    assert "command t.c: starting 500" in logs and "command t.c: done" in logs
    assert runs(generator) == 1


def test_max_records_bounds_a_piece(generator: Path) -> None:
    reader = command_reader(generator, ["sh", "gen.sh", "100"])
    results = read_until_end(reader, max_records=30)
    reader.close()
    assert [r.data.count(b"\n") for r in results if r.data] == [30, 30, 30, 10]


def test_resume_runs_again_and_skips_bytes_done(generator: Path) -> None:
    first_reader = command_reader(generator, ["sh", "gen.sh", "300"])
    first = first_reader.read(None, 40)
    first_reader.close()
    assert first.data is not None and first.position == len(first.data)
    resumed = command_reader(generator, ["sh", "gen.sh", "300"])
    rest = read_until_end(resumed, first.position)
    resumed.close()
    assert first.data + b"".join(r.data for r in rest if r.data) == expected_output(300)
    assert not rest[0].starts_object
    assert runs(generator) == 2


def test_the_program_is_kept_between_reads(tmp_path: Path) -> None:
    (tmp_path / "slow.sh").write_text(
        "echo run >> runs.txt\n"
        'printf \'{"n": 1}\\n{"n": 2}\\n{"n": 3}\\n\'\n'
        "while [ ! -f go ]; do sleep 0.02; done\n"
        'printf \'{"n": 4}\\n{"n": 5}\\n\'\n'
    )
    reader = command_reader(tmp_path, ["sh", "slow.sh"], poll_timeout_seconds=0.3)
    got, position = read_until_count(reader, 3, seconds=10, may_end=False)
    waiting = reader.read(position, 100)  # the program waits: nothing new, no end
    assert waiting.data is None and not waiting.end_of_input and waiting.position == position
    (tmp_path / "go").touch()
    results = read_until_end(reader, position)
    reader.close()
    got += [record for r in results for record in json_lines(r)]
    assert got == [{"n": n} for n in range(1, 6)]
    assert runs(tmp_path) == 1


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is dead


def test_close_stops_the_program_and_its_children(tmp_path: Path) -> None:
    (tmp_path / "forever.sh").write_text("echo $$ > pid\nsleep 1000 &\necho $! > child\necho '{\"x\": 1}'\nwait\n")
    reader = command_reader(tmp_path, ["sh", "forever.sh"], poll_timeout_seconds=0.2)
    first: ReadResult | None = None
    deadline = time.monotonic() + 10
    while (first is None or not first.data) and time.monotonic() < deadline:
        first = reader.read(first.position if first else None, 10)
    assert first is not None and first.data == b'{"x": 1}\n'
    pid, child = int((tmp_path / "pid").read_text()), int((tmp_path / "child").read_text())
    assert not process_gone(pid) and not process_gone(child)
    reader.close()
    deadline = time.monotonic() + 10
    while not (process_gone(pid) and process_gone(child)) and time.monotonic() < deadline:
        time.sleep(0.02)  # polling interval, bounded by the deadline
    assert process_gone(pid) and process_gone(child)


def test_non_zero_exit_names_code_and_last_stderr_lines(tmp_path: Path) -> None:
    (tmp_path / "fail.sh").write_text(
        "echo '{\"a\": 1}'\n"
        + "".join(f"echo 'noise {i}' >&2\n" for i in range(30))
        + "echo 'bad thing happened' >&2\nexit 3\n"
    )
    logs: list[str] = []
    reader = command_reader(tmp_path, ["sh", "fail.sh"], logs)
    delivered = b""
    position = None
    with pytest.raises(TransportError) as info:
        for _ in range(100):
            result = reader.read(position, 100)
            assert not result.end_of_input
            delivered += result.data or b""
            position = result.position
    reader.close()
    message = str(info.value)
    assert delivered == b'{"a": 1}\n'  # complete records written before the failure are delivered first
    assert "sh fail.sh exited with code 3" in message and message.endswith("bad thing happened")
    assert "noise 29" in message and "noise 0\n" not in message  # only the last lines
    assert "command t.c: noise 0" in logs


def test_awk_program_failing_without_output(tmp_path: Path) -> None:
    reader = command_reader(tmp_path, ["awk", 'BEGIN { print "no input file" > "/dev/stderr"; exit 2 }'])
    with pytest.raises(TransportError, match="exited with code 2; last stderr lines:\nno input file"):
        for _ in range(100):
            assert not reader.read(None, 10).end_of_input
    reader.close()


def test_json_array_output_comes_whole(tmp_path: Path) -> None:
    program = (
        'BEGIN { print "["; for (i = 0; i < 50; i++) printf "  {\\"i\\": %d}%s\\n", i, (i < 49 ? "," : ""); print "]" }'
    )
    reader = command_reader(tmp_path, ["awk", program], chunk_size=64)
    results = read_until_end(reader, max_records=3)
    reader.close()
    pieces = [r.data for r in results if r.data]
    assert len(pieces) == 1 and json.loads(pieces[0]) == [{"i": i} for i in range(50)]


def test_env_and_working_directory(tmp_path: Path) -> None:
    (tmp_path / "where.sh").write_text('printf \'{"var": "%s", "cwd": "%s"}\\n\' "$EXTRA_VAR" "$(pwd)"\n')
    reader = command_reader(tmp_path, ["sh", "where.sh"], env={"EXTRA_VAR": "hello"})
    results = read_until_end(reader)
    reader.close()
    record = json.loads(b"".join(r.data for r in results if r.data))
    assert record == {"var": "hello", "cwd": str(tmp_path)}


def test_missing_program_is_a_transport_error(tmp_path: Path) -> None:
    reader = command_reader(tmp_path, ["./no-such-program"])
    with pytest.raises(TransportError, match="cannot start it"):
        reader.read(None, 10)


def test_position_beyond_the_output_is_an_error(generator: Path) -> None:
    reader = command_reader(generator, ["sh", "gen.sh", "3"])
    with pytest.raises(TransportError, match="fewer than the stored position 100000"):
        for _ in range(100):
            reader.read(100_000, 10)
    reader.close()
