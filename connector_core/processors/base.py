"""What every processor runner shares: the error, the step interface, and the stderr tail of a child program."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from abc import ABC, abstractmethod
from typing import IO

import pyarrow as pa

#: Bytes of a child program's stderr kept for error messages.
STDERR_TAIL_BYTES = 2048


class ProcessorError(RuntimeError):
    """A processor that failed on a batch (the batch is not committed and will be read again)."""


class ProcessorStep(ABC):
    """One processor of one connector for one run: called batch after batch; :meth:`close` stops what it
    started (child programs, connections, a class instance's ``close``)."""

    @abstractmethod
    def __call__(self, table: pa.Table) -> pa.Table:
        """The processed batch; raises :class:`ProcessorError`."""

    def close(self) -> None:  # noqa: B027 - most steps hold nothing
        """Release what the step holds (idempotent)."""


class StderrTail:
    """Drains a child's stderr in a thread, so the child never blocks on a full pipe; keeps the last bytes."""

    def __init__(self, pipe: IO[bytes], name: str):
        self._pipe = pipe
        self._tail = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, name=f"processor-stderr-{name}", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        fd = self._pipe.fileno()
        try:
            while chunk := os.read(fd, 65536):
                with self._lock:
                    self._tail += chunk
                    if len(self._tail) > 2 * STDERR_TAIL_BYTES:
                        del self._tail[:-STDERR_TAIL_BYTES]
        except (OSError, ValueError):
            pass
        finally:
            self._pipe.close()

    def text(self, wait: float = 1.0) -> str:
        """The last :data:`STDERR_TAIL_BYTES` written, after waiting up to ``wait`` seconds for its end."""
        self._thread.join(timeout=wait)
        with self._lock:
            return tail_text(bytes(self._tail))


def tail_text(data: bytes) -> str:
    """The last :data:`STDERR_TAIL_BYTES` of ``data`` as text."""
    return data[-STDERR_TAIL_BYTES:].decode("utf-8", "replace").strip()


def with_stderr(message: str, stderr: str) -> str:
    """``message`` followed by the program's stderr tail, when it wrote any."""
    return f"{message}; its stderr ends with:\n{stderr}" if stderr else message


def how_it_ended(code: int) -> str:
    """``exited with 3`` or ``was killed by signal 9``."""
    return f"was killed by signal {-code}" if code < 0 else f"exited with {code}"


def kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signal the program and everything it started (it runs in its own process group)."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
