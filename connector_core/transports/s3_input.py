"""``s3_input``: the objects under ``prefix`` (or the one object ``key``) of ``bucket``, in key order.

Each read returns data of one object only; a piece from the middle of a CSV object comes with the object's first
line (``header``, one more ranged GET), so its fields map by the same column names.
Large objects are fetched in ranged GETs of ``chunk_size`` bytes and cut at a newline (formats that cannot be
cut, parquet or a JSON array, get the whole object at once; with the json format an object whose first character
is ``[`` is such an array). The bucket is listed at read time, starting after
the last object done, so objects added later are read too, as long as their key sorts after it: write
time-ordered keys. Keys ending with ``/`` (folder markers) are skipped.

Position: ``{"after": last key fully done, "offset": bytes done in the current object, "key": current key}``
(``key`` only while an object is half done). End of input when no object is left after ``after``.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from connector_core.formats import framing_of
from connector_core.transports._lines import LineBuffer, first_line
from connector_core.transports.base import ReadResult, TransportContext, TransportError
from connector_core.transports.configs import S3InputConfig


class S3Reader:
    """Reads objects through a boto3 client (production: dagster-aws ``S3Resource(...).get_client()``)."""

    can_finish = True

    def __init__(self, ctx: TransportContext) -> None:
        self._config: S3InputConfig = ctx.connector.transport.parsed_config()
        self._bucket = self._config.bucket
        self._framing = framing_of(ctx.connector.format)
        try:
            self._client = ctx.clients.s3_client(self._config.connection)
        except Exception as exc:  # a missing secret or a bad endpoint in the connection
            raise TransportError(f"s3_input: cannot build an S3 client: {exc}") from None

    def read(self, position: Any, max_records: int) -> ReadResult:
        """Return the next piece of the current object (or of the next one)."""
        after, key, offset = self._parse(position)
        if key is None:
            key = self._next_key(after)
            offset = 0
            if key is None:
                return ReadResult(data=None, position=self._position(after, None, 0), end_of_input=True)
        size = self._size(key)
        if offset > size:
            raise TransportError(
                f"s3_input: s3://{self._bucket}/{key} has {size} bytes, fewer than the stored offset {offset}; "
                "the object changed since it was read"
            )
        piece = self._piece(key, offset, size, max_records)
        done = offset + len(piece)
        if done >= size:
            position = self._position(key, None, 0)
            end = self._next_key(key) is None
        else:
            position = self._position(after, key, done)
            end = False
        header = None
        if self._framing.header_line and offset > 0 and piece:
            header = first_line(lambda at, length: self._get(key, at, at + length - 1), size)
        return ReadResult(
            data=piece or None,
            position=position,
            end_of_input=end,
            bytes_read=len(piece),
            starts_object=offset == 0,
            header=header,
        )

    def close(self) -> None:
        """Nothing to release: every request is complete when ``read`` returns."""

    # -------------------------------------------------------------------------------------------- internals
    @staticmethod
    def _parse(position: Any) -> tuple[str | None, str | None, int]:
        if position is None:
            return None, None, 0
        if not isinstance(position, dict):
            raise TransportError(f"s3_input: invalid position {position!r}")
        offset = int(position.get("offset") or 0)
        key = position.get("key") if offset else None
        return position.get("after"), key, offset

    @staticmethod
    def _position(after: str | None, key: str | None, offset: int) -> dict[str, Any]:
        position: dict[str, Any] = {"after": after, "offset": offset}
        if key is not None:
            position["key"] = key
        return position

    def _next_key(self, after: str | None) -> str | None:
        """The first key after ``after`` (listing now), or ``None``."""
        if self._config.key is not None:
            return None if after is not None and after >= self._config.key else self._config.key
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Prefix": self._config.prefix or ""}
        if after is not None:
            kwargs["StartAfter"] = after
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(**kwargs, PaginationConfig={"PageSize": 100}):
                for item in page.get("Contents", []):
                    if not item["Key"].endswith("/"):
                        return item["Key"]
        except (ClientError, BotoCoreError) as exc:
            raise self._error("listing", f"s3://{self._bucket}/{self._config.prefix or ''}", exc) from None
        return None

    def _size(self, key: str) -> int:
        try:
            return int(self._client.head_object(Bucket=self._bucket, Key=key)["ContentLength"])
        except (ClientError, BotoCoreError) as exc:
            raise self._error("reading", f"s3://{self._bucket}/{key}", exc) from None

    def _get(self, key: str, first: int | None = None, last: int | None = None) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": key}
        if first is not None:
            kwargs["Range"] = f"bytes={first}-{last}"
        try:
            return self._client.get_object(**kwargs)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._error("reading", f"s3://{self._bucket}/{key}", exc) from None

    def _piece(self, key: str, offset: int, size: int, max_records: int) -> bytes:
        if size == 0:
            return b""
        if self._framing.whole_object:
            return self._get(key)
        chunk = self._config.chunk_size
        buffer = LineBuffer(self._framing, from_start=offset == 0)
        fetched = offset
        while True:
            last = min(size, fetched + chunk) - 1
            buffer.feed(self._get(key, fetched, last))
            fetched = last + 1
            final = fetched >= size
            if buffer.whole:  # a JSON array: the whole object
                rest = b"" if final else self._get(key, fetched, size - 1)
                return buffer.take_all() + rest
            piece = buffer.take(chunk, max_records, final=final)
            if piece or final:  # a line longer than chunk_size takes several ranges
                return piece

    def _error(self, doing: str, where: str, exc: Exception) -> TransportError:
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket" or (code in ("404", "NotFound") and not self._bucket_exists()):
                return TransportError(f"s3_input: bucket {self._bucket!r} does not exist")
            if code in ("NoSuchKey", "404", "NotFound"):
                return TransportError(f"s3_input: no object {where}")
            message = exc.response.get("Error", {}).get("Message", "")
            return TransportError(f"s3_input: {doing} {where} failed: {code or status} {message}".rstrip())
        return TransportError(f"s3_input: {doing} {where} failed: {exc}")

    def _bucket_exists(self) -> bool:
        try:
            self._client.head_bucket(Bucket=self._bucket)
        except (ClientError, BotoCoreError):
            return False
        return True


def open_reader(ctx: TransportContext) -> S3Reader:
    """Open an ``s3_input`` reader."""
    return S3Reader(ctx)
