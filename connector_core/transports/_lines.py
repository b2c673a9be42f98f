"""Line helpers shared by the byte transports (``url_input``, ``s3_input``, ``command``, ``file_input``).

How a format's bytes may be cut is the format's :class:`~connector_core.formats.Framing`; :class:`LineBuffer`
applies it to a stream (lines, or one whole piece for a JSON array found by its first byte).
"""

from __future__ import annotations

from collections.abc import Callable

from connector_core.formats import LINES, Framing, starts_json_array
from connector_core.transports.base import ReadResult

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


class LineBuffer:
    """Bytes received but not handed out yet; :meth:`take` removes whole lines from the front.

    With a ``framing`` of whole objects, or one that may be a JSON array and input that turns out to be one (its
    first non-blank byte, when the buffer gets the stream ``from_start``), the stream is one piece: :attr:`whole`.
    """

    def __init__(self, framing: Framing = LINES, from_start: bool = True) -> None:
        self._data = bytearray()
        self.newlines = 0  #: complete lines held
        self.whole = framing.whole_object  #: the stream is handed out in one piece, once it ended
        self._sniffing = framing.may_be_json_array and from_start and not self.whole

    def __len__(self) -> int:
        return len(self._data)

    def feed(self, data: bytes) -> None:
        """Append bytes."""
        if self._sniffing:
            is_array = starts_json_array(data)
            if is_array is not None:
                self._sniffing = False
                self.whole = is_array
        self._data += data
        self.newlines += data.count(b"\n")

    def full(self, max_bytes: int, max_lines: int) -> bool:
        """True when a piece of ``max_lines`` lines or ``max_bytes`` bytes (ending at a newline) is ready (never
        for a :attr:`whole` stream: it is one piece, handed out at its end)."""
        if self.whole:
            return False
        return self.newlines >= max(1, max_lines) or (self.newlines > 0 and len(self._data) >= max_bytes)

    def take_all(self) -> bytes:
        """Remove and return everything."""
        piece = bytes(self._data)
        self._data.clear()
        self.newlines = 0
        return piece

    def take_piece(self, max_bytes: int, max_lines: int, final: bool) -> bytes:
        """The next piece: for a :attr:`whole` stream everything once the input ended (``final``), else
        :meth:`take`."""
        if self.whole:
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
