"""Line helpers shared by the byte transports (``url_input``, ``s3_input``, ``command``)."""

from __future__ import annotations

from collections.abc import Callable

from connector_core.project import ConnectorSpec
from connector_core.transports.base import ReadResult


def splits_at_newlines(connector: ConnectorSpec) -> bool:
    """Whether the connector's format is line oriented (JSON lines, CSV), so input may be cut at newlines."""
    fmt = connector.format
    if fmt is None:
        return True
    if fmt.name == "parquet":
        return False
    return not (fmt.name == "json" and fmt.config.get("array"))


def needs_header(connector: ConnectorSpec) -> bool:
    """Whether pieces from the middle of an object need its first line (CSV with a header line)."""
    fmt = connector.format
    return fmt is not None and fmt.name == "csv" and bool(fmt.config.get("header", True))


#: The longest first line looked for (a CSV header longer than this is not one).
MAX_HEADER_BYTES = 1 << 20


def first_line(read_range: Callable[[int, int], bytes], size: int) -> bytes:
    """The first line (with its newline) of an object of ``size`` bytes read with ``read_range(offset, length)``,
    in windows that double from 64 KB."""
    first = FirstLine()
    offset, window = 0, 64 * 1024
    while first.line is None and offset < size:
        block = read_range(offset, min(window, size - offset))
        if not block:
            break
        first.see(block)
        offset += len(block)
        window *= 2
    return first.end()


class FirstLine:
    """The first line of a stream, collected from the blocks read from its start."""

    def __init__(self) -> None:
        self._data = bytearray()
        self.line: bytes | None = None  #: set once the first newline (or :data:`MAX_HEADER_BYTES`) was seen

    def see(self, block: bytes) -> None:
        """Take the next block of the stream (ignored once the line is complete)."""
        if self.line is not None:
            return
        cut = block.find(b"\n")
        self._data += block if cut < 0 else block[: cut + 1]
        if cut >= 0 or len(self._data) >= MAX_HEADER_BYTES:
            self.line = bytes(self._data)

    def end(self) -> bytes:
        """The stream ended: its first line is what was seen."""
        if self.line is None:
            self.line = bytes(self._data)
        return self.line


def may_be_json_array(connector: ConnectorSpec) -> bool:
    """Whether the format is json, whose input may turn out to be one JSON array (it is then read whole)."""
    return connector.format is not None and connector.format.name == "json"


def starts_json_array(head: bytes) -> bool | None:
    """Whether input beginning with ``head`` is a JSON array; ``None`` while only whitespace was seen."""
    stripped = head.lstrip()
    return None if not stripped else stripped[:1] == b"["


class LineBuffer:
    """Bytes received but not handed out yet; :meth:`take` removes whole lines from the front."""

    def __init__(self) -> None:
        self._data = bytearray()
        self.newlines = 0  #: complete lines held

    def __len__(self) -> int:
        return len(self._data)

    def head(self, size: int = 4096) -> bytes:
        """The first ``size`` bytes held (left in place)."""
        return bytes(self._data[:size])

    def feed(self, data: bytes) -> None:
        """Append bytes."""
        self._data += data
        self.newlines += data.count(b"\n")

    def full(self, max_bytes: int, max_lines: int) -> bool:
        """True when a piece of ``max_lines`` lines or ``max_bytes`` bytes (ending at a newline) is ready."""
        return self.newlines >= max(1, max_lines) or (self.newlines > 0 and len(self._data) >= max_bytes)

    def take_all(self) -> bytes:
        """Remove and return everything."""
        piece = bytes(self._data)
        self._data.clear()
        self.newlines = 0
        return piece

    def take_piece(self, whole: bool, max_bytes: int, max_lines: int, final: bool) -> bytes:
        """The next piece: with ``whole`` (a JSON array, parsed in one piece) everything once the input ended
        (``final``), else :meth:`take`."""
        if whole:
            return self.take_all() if final else b""
        return self.take(max_bytes, max_lines, final=final)

    def result(
        self, piece: bytes, start: int, offset: int, end_of_input: bool, header: bytes | None = None
    ) -> ReadResult:
        """The :class:`ReadResult` of a piece taken at byte ``start`` of the stream; ``offset``: after it;
        ``header``: the stream's first line (CSV with a header), passed on when the piece starts after it."""
        return ReadResult(
            data=piece or None,
            position=offset,
            end_of_input=end_of_input,
            bytes_read=len(piece),
            buffered_records=self.newlines,
            starts_object=bool(piece) and start == 0,
            header=header if piece and start > 0 else None,
        )

    def take(self, max_bytes: int, max_lines: int, final: bool = False) -> bytes:
        """Remove and return whole lines: at most ``max_lines`` lines and ``max_bytes`` bytes (one line longer
        than ``max_bytes`` comes whole). With ``final`` (no more input), a last line without a newline is
        returned once it fits. Returns ``b""`` when no whole line is held."""
        data = self._data
        max_lines = max(1, max_lines)
        if not data:
            return b""
        unterminated = data[-1:] != b"\n"
        if final and len(data) <= max_bytes and self.newlines + unterminated <= max_lines:
            return self.take_all()
        end = data.rfind(b"\n", 0, max_bytes) + 1
        if end == 0:
            end = data.find(b"\n", max_bytes) + 1
        if end == 0:
            return self.take_all() if final else b""
        if data.count(b"\n", 0, end) > max_lines:
            cut = -1
            for _ in range(max_lines):
                cut = data.find(b"\n", cut + 1)
            end = cut + 1
        piece = bytes(data[:end])
        del data[:end]
        self.newlines -= piece.count(b"\n")
        return piece
