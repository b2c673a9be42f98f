"""``kind: command``: an external program in any language (the protocol is written down in
``docs/processors.md``).

``protocol: filter`` runs the program once per batch: the records as JSON lines on stdin up to end of file, its
JSON lines on stdout are the new records. ``protocol: jsonl`` and ``protocol: arrow`` start the program once per
connector per run (at its first batch) and feed it batch after batch over stdin/stdout:

- jsonl: first line the args as one JSON object; then per batch the records as JSON lines followed by the marker
  line ``["__end_of_batch__",N]`` (N = 1, 2, ... per run of the program); the program answers with its records
  as JSON lines followed by the same marker. Records are JSON objects, so a line starting with ``[`` can only be
  a marker.
- arrow: first an Arrow IPC stream holding one row with one string column ``args`` (the args as JSON); then per
  batch one Arrow IPC stream (schema with the metadata ``connector.batch``: N, record batches of at most
  :data:`ENCODE_ROWS` rows, end-of-stream) each way.

Every protocol also gets the args as JSON in the variable ``CONNECTOR_PROCESSOR_ARGS`` and runs in the project
folder with the minimal environment (:func:`connector_core.secrets.child_environment`) plus ``env``. A program
that exits, hangs past ``timeout_seconds`` or writes something that is not a batch fails the batch with a
:class:`ProcessorError` carrying its stderr tail; it is killed, and the next batch starts it again.

Speed (``benchmarks/processors.py``): a long-lived program gets its batch from a writer thread, encoded in slices
of :data:`ENCODE_ROWS` rows (JSON lines, or an IPC stream's record batches), so it works on the first slice while
the next ones are encoded; its answer is read
in blocks of up to :data:`_READ_BLOCK` from pipes widened to :data:`_PIPE_BYTES`, the marker looked for in each
new block only. A jsonl program that is a connector's last step hands its answer on as written
(:meth:`JsonLinesStep.answer_lines`): a sink that reads JSON itself loads it without an Arrow step.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from connector_core.formats import Format, parse
from connector_core.processors.base import (
    ProcessorError,
    ProcessorStep,
    StderrTail,
    how_it_ended,
    kill_group,
    tail_text,
    with_stderr,
)
from connector_core.project import ProcessorUse
from connector_core.secrets import child_environment

#: The variable holding a command processor's args as one JSON object.
ARGS_VARIABLE = "CONNECTOR_PROCESSOR_ARGS"
#: The first element of the jsonl protocol's end-of-batch marker line ``["__end_of_batch__",N]``.
END_OF_BATCH = "__end_of_batch__"
_JSON = Format(name="json")
_READ_BLOCK = 1 << 20
#: Room asked for in each pipe to a long-lived program (Linux gives 64 KB unless asked).
_PIPE_BYTES = 1 << 20
#: Rows per slice of a batch encoded for a long-lived program (JSON lines; the record batches of an IPC stream).
ENCODE_ROWS = 65_536


class _Broken(Exception):
    """The program broke the protocol (its answer is not a batch)."""


class _EndOfOutput(Exception):
    """The program closed its stdout."""


class JsonLines:
    """Arrow tables to JSON lines and back, through DuckDB's ``to_json`` and the project's JSON reader."""

    def __init__(self) -> None:
        import duckdb

        self._connection = duckdb.connect(":memory:")

    def encode(self, table: pa.Table) -> bytes:
        """One JSON object per row, each ending with a newline."""
        self._connection.register("batch", table)
        try:
            lines = self._connection.sql("SELECT to_json(b) || chr(10) FROM batch AS b").to_arrow_table().column(0)
        finally:
            self._connection.unregister("batch")
        return b"".join(_string_bytes(chunk) for chunk in lines.chunks)

    @staticmethod
    def decode(data: bytes, like: pa.Schema) -> pa.Table:
        """The records of JSON lines (an empty answer has the input's columns); :class:`_Broken` when a line is
        not a JSON object."""
        if not data.strip():
            return like.empty_table()
        parsed = parse(data, _JSON, None)
        if parsed.errors:
            index, reason = parsed.errors[0]
            raise _Broken(f"{len(parsed.errors)} unreadable line(s), first at line {index}: {reason}")
        return parsed.table

    def close(self) -> None:
        self._connection.close()


def _string_bytes(array: pa.Array) -> bytes:
    """The values of a string array, back to back (no per-value Python object)."""
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        array = array.cast(pa.large_string())
    offset_type = np.int64 if pa.types.is_large_string(array.type) else np.int32
    _, offsets_buffer, data = array.buffers()
    if data is None or not len(array):
        return b""
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[array.offset : array.offset + len(array) + 1]
    return data[int(offsets[0]) : int(offsets[-1])].to_pybytes()


def _environment(use: ProcessorUse) -> dict[str, str]:
    return child_environment({**use.definition.env, ARGS_VARIABLE: json.dumps(use.args)})


class FilterStep(ProcessorStep):
    """``protocol: filter``: one run of the program per batch."""

    def __init__(self, use: ProcessorUse, base_dir: Path, who: str):
        self._use, self._base_dir, self._who = use, base_dir, who
        self._lines = JsonLines()

    def __call__(self, table: pa.Table) -> pa.Table:
        if not table.num_rows:
            return table
        timeout = self._use.definition.timeout_seconds
        try:
            process = subprocess.Popen(
                self._use.definition.command or [],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self._base_dir,
                env=_environment(self._use),
                start_new_session=True,  # its own process group: a timeout stops its children too
            )
        except OSError as exc:
            raise ProcessorError(f"{self._who} cannot start in {self._base_dir}: {exc}") from None
        try:
            out, err = process.communicate(self._lines.encode(table), timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(process)
            _, err = process.communicate()
            raise ProcessorError(
                with_stderr(f"{self._who} did not finish a batch within {timeout:g} s; it was killed", tail_text(err))
            ) from None
        finally:
            kill_group(process)  # whatever it left running
        if process.returncode != 0:
            raise ProcessorError(with_stderr(f"{self._who} {how_it_ended(process.returncode)}", tail_text(err)))
        try:
            return self._lines.decode(out, table.schema)
        except _Broken as exc:
            raise ProcessorError(with_stderr(f"{self._who} wrote {exc}", tail_text(err))) from None

    def close(self) -> None:
        self._lines.close()


class _Child:
    """One run of a long-lived program: its pipes, its stderr tail, and a deadline that kills it."""

    def __init__(self, use: ProcessorUse, base_dir: Path):
        self.process = subprocess.Popen(
            use.definition.command or [],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=base_dir,
            env=_environment(use),
            start_new_session=True,  # its own process group, so stopping it stops its children too
        )
        assert self.process.stderr is not None
        for pipe in (self.process.stdin, self.process.stdout):
            _widen(pipe)
        self.stderr = StderrTail(self.process.stderr, str(self.process.pid))
        self.batches = 0  #: batches sent to this run
        self.expired = False  #: killed by the deadline of a batch
        self.write_error: OSError | None = None
        self.making_error: str | None = None  #: why the batch could not be made (encoded), if it could not

    def write(self, pieces: Iterable[bytes]) -> None:
        """Write ``pieces`` to stdin, one after the other as they are made (in its own thread, so a program
        answering early cannot deadlock us, and the pieces are encoded while the program works on the first).
        When making a piece fails, the program is killed: its answer then ends early."""
        assert self.process.stdin is not None
        fd = self.process.stdin.fileno()
        try:
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
        except (OSError, ValueError) as exc:
            self.write_error = exc if isinstance(exc, OSError) else OSError(str(exc))
        except Exception as exc:  # making the batch failed (e.g. the sink's reader): no marker would follow
            self.write_error = OSError(f"cannot make the batch: {exc}")
            self.making_error = f"{type(exc).__name__}: {exc}"
            kill_group(self.process)

    def expire(self) -> None:
        self.expired = True
        kill_group(self.process)

    def exit_code(self, wait: float) -> int | None:
        try:
            return self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, graceful: bool) -> None:
        """End the program: gracefully (stdin closed, a moment to exit) or not; then its whole group."""
        if graceful and self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
            except OSError:
                pass
            self.exit_code(wait=2)
        kill_group(self.process)
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass


class _LongLivedStep(ProcessorStep):
    """A program started at the first batch and fed batch after batch until the run ends or a batch fails."""

    def __init__(self, use: ProcessorUse, base_dir: Path, who: str):
        self._use, self._base_dir, self._who = use, base_dir, who
        self._child: _Child | None = None

    def __call__(self, table: pa.Table) -> pa.Table:
        if not table.num_rows:
            return table
        return self._decode(self._exchange([table], table.schema), table.schema)

    def _exchange(self, tables: Iterable[pa.Table], like: pa.Schema) -> Any:
        """Send the batch ``tables`` (its pieces, in order) to the program, return its answer as :meth:`_answer`
        reads it."""
        child = self._child
        if child is not None and child.process.poll() is not None:  # it ended between batches: start anew
            self._stop(graceful=False)
            child = None
        preamble = b""
        if child is None:
            try:
                child = self._child = _Child(self._use, self._base_dir)
            except OSError as exc:
                raise ProcessorError(f"{self._who} cannot start in {self._base_dir}: {exc}") from None
            self._started(child)
            preamble = self._preamble()
        child.batches += 1
        timeout = self._use.definition.timeout_seconds
        deadline = time.monotonic() + timeout
        watchdog = threading.Timer(timeout, child.expire)
        watchdog.daemon = True
        watchdog.start()
        pieces = itertools.chain([preamble], self._encode(tables, child.batches))
        writer = threading.Thread(target=child.write, args=(pieces,), daemon=True)
        writer.start()
        try:
            answer = self._answer(child, like)
            writer.join(max(0.0, deadline - time.monotonic()))
            if writer.is_alive() or child.write_error is not None:
                raise _Broken("an answer before reading its whole batch")
            return answer
        except (_Broken, _EndOfOutput, OSError, pa.ArrowException) as exc:
            message = self._failure(child, exc, timeout)  # the program is stopped: the writer ends soon
            writer.join(2)
            raise ProcessorError(message) from None
        finally:
            watchdog.cancel()

    def _decode(self, answer: Any, like: pa.Schema) -> pa.Table:
        """The answer of :meth:`_answer` as a table (a :class:`ProcessorError` when it is not a batch)."""
        return answer

    def broken(self, reason: str) -> ProcessorError:
        """The error of an answer that turned out not to be a batch (``reason``) after it was read; the program
        is stopped, as for any failed batch."""
        child = self._child
        batch = f"batch {child.batches} of this run" if child is not None else "a batch"
        message = f"{self._who} wrote something that is not a batch in answer to {batch}: {reason}"
        stderr = child.stderr.text(wait=0.5) if child is not None else ""
        self._stop(graceful=False)
        return ProcessorError(with_stderr(message, stderr))

    def _failure(self, child: _Child, exc: Exception, timeout: float) -> str:
        """What went wrong, with the stderr tail; the program is killed (the next batch starts it again)."""
        code = child.exit_code(wait=0 if child.expired else 2 if isinstance(exc, _EndOfOutput) else 0.5)
        batch = f"batch {child.batches} of this run"
        if child.making_error is not None:
            message = f"{self._who}: {batch} could not be encoded for it ({child.making_error}); it was stopped"
        elif child.expired:
            message = f"{self._who} did not answer {batch} within {timeout:g} s; it was killed"
        elif code is not None:
            message = f"{self._who} {how_it_ended(code)} during {batch}"
        else:
            message = f"{self._who} wrote something that is not a batch in answer to {batch}: {exc}"
        self._stop(graceful=False)
        return with_stderr(message, child.stderr.text())

    def _stop(self, graceful: bool) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.stop(graceful)

    def close(self) -> None:
        self._stop(graceful=True)

    # ------------------------------------------------------------------------------------------- protocol
    def _started(self, child: _Child) -> None:
        """A new run of the program began."""

    def _preamble(self) -> bytes:
        raise NotImplementedError

    def _encode(self, tables: Iterable[pa.Table], number: int) -> Iterator[bytes]:
        """The batch's bytes for stdin, piece by piece (made in the writer thread)."""
        raise NotImplementedError

    def _answer(self, child: _Child, like: pa.Schema) -> Any:
        raise NotImplementedError


class JsonLinesStep(_LongLivedStep):
    """``protocol: jsonl``: JSON lines each way, each batch closed by ``["__end_of_batch__",N]``.

    The batch is encoded in slices of :data:`ENCODE_ROWS` rows by the writer thread, so the program works on the
    first slice while the next ones are encoded. Its answer is read in big blocks, the marker looked for in each
    new block only. :meth:`answer_lines` hands the answer on as JSON lines, for a sink that reads JSON itself."""

    def __init__(self, use: ProcessorUse, base_dir: Path, who: str):
        super().__init__(use, base_dir, who)
        self._lines = JsonLines()
        self._pending = b""  #: output read past the last marker

    def _started(self, child: _Child) -> None:
        self._pending = b""

    def _preamble(self) -> bytes:
        return json.dumps(self._use.args).encode() + b"\n"

    def marker(self, number: int) -> list[Any]:
        """The end-of-batch marker of the ``number``-th batch sent to this run of the program (its answer ends with
        the same line)."""
        return [END_OF_BATCH, number]

    def answer_lines(self, table: pa.Table) -> bytes:
        """The program's answer to ``table`` as it wrote it: JSON lines, not yet read (``b""`` for no rows, and
        the program is not run)."""
        return self._exchange([table], table.schema) if table.num_rows else b""

    def _encode(self, tables: Iterable[pa.Table], number: int) -> Iterator[bytes]:
        for table in tables:
            for start in range(0, table.num_rows, ENCODE_ROWS):
                yield self._lines.encode(table.slice(start, ENCODE_ROWS))
        yield _marker_bytes(self.marker(number))

    def decode(self, answer: bytes, like: pa.Schema) -> pa.Table:
        """The records of an answer of :meth:`answer_lines` (a :class:`ProcessorError` when it is not a batch)."""
        return self._decode(answer, like)

    def _decode(self, answer: bytes, like: pa.Schema) -> pa.Table:
        try:
            return self._lines.decode(answer, like)
        except _Broken as exc:
            raise self.broken(str(exc)) from None

    def _answer(self, child: _Child, like: pa.Schema) -> bytes:
        assert child.process.stdout is not None
        fd = child.process.stdout.fileno()
        blocks = [self._pending] if self._pending else []
        self._pending = b""
        found = _marker_line(blocks[0], 0) if blocks else None
        start = found[0] if found is not None else -1
        size = sum(map(len, blocks))
        while start < 0:  # each new block is searched once, with the byte before it
            chunk = os.read(fd, _READ_BLOCK)
            if not chunk:
                raise _EndOfOutput("its stdout ended")
            if chunk.startswith(b"[") and (not blocks or blocks[-1].endswith(b"\n")):
                start = size
            else:
                at = chunk.find(b"\n[")
                start = -1 if at < 0 else size + at + 1
            blocks.append(chunk)
            size += len(chunk)
        buffer = blocks[0] if len(blocks) == 1 else b"".join(blocks)
        end = buffer.find(b"\n", start)
        if end < 0:  # the marker line ends in a later block
            rest = bytearray(buffer)
            while end < 0:
                chunk = os.read(fd, _READ_BLOCK)
                if not chunk:
                    raise _EndOfOutput("its stdout ended")
                end = chunk.find(b"\n")
                end = -1 if end < 0 else len(rest) + end
                rest += chunk
            buffer = bytes(rest)
        try:
            marker = json.loads(buffer[start:end])
        except ValueError:
            marker = None
        expected = self.marker(child.batches)
        if marker != expected:
            line = buffer[start:end][:80]
            raise _Broken(f"the line {line!r} where the marker {_marker_bytes(expected).strip()!r} belongs")
        self._pending = buffer[end + 1 :]
        return buffer[:start]

    def close(self) -> None:
        super().close()
        self._lines.close()


def _marker_bytes(marker: list[Any]) -> bytes:
    return json.dumps(marker, separators=(",", ":")).encode() + b"\n"


def _marker_line(buffer: bytes, searched: int) -> tuple[int, int] | None:
    """(start, end) of the first line starting with ``[`` at or after ``searched``; end -1 while the line is
    incomplete; ``None`` when there is none."""
    if buffer.startswith(b"["):
        start = 0
    else:
        newline = buffer.find(b"\n[", searched)
        if newline < 0:
            return None
        start = newline + 1
    return start, buffer.find(b"\n", start)


def _widen(pipe: IO[bytes] | None) -> None:
    """Give a pipe :data:`_PIPE_BYTES` of room where the system allows it (fewer, bigger reads and writes)."""
    if pipe is None or not hasattr(fcntl, "F_SETPIPE_SZ"):
        return
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)


