"""``command``: an external program (any language) writing records, JSON lines by default, to stdout.

The program runs in the project folder (``ctx.base_dir``) with a minimal environment (PATH, HOME, locale...:
``connector_core.secrets.CHILD_ENVIRONMENT``) plus the config's ``env`` (secrets as ``{env: NAME}``), so no other
secret of this process reaches it; it is kept running between batches. Output that is one document (parquet, or with the json format a JSON array: first
character ``[``) is handed out whole when the program exits. Otherwise a batch holds the whole lines that arrived within ``poll_timeout_seconds`` (at most
``chunk_size`` bytes and ``max_records`` lines). Its stderr lines go to the connector's log. End of input when it
exits 0 and its output is read; a non-zero exit is a :class:`TransportError` naming the exit code and the last
stderr lines (the complete lines written before it are still delivered first).

Position: the number of stdout bytes consumed. After a restart the program is run again and that many bytes are
skipped, so a command must write the same output on every run to resume exactly (deterministic; a live source
should keep its own cursor instead).
"""

from __future__ import annotations

import collections
import os
import queue
import select
import shlex
import signal
import subprocess
import threading
import time
from typing import IO, Any

from connector_core.formats import framing_of
from connector_core.secrets import child_environment
from connector_core.transports._lines import FirstLine, LineBuffer
from connector_core.transports.base import ReadResult, TransportContext, TransportError
from connector_core.transports.configs import CommandInputConfig

_BLOCK = 1024 * 1024
_STDERR_LINES = 20


class CommandReader:
    """One run of the program; restarted when asked for a position other than where it is."""

    can_finish = True

    def __init__(self, ctx: TransportContext) -> None:
        self._ctx = ctx
        self._config: CommandInputConfig = ctx.connector.transport.parsed_config()
        self._name = shlex.join(self._config.command)
        self._framing = framing_of(ctx.connector.format)
        self._first_line: FirstLine | None = None  #: collects the output's first line (CSV with a header)
        self._process: subprocess.Popen[bytes] | None = None
        self._offset: int | None = None  #: output bytes handed out by this run (= the position)
        self._skip = 0  #: output bytes still to drop after a restart
        self._buffer = LineBuffer()
        self._stdout_closed = False
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._stderr_lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stderr_thread: threading.Thread | None = None
        self._failed: str | None = None

    def read(self, position: Any, max_records: int) -> ReadResult:
        """Return the whole lines written after ``position`` bytes (waiting at most ``poll_timeout_seconds``)."""
        start = int(position or 0)
        if start < 0:
            raise TransportError(f"command {self._name}: invalid position {position!r}")
        if self._process is None or self._offset != start:
            self._start(start)
        deadline = time.monotonic() + self._config.poll_timeout_seconds
        try:
            self._pump(deadline, max_records)
        finally:
            self._flush_log()
        if self._stdout_closed and self._skip:
            skipped = start - self._skip
            self.close()
            raise TransportError(
                f"command {self._name} wrote {skipped} bytes, fewer than the stored position {start}; "
                "a command must write the same output on every run to resume"
            )
        piece = self._buffer.take_piece(self._config.chunk_size, max_records, self._stdout_closed)
        assert self._offset is not None
        self._offset += len(piece)
        end = False
        if self._stdout_closed and not len(self._buffer):
            code = self._exit_code(deadline)
            if code is not None and code != 0:
                self._failed = self._failure(code)
                if not piece:
                    raise TransportError(self._failed)
            end = code == 0
        header = self._first_line.line if self._first_line is not None else None
        return self._buffer.result(piece, start, self._offset, end, header)

    def close(self) -> None:
        """Stop the program (SIGTERM, then SIGKILL) and release its pipes."""
        process, self._process = self._process, None
        self._offset = None
        if process is None:
            return
        if process.returncode is None:  # not reaped yet, so its pid (= its group id) is still ours
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        # stderr is closed by its reader thread at end of file (closing it here could block on that thread).
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=1)
        self._flush_log()

    # -------------------------------------------------------------------------------------------- internals
    def _start(self, position: int) -> None:
        self.close()
        env = child_environment(self._config.env)
        try:
            process = subprocess.Popen(
                self._config.command,
                cwd=self._ctx.base_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, so close() stops its children too
            )
        except OSError as exc:
            raise TransportError(f"command {self._name}: cannot start it in {self._ctx.base_dir}: {exc}") from None
        self._process = process
        self._offset = position
        self._skip = position
        self._first_line = FirstLine() if self._framing.header_line else None
        self._buffer = LineBuffer(self._framing, from_start=position == 0)
        self._stdout_closed = False
        self._failed = None
        self._stderr_tail = collections.deque(maxlen=_STDERR_LINES)
        assert process.stderr is not None
        self._stderr_thread = threading.Thread(
            target=_collect_stderr,
            args=(process.stderr, self._stderr_tail, self._stderr_lines),
            name=f"command-stderr-{process.pid}",
            daemon=True,
        )
        self._stderr_thread.start()

    def _pump(self, deadline: float, max_records: int) -> None:
        """Read stdout until a piece is ready, stdout closes, or the deadline passes."""
        if self._failed is not None:
            raise TransportError(self._failed)
        assert self._process is not None and self._process.stdout is not None
        fd = self._process.stdout.fileno()
        while not self._stdout_closed:
            if not self._skip and self._buffer.full(self._config.chunk_size, max_records):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return
            data = os.read(fd, _BLOCK)
            if not data:
                self._stdout_closed = True
                return
            if self._first_line is not None:
                self._first_line.see(data)  # a rerun writes its output again from the start
            if self._skip:
                dropped = min(self._skip, len(data))
                self._skip -= dropped
                data = data[dropped:]
            if data:
                self._buffer.feed(data)

    def _exit_code(self, deadline: float) -> int | None:
        assert self._process is not None
        try:
            code = self._process.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None  # stdout closed but the program still runs: ask again next batch
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=1)  # its last lines, unless a child still holds stderr
        self._flush_log()
        return code

    def _failure(self, code: int) -> str:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        tail = "\n".join(self._stderr_tail)
        return f"command {self._name} {how}; last stderr lines:\n{tail}" if tail else f"command {self._name} {how}"

    def _flush_log(self) -> None:
        while True:
            try:
                line = self._stderr_lines.get_nowait()
            except queue.Empty:
                return
            self._ctx.log(f"command {self._ctx.table}.{self._ctx.connector.name}: {line}")


def _collect_stderr(pipe: IO[bytes], tail: collections.deque[str], lines: queue.SimpleQueue[str]) -> None:
    """Drain the program's stderr (so it never blocks on it); the lines are logged by the reading thread."""
    try:
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            tail.append(line)
            lines.put(line)
    except (OSError, ValueError):
        pass
    finally:
        pipe.close()


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def open_reader(ctx: TransportContext) -> CommandReader:
    """Open a ``command`` reader (the program starts on the first read)."""
    return CommandReader(ctx)
