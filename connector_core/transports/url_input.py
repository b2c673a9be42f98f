"""``url_input``: one HTTP GET of ``path``; end of input after the whole body.

The body is streamed and handed out in pieces of at most ``chunk_size`` bytes and ``max_records`` lines that end
at a newline, so a batch stays bounded whatever the body's size. The position is the byte offset reached in the
body. After a restart the reader asks for the rest with ``Range: bytes=N-``; a server that ignores ranges (answers
200) is read again from the start and the first N bytes are skipped. Formats that cannot be cut at newlines
(parquet, a JSON array) get the whole body in one piece; so does a JSON body that turns out to be an array (first character ``[``), as the json
format reads arrays too.
"""

from __future__ import annotations

import http.client
import re
import urllib.error
import urllib.request
from typing import Any

from connector_core.formats import framing_of
from connector_core.secrets import EnvSecret
from connector_core.transports._lines import FirstLine, LineBuffer
from connector_core.transports.base import ReadResult, TransportContext, TransportError
from connector_core.transports.configs import UrlInputConfig

_BLOCK = 1024 * 1024


# ------------------------------------------------------------------------------------------------ reader
def _header_value(value: str | EnvSecret) -> str:
    return value.resolve() if isinstance(value, EnvSecret) else value


class UrlReader:
    """Streams one HTTP body; the response stays open between reads of the same run."""

    can_finish = True

    def __init__(self, ctx: TransportContext) -> None:
        self._config: UrlInputConfig = ctx.connector.transport.parsed_config()
        self._url = self._config.path
        self._framing = framing_of(ctx.connector.format)
        self._first_line: FirstLine | None = None  #: the body's first line (CSV with a header)
        self._response: http.client.HTTPResponse | None = None
        self._offset: int | None = None  #: body offset of the first buffered byte (= position handed out)
        self._buffer = LineBuffer()
        self._eof = False

    # The body is finite, so blocking reads (bounded by ``timeout_seconds`` per socket operation) are fine.
    def read(self, position: Any, max_records: int) -> ReadResult:
        """Return the next piece of the body after byte offset ``position``."""
        start = int(position or 0)
        if start < 0:
            raise TransportError(f"url_input {self._url}: invalid position {position!r}")
        if self._offset != start:
            self._open(start)
        try:
            self._fill(max_records)
        except TransportError:
            # A connection dropped while idle between batches: ask again for the rest, once.
            self._open(start)
            self._fill(max_records)
        piece = self._buffer.take_piece(self._config.chunk_size, max_records, self._eof)
        assert self._offset is not None
        self._offset += len(piece)
        end = self._eof and len(self._buffer) == 0
        if end:
            self._close_response()
        header = None
        if self._framing.header_line and start > 0 and piece:
            if self._first_line is None:  # resumed with a range: the start of the body was never read
                self._first_line = self._fetch_first_line()
            header = self._first_line.end()
        return self._buffer.result(piece, start, self._offset, end, header)

    def close(self) -> None:
        """Close the HTTP response."""
        self._close_response()
        self._offset = None

    # -------------------------------------------------------------------------------------------- internals
    def _fill(self, max_records: int) -> None:
        while not self._eof and not self._buffer.full(self._config.chunk_size, max_records):
            block = self._read_block()
            if not block:
                self._eof = True
                break
            if self._first_line is not None:
                self._first_line.see(block)
            self._buffer.feed(block)

    def _read_block(self, size: int = _BLOCK) -> bytes:
        if self._response is None:
            return b""
        try:
            return self._response.read(size)
        except (OSError, http.client.HTTPException) as exc:
            self._close_response()
            raise TransportError(f"url_input: reading the body of {self._url} failed: {exc!r}") from exc

    def _open(self, start: int) -> None:
        self._close_response()
        self._buffer = LineBuffer(self._framing, from_start=start == 0)
        self._offset = start
        self._eof = False
        self._first_line = FirstLine() if self._framing.header_line else None
        response = self._get(start)
        if response is None:
            return
        self._response = response
        if not start:
            return
        if response.status == 206:
            self._first_line = None  # the start of the body is not in this response
            first = _content_range_start(response.headers.get("Content-Range"))
            if first != start:
                self._close_response()
                raise TransportError(
                    f"url_input: GET {self._url} with Range bytes={start}- answered a range starting at {first}"
                )
            return
        self._skip(start)

    def _get(self, start: int) -> http.client.HTTPResponse | None:
        """The response to a GET of the body from byte ``start`` on; ``None`` when the range starts at the end."""
        headers = {str(k): _header_value(v) for k, v in self._config.headers.items()}
        if start:
            headers["Range"] = f"bytes={start}-"
        request = urllib.request.Request(self._url, headers=headers, method="GET")
        try:
            return urllib.request.urlopen(request, timeout=self._config.timeout_seconds)  # noqa: S310
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and start:
                self._past_end(start, exc.headers.get("Content-Range"))
                return None
            raise TransportError(f"url_input: GET {self._url} answered HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise TransportError(f"url_input: GET {self._url} failed: {exc.reason}") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise TransportError(f"url_input: GET {self._url} failed: {exc}") from None

    def _fetch_first_line(self) -> FirstLine:
        """The body's first line, from a GET of its start (the response is closed after that line)."""
        first = FirstLine()
        response = self._get(0)
        assert response is not None  # only a range can start at the end
        try:
            with response:
                while first.line is None:
                    block = response.read(64 * 1024)
                    if not block:
                        break
                    first.see(block)
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"url_input: reading the body of {self._url} failed: {exc!r}") from None
        first.end()
        return first

    def _skip(self, count: int) -> None:
        """The server sent the whole body: drop the ``count`` bytes already consumed."""
        left = count
        while left:
            block = self._read_block(min(left, _BLOCK))
            if not block:
                self._close_response()
                raise TransportError(
                    f"url_input: the body of {self._url} has {count - left} bytes, fewer than the stored "
                    f"position {count}; the resource changed since it was read"
                )
            if self._first_line is not None:
                self._first_line.see(block)
            left -= len(block)

    def _past_end(self, start: int, content_range: str | None) -> None:
        """416 on ``Range: bytes=N-``: the body was read to its end already (or it shrank)."""
        match = re.fullmatch(r"bytes \*/(\d+)", (content_range or "").strip())
        if match and int(match.group(1)) < start:
            raise TransportError(
                f"url_input: the body of {self._url} has {match.group(1)} bytes, fewer than the stored "
                f"position {start}; the resource changed since it was read"
            )
        self._eof = True

    def _close_response(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-", value or "")
    return int(match.group(1)) if match else None


def open_reader(ctx: TransportContext) -> UrlReader:
    """Open a ``url_input`` reader (the request is made on the first read)."""
    return UrlReader(ctx)