class ArrowStep(_LongLivedStep):
    """``protocol: arrow``: one Arrow IPC stream per batch each way, after one stream holding the args."""

    def _preamble(self) -> bytes:
        return _ipc_stream(pa.table({"args": [json.dumps(self._use.args)]}))

    def _encode(self, tables: Iterable[pa.Table], number: int) -> Iterator[bytes]:
        """One IPC stream, handed out record batch by record batch (slices of :data:`ENCODE_ROWS` rows): the
        program reads the first while the next ones are encoded."""
        table = pa.concat_tables(tables)
        metadata = {**(table.schema.metadata or {}), b"connector.batch": str(number).encode()}
        table = table.replace_schema_metadata(metadata)
        pieces = _Pieces()
        with ipc.new_stream(pieces, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=ENCODE_ROWS):
                writer.write_batch(batch)
                yield pieces.take()
        yield pieces.take()  # the end-of-stream marker (and the schema, for a table without record batches)

    def _answer(self, child: _Child, like: pa.Schema) -> pa.Table:
        stdout = child.process.stdout
        assert stdout is not None
        head = stdout.peek(1)[:1]  # type: ignore[attr-defined]
        if not head:
            raise _EndOfOutput("its stdout ended")
        if head != b"\xff":  # every IPC message starts with the continuation marker 0xFFFFFFFF
            raise _Broken(f"output starting with {stdout.peek(16)[:16]!r}, not an Arrow IPC stream")  # type: ignore[attr-defined]
        return ipc.open_stream(stdout).read_all()


class _Pieces:
    """A file-like sink of an IPC writer that keeps what was written until :meth:`take` (pyarrow hands it the
    record batch's buffers without a copy)."""

    closed = False

    def __init__(self) -> None:
        self._parts: list[bytes | pa.Buffer] = []

    def write(self, data: bytes | pa.Buffer) -> int:
        self._parts.append(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        """What was written since the last call, as one piece."""
        parts, self._parts = self._parts, []
        return b"".join(parts)


def _ipc_stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def open_command_step(use: ProcessorUse, base_dir: Path, who: str) -> ProcessorStep:
    """The runner of the command's protocol."""
    steps: dict[str, type[ProcessorStep]] = {"filter": FilterStep, "jsonl": JsonLinesStep, "arrow": ArrowStep}
    step: Any = steps[use.definition.protocol]
    return step(use, base_dir, who)
