"""A local file, read in chunks of whole lines; with ``follow`` the file is polled for appended lines.

Position = byte offset just after the last complete record returned, so a restart resumes exactly there. A read
takes at most ``chunk_size`` bytes (more only when one line is longer) and cuts after the last newline; a final
line without newline stays for a later read, except with ``follow: false`` at the end of the file, where it is
the last record. Formats that need the whole file (parquet, a JSON array) are read in one piece, and their
position is ``True`` once done.

Line-oriented reads hand out a memoryview of the memory-mapped file, so the format parses the page cache without
a copy (this is what brings the ingest benchmark to DuckDB's own speed). The price: a file truncated *while* a
batch reads it makes the kernel end the reading process (SIGBUS) instead of raising an error. Exactly-once holds
all the same (nothing of that batch was committed), and the next read reports the truncation as a transport
error ("shorter than the stored offset").
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

from connector_core.formats import Framing, framing_of, starts_json_array
from connector_core.transports._lines import first_line
from connector_core.transports.base import ReadResult, TransportContext, TransportError
from connector_core.transports.configs import FileInputConfig


class FileInputReader:
    """Reads one file from a byte offset."""

    def __init__(self, path: Path, config: FileInputConfig, framing: Framing):
        self.path = path
        self.config = config
        self.can_finish = not config.follow
        self._framing = framing

    def close(self) -> None:
        """Nothing stays open between reads."""

    def _open(self) -> Any:
        try:
            return open(self.path, "rb")
        except FileNotFoundError:
            raise TransportError(f"file_input: file {self.path} does not exist") from None
        except OSError as exc:
            raise TransportError(f"file_input: cannot open {self.path}: {exc}") from exc

    def _reads_whole_file(self, handle: Any, position: Any) -> bool:
        if self._framing.whole_object or isinstance(position, bool):
            return True
        if position or not self._framing.may_be_json_array:
            return False
        is_array = starts_json_array(handle.read(4096))  # a JSON array cannot be cut at newlines
        handle.seek(0)
        return is_array is True

    def read(self, position: Any, max_records: int) -> ReadResult:
        """Whole lines after byte offset ``position`` (``None``: the start), at most ``max_records`` of them."""
        with self._open() as handle:
            size = os.fstat(handle.fileno()).st_size
            if self._reads_whole_file(handle, position):
                return self._read_whole(handle, position)
            offset = int(position or 0)
            if offset > size:
                raise TransportError(
                    f"file_input: {self.path} is {size} bytes, shorter than the stored offset {offset}; "
                    "the file was truncated or replaced"
                )
            data = self._read_lines(handle, offset, size)
            descriptor = handle.fileno()
            header = (
                first_line(lambda at, length: os.pread(descriptor, length, at), size)
                if self._framing.header_line and offset > 0 and data
                else None
            )
        data = _first_records(data, max(1, max_records))
        new_offset = offset + len(data)
        return ReadResult(
            data=data or None,
            position=new_offset,
            end_of_input=not self.config.follow and new_offset >= size,
            bytes_read=len(data),
            starts_object=offset == 0,
            header=header,
        )

    def _read_lines(self, handle: Any, offset: int, size: int) -> bytes:
        """Bytes from ``offset`` to the last newline within ``chunk_size`` (or to the end of a longer line).

        The cut is found first (reading backwards from the chunk's end in small windows), so the records are
        read with one exact ``pread`` and never copied again.
        """
        descriptor = handle.fileno()
        end = min(offset + self.config.chunk_size, size)
        last_line_counts = not self.config.follow
        if end == size and last_line_counts:
            stop = size
        else:
            stop = _after_last_newline(descriptor, offset, end)
            if stop < 0:  # no newline within the chunk: one line longer than a chunk
                stop = _after_next_newline(descriptor, end, size)
                if stop < 0:
                    stop = size if last_line_counts else offset
        if stop <= offset:
            return b""
        mapped = mmap.mmap(descriptor, stop, access=mmap.ACCESS_READ)  # stays mapped while the view lives
        return memoryview(mapped)[offset:stop]

    def _read_whole(self, handle: Any, position: Any) -> ReadResult:
        if position is True:
            return ReadResult(None, True, end_of_input=not self.config.follow)
        data = handle.read()
        return ReadResult(
            data=data, position=True, end_of_input=not self.config.follow, bytes_read=len(data), starts_object=True
        )


_WINDOW = 64 * 1024


def _after_last_newline(descriptor: int, start: int, end: int) -> int:
    """The offset just after the last newline in ``[start, end)`` of a file, ``-1`` when there is none."""
    window = _WINDOW
    stop = end
    while stop > start:
        begin = max(start, stop - window)
        found = os.pread(descriptor, stop - begin, begin).rfind(b"\n")
        if found >= 0:
            return begin + found + 1
        stop = begin
        window *= 2
    return -1


def _after_next_newline(descriptor: int, start: int, size: int) -> int:
    """The offset just after the first newline at or after ``start``, ``-1`` when there is none."""
    position = start
    window = _WINDOW
    while position < size:
        piece = os.pread(descriptor, min(window, size - position), position)
        found = piece.find(b"\n")
        if found >= 0:
            return position + found + 1
        position += len(piece)
        window *= 2
    return -1


#: Bytes whose newlines are counted at once (bounds the temporary arrays of :func:`_first_records`).
_COUNT_BLOCK = 4 << 20


def _first_records(data: bytes | memoryview, max_records: int) -> bytes | memoryview:
    """``data`` cut after its ``max_records``-th line (newlines counted block by block, so the count costs a few
    MB of memory whatever the size of ``data``)."""
    if len(data) <= max_records:
        return data  # a line has at least one byte, so there cannot be too many
    seen = 0
    for start in range(0, len(data), _COUNT_BLOCK):
        is_newline = np.frombuffer(data[start : start + _COUNT_BLOCK], dtype=np.uint8) == 10
        count = int(np.count_nonzero(is_newline))
        if seen + count >= max_records:
            cut = start + int(np.flatnonzero(is_newline)[max_records - seen - 1]) + 1
            return data if cut == len(data) else data[:cut]
        seen += count
    return data  # max_records lines or fewer, the last one maybe without a newline


def open_reader(ctx: TransportContext) -> FileInputReader:
    """A reader of ``config.path`` (relative to the project folder)."""
    config = ctx.connector.transport.parsed_config()
    assert isinstance(config, FileInputConfig)
    path = Path(config.path)
    if not path.is_absolute():
        path = ctx.base_dir / path
    return FileInputReader(path, config, framing_of(ctx.connector.format))
