"""Formats: how a transport cuts bytes, and bytes -> an Arrow table of the table's schema, plus parse errors.

The format owns every rule about its bytes:

- its typed config (:class:`JsonFormatConfig`, :class:`CsvFormatConfig`, :class:`ParquetFormatConfig`; an unknown
  key is refused at its key path naming the nearest allowed one, as everywhere in the project file), inside :class:`Format`, the project file's ``format: {name, config}``;
- its :class:`Framing`, which the byte transports ask how they may cut the input (at newlines, whole objects, a
  header line handed on, a JSON array found by its first byte: :func:`starts_json_array`);
- :func:`json_route`, the one decision whether a sink's own JSON reader reads a batch.

The fast path hands the whole input to one pyarrow reader (``pyarrow.json`` / ``pyarrow.csv`` /
``pyarrow.parquet``) with the sink table's schema as the explicit schema; records never become Python objects.
When that call fails because of a malformed or incompatible record, the input is cut into lines (offsets found
with numpy, slices are zero-copy views) and searched level by level (:func:`_search`): every failing range is
halved and both halves parsed again, so a few bad records among ``n`` cost ``O(log n)`` reader calls each. When
halving stops narrowing the failing lines down (many bad records), a reader's *screen* judges the lines left
one by one in a single pass (pyarrow's JSON reader: :func:`_screen_json_lines`; DuckDB's: a query), and the
lines it does not reject are read again in one call: dirty input costs a linear pass, not ``O(k log n)`` calls.
A screen only rejects what its reader rejects too (what it misses, the reader finds), so a record's fate never
depends on its neighbours. Casting to the table's schema is searched over rows the same way. Each bad record
becomes ``(index, reason)``, ``index`` being its record number within the input.

Records that are not UTF-8 are malformed, wherever the bad byte is (DuckDB's rule; pyarrow's JSON reader would
pass them on to fail in the sink). A JSON-lines record ``null`` is a row of nulls, as both readers read it
mid-input (pyarrow's reader crashes on one that starts a block: it is read as ``{}``).

A sink may bring its own JSON reader (``json_reader``: a :class:`RecordReader`, e.g. DuckDB's ``read_json``
with its screen): it replaces pyarrow's for the whole input, search included, and raises :class:`RecordError`
for a record it rejects.
"""

from __future__ import annotations

import enum
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from json.scanner import make_scanner
from typing import Any, ClassVar, Literal, Self, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from connector_core.hints import unknown_key_message

#: Longest reason kept per bad record.
MAX_REASON_CHARS = 300
_MIN_BLOCK = 1 << 20
#: Bytes per run of lines below which :meth:`_Lines.gather` masks the bytes rather than slicing run by run.
_BYTES_PER_SLICE = 512
_MAX_BLOCK = 8 << 20


# ------------------------------------------------------------------------------------------------ framing
@dataclass(frozen=True)
class Framing:
    """How a transport may cut a format's bytes into pieces (it asks this, never the format's name)."""

    #: One piece per file, object, body or program output (parquet, a declared JSON array).
    whole_object: bool = False
    #: Input whose first non-blank byte is ``[`` is one JSON array: read it whole (:func:`starts_json_array`).
    may_be_json_array: bool = False
    #: A piece from the middle of an object needs the object's first line (CSV with a header line).
    header_line: bool = False
    #: A newline inside one record may become a space without changing the record (JSON).
    newlines_are_whitespace: bool = False


#: Records cut at any newline (also the framing of connectors without a format).
LINES = Framing()


def starts_json_array(head: bytes | memoryview) -> bool | None:
    """Whether input beginning with ``head`` is a JSON array (first non-blank byte ``[``); ``None`` while
    ``head`` is blank."""
    first = _first_byte(head)
    return None if not first else first == b"["


def _first_byte(data: bytes | memoryview) -> bytes:
    """The first byte that is not white space (``b""`` when there is none), without copying all of ``data``."""
    view = memoryview(data)
    for start in range(0, len(view), 4096):
        stripped = bytes(view[start : start + 4096]).lstrip()
        if stripped:
            return stripped[:1]
    return b""


# ---------------------------------------------------------------------------------------- format configs
JsonReaderName = Literal["auto", "arrow"]
#: Values of the json format's ``reader`` key.
JSON_READERS: tuple[str, ...] = get_args(JsonReaderName)


class FormatConfig(BaseModel):
    """Base of the per-format config models: an unknown key is refused naming the nearest key the format allows."""

    model_config = ConfigDict(extra="forbid")

    #: The format's name in the project file.
    format_name: ClassVar[str]

    @model_validator(mode="wrap")
    @classmethod
    def _known_keys(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        """Each unknown key is refused at its own key path, naming the nearest allowed key (else all of them), in
        the project file's words (:func:`~connector_core.hints.unknown_key_message`); other errors pass as they
        are."""
        try:
            return handler(data)
        except ValidationError as exc:
            if not any(error["type"] == "extra_forbidden" for error in exc.errors()):
                raise
            allowed = list(cls.model_fields)
            details = [
                InitErrorDetails(
                    type=PydanticCustomError(
                        "unknown_key", "{message}", {"message": unknown_key_message(str(error["loc"][-1]), allowed)}
                    ),
                    loc=error["loc"],
                    input=error["input"],
                )
                if error["type"] == "extra_forbidden"
                else InitErrorDetails(type=error["type"], loc=error["loc"], input=error["input"], **_ctx(error))
                for error in exc.errors()
            ]
            raise ValidationError.from_exception_data(exc.title, details) from None

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only the keys the project file set (defaults are the format's business, not the file's)."""
        return {key: value for key, value in handler(self).items() if key in self.model_fields_set}

    @property
    def framing(self) -> Framing:
        """How transports may cut input of this format."""
        return LINES


class JsonFormatConfig(FormatConfig):
    """``json``: JSON lines, or one JSON array (``array: true``, or input whose first non-blank byte is ``[``)."""

    format_name = "json"
    array: bool = Field(default=False, description="The input is one JSON array (read whole), never JSON lines.")
    reader: JsonReaderName = Field(
        default="auto", description="auto: the sink's own JSON reader when it has one, else pyarrow's; arrow: pyarrow's"
    )

    @field_validator("reader", mode="before")
    @classmethod
    def _known_reader(cls, value: Any) -> Any:
        if value not in JSON_READERS:
            raise ValueError(
                f"json format reader {value!r} is not one of {', '.join(JSON_READERS)} "
                "(auto: the sink's own JSON reader when it has one, else pyarrow's; arrow: always pyarrow's)"
            )
        return value

    @property
    def framing(self) -> Framing:
        """Lines unless declared an array; input starting with ``[`` is an array all the same."""
        return Framing(whole_object=self.array, may_be_json_array=not self.array, newlines_are_whitespace=True)


class CsvFormatConfig(FormatConfig):
    """``csv``: one record per line, fields named by a header line (``header: false``: by the table's columns)."""

    format_name = "csv"
    header: bool = Field(default=True, description="The first line of each file or object names the fields.")
    delimiter: str = Field(default=",", description="The field separator: one character.")

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, value: str) -> str:
        if len(value) != 1:
            raise ValueError(f"csv delimiter must be one character, got {value!r}")
        return value

    @property
    def framing(self) -> Framing:
        """Lines; with a header, pieces after the first carry the object's first line."""
        return Framing(header_line=self.header)


class ParquetFormatConfig(FormatConfig):
    """``parquet``: one Parquet file per file or object (no config keys)."""

    format_name = "parquet"

    @property
    def framing(self) -> Framing:
        """Whole objects only."""
        return Framing(whole_object=True)


def _ctx(error: ErrorDetails) -> dict[str, Any]:
    """The ``ctx`` argument that rebuilds ``error`` (none when it has no context)."""
    return {"ctx": error["ctx"]} if "ctx" in error else {}


#: Format name -> its config model.
FORMAT_CONFIG_MODELS: dict[str, type[FormatConfig]] = {
    model.format_name: model for model in (JsonFormatConfig, CsvFormatConfig, ParquetFormatConfig)
}


class Format(BaseModel):
    """How bytes from a transport become records: ``format: {name, config}`` of a connector; ``config`` is
    validated by the format's own model."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["json", "csv", "parquet"] = Field(description="json, csv or parquet.")
    config: JsonFormatConfig | CsvFormatConfig | ParquetFormatConfig = Field(
        description="The format's settings; its keys depend on name.", default_factory=dict, validate_default=True
    )

    @field_validator("config", mode="before")
    @classmethod
    def _config_of_the_format(cls, value: Any, info: ValidationInfo) -> Any:
        model = FORMAT_CONFIG_MODELS.get(info.data.get("name", ""))
        if model is None:  # the unknown name is the error to report
            return ParquetFormatConfig()
        return model.model_validate({} if value is None else value)

    @property
    def framing(self) -> Framing:
        """How transports may cut input of this format."""
        return self.config.framing


def framing_of(fmt: Format | None) -> Framing:
    """The framing of a connector's format (:data:`LINES` for a connector without one)."""
    return LINES if fmt is None else fmt.framing


def is_json_array(data: bytes | memoryview, fmt: Format) -> bool:
    """Whether ``data`` in format ``fmt`` is one JSON array (rather than JSON lines)."""
    config = fmt.config
    return isinstance(config, JsonFormatConfig) and (config.array or starts_json_array(data) is True)


class JsonRoute(enum.Enum):
    """Who reads a batch of bytes."""

    ARROW = "arrow"  #: pyarrow's readers (every format; JSON with ``reader: arrow`` or no sink reader)
    #: the sink's JSON reader parses the records into Arrow (processors, arrays); a last ``jsonl`` processor's
    #: answer is then loaded by the sink itself
    SINK_PARSES = "sink parses"
    SINK_LOADS = "sink loads"  #: the sink loads the JSON lines itself in one pass, with the mark (fast path)


def json_route(
    fmt: Format | None,
    data: bytes | memoryview | pa.Table | None,
    *,
    sink_reads_json: bool,
    table_exists: bool,
    has_processors: bool,
) -> JsonRoute:
    """Whether a sink's own JSON reader may read this batch, and how: JSON with ``reader: auto`` into a table
    whose schema is known (else pyarrow reads it, inferring types); the sink loads the bytes itself only when they
    are JSON lines (not an array) and no processor needs the records first."""
    if (
        fmt is None
        or not isinstance(fmt.config, JsonFormatConfig)
        or fmt.config.reader != "auto"
        or not sink_reads_json
        or not table_exists
        or not isinstance(data, bytes | memoryview)
        or not data
    ):
        return JsonRoute.ARROW
    if has_processors or is_json_array(data, fmt):
        return JsonRoute.SINK_PARSES
    return JsonRoute.SINK_LOADS


@dataclass
class ParsedBatch:
    """Records that parsed (as Arrow) and the ones that did not, with their index in the input and reason."""

    table: pa.Table
    errors: list[tuple[int, str]] = field(default_factory=list)


class RecordError(ValueError):
    """A reader could not read a record into the schema (raised by readers that are not pyarrow's)."""


#: A reader of whole line-delimited records: (buffer, schema or ``None`` to infer) -> Arrow table. It raises one
#: of :data:`RECORD_ERRORS` when a record is malformed or does not fit the schema.
Reader = Callable[[pa.Buffer, pa.Schema | None], pa.Table]
#: A reader's screen: (records, one line per value, each ending with a newline; schema or ``None``) ->
#: ``(position, reason)`` of each record the reader certainly rejects on its own, in one pass over all of them. It
#: must never reject a record the reader takes; the reader reads the records it lets through (and finds what it
#: missed).
Screen = Callable[[pa.LargeBinaryArray, pa.Schema | None], list[tuple[int, str]]]


@dataclass(frozen=True)
class RecordReader:
    """A reader of line-delimited records and, optionally, its :data:`Screen` (for inputs with many bad ones)."""

    read: Reader
    screen: Screen | None = None


def parse(
    data: bytes | memoryview,
    fmt: Format,
    schema: pa.Schema | None,
    starts_object: bool = False,
    json_reader: RecordReader | None = None,
    header: bytes | None = None,
) -> ParsedBatch:
    """Parse ``data`` (whole records) into ``schema`` (or an inferred one when ``None``).

    ``data`` may be a memoryview (e.g. of a memory-mapped file): JSON lines and parquet are read from it without
    a copy. A malformed or incompatible record is an entry of ``errors``; the other records still parse.
    ``json_reader`` replaces pyarrow's JSON reader (a sink's own reader, e.g. DuckDB's ``read_json``): which
    records are errors is then that reader's decision. ``header``: the first line of the CSV object a piece
    from its middle (``starts_object`` false) belongs to; its fields are then named by it, as at the start.
    """
    config = fmt.config
    if isinstance(config, CsvFormatConfig):
        return _parse_csv(data, config, schema, starts_object, header)
    if isinstance(config, JsonFormatConfig):
        return _parse_json(data, config, schema, json_reader)
    return _parse_parquet(data, schema)


def empty_table(schema: pa.Schema | None) -> pa.Table:
    """A table without rows (and without columns when there is no schema)."""
    return schema.empty_table() if schema is not None else pa.table({})


# ------------------------------------------------------------------------------------------------ casting
#: What pyarrow raises for a record it cannot read or cast.
ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)
#: What any reader raises for a record it cannot read or cast.
RECORD_ERRORS = (*ARROW_ERRORS, RecordError)


#: Share of a level's failing lines still failing after halving them above which bad records count as dense.
_DENSE = 0.6
#: Failing ranges averaging this many lines or fewer are handed over whole (halving them costs more calls).
_SMALL_RANGE = 32


def _search(
    count: int,
    attempt: Callable[[int, int], None],
    errors: list[tuple[int, str]],
    whole_error: BaseException,
    rest: Callable[[list[tuple[int, int]]], None] | None = None,
) -> None:
    """Find the records of ``[0, count)`` that ``attempt`` rejects (the whole range failed with ``whole_error``).

    Level by level, every failing range is halved and ``attempt`` runs on both halves; a failing single record is
    added to ``errors``. Sparse bad records cost ``O(log n)`` attempts each. With ``rest``, the failing ranges go to
    it once halving stops narrowing them down (more than :data:`_DENSE` of a level's lines fail again: dense bad
    records, which would cost ``O(k log n)`` attempts) or once they are small (:data:`_SMALL_RANGE`).
    """
    if count == 1:
        errors.append((0, _reason(whole_error)))
        return
    ranges = [(0, count)]
    while ranges:
        failing: list[tuple[int, int]] = []
        for lo, hi in ranges:
            mid = (lo + hi) // 2
            for start, stop in ((lo, mid), (mid, hi)):
                try:
                    attempt(start, stop)
                except RECORD_ERRORS as exc:
                    if stop - start == 1:
                        errors.append((start, _reason(exc)))
                    else:
                        failing.append((start, stop))
        before = sum(hi - lo for lo, hi in ranges)
        after = sum(hi - lo for lo, hi in failing)
        if failing and rest is not None and (after > _DENSE * before or after <= _SMALL_RANGE * len(failing)):
            rest(failing)
            return
        ranges = failing


def conform(table: pa.Table, schema: pa.Schema) -> ParsedBatch:
    """``table`` cast to ``schema`` (columns by name, missing ones null, extra ones dropped).

    Rows whose values cannot be cast are errors (index = row number in ``table``); the rest are kept.
    """
    try:
        return ParsedBatch(_cast(table, schema))
    except ARROW_ERRORS as exc:
        whole_error = exc
    pieces: list[tuple[int, pa.Table]] = []
    errors: list[tuple[int, str]] = []

    def attempt(lo: int, hi: int) -> None:
        pieces.append((lo, _cast(table.slice(lo, hi - lo), schema)))

    _search(table.num_rows, attempt, errors, whole_error)
    pieces.sort(key=lambda piece: piece[0])
    good = pa.concat_tables([piece for _, piece in pieces]) if pieces else schema.empty_table()
    return ParsedBatch(good, sorted(errors))


def _cast(table: pa.Table, schema: pa.Schema) -> pa.Table:
    if table.schema == schema:
        return table
    by_name = {name: i for i, name in enumerate(table.column_names)}
    by_lower = {name.lower(): i for i, name in reversed(list(enumerate(table.column_names)))}
    arrays = []
    for target in schema:
        index = by_name.get(target.name, by_lower.get(target.name.lower()))
        if index is None:
            arrays.append(pa.nulls(table.num_rows, target.type))
            continue
        column = table.column(index)
        if column.type == target.type:
            arrays.append(column)
        elif pa.types.is_null(column.type):
            arrays.append(pa.nulls(table.num_rows, target.type))
        else:
            try:
                arrays.append(pc.cast(column, target.type, safe=True))
            except ARROW_ERRORS as exc:
                raise type(exc)(f"column {target.name!r}: {exc}") from exc
    return pa.Table.from_arrays(arrays, schema=schema)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


# -------------------------------------------------------------------------------------------- line search
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[ord(" "), ord("\t"), ord("\r"), ord("\n"), ord("\f"), ord("\v")]] = True


class _Lines:
    """Offsets of the non-blank lines of a buffer (found with numpy; slices are zero-copy)."""

    def __init__(self, buffer: pa.Buffer, start: int = 0):
        raw = np.frombuffer(buffer, dtype=np.uint8)
        newlines = np.flatnonzero(raw == 10)
        newlines = newlines[newlines >= start]
        starts = np.concatenate(([start], newlines + 1)).astype(np.int64)
        ends = np.concatenate((newlines, [len(raw)])).astype(np.int64)
        keep = ends > starts
        if keep.any():
            # A non-empty line is blank when it holds only whitespace. Each segment from one non-empty line's
            # start to the next one's holds that line, its newline and empty lines, so "any solid byte in the
            # segment" is "the line is not blank" (one bool per byte, no per-byte counters).
            solid = ~_WHITESPACE[raw]
            keep[keep] = np.logical_or.reduceat(solid, starts[keep])
        self.buffer = buffer
        self.starts = starts[keep]
        self.ends = ends[keep]

    def __len__(self) -> int:
        return len(self.starts)

    def slice(self, lo: int, hi: int) -> pa.Buffer:
        """Lines ``lo`` .. ``hi - 1`` (with their newline when there is one)."""
        begin = int(self.starts[lo])
        end = min(int(self.ends[hi - 1]) + 1, self.buffer.size)
        return self.buffer.slice(begin, end - begin)

    def records(self, positions: np.ndarray) -> pa.LargeBinaryArray:
        """Lines ``positions`` (ascending) as the records of a :data:`Screen`: one per value, each ending with a
        newline (copied once, by :meth:`gather`)."""
        lengths = self.ends[positions] - self.starts[positions] + 1
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        data = self.gather(positions)
        return pa.Array.from_buffers(pa.large_binary(), len(positions), [None, pa.py_buffer(offsets), data])

    def gather(self, positions: np.ndarray) -> pa.Buffer:
        """Lines ``positions`` (ascending) copied into one buffer, each followed by a newline."""
        if not len(positions):
            return pa.py_buffer(b"")
        starts, ends = self.starts[positions], self.ends[positions]
        breaks = np.flatnonzero(starts[1:] != ends[:-1] + 1) + 1  # runs of lines with nothing between them
        if len(breaks) > self.buffer.size // _BYTES_PER_SLICE:  # many runs: one mask over the bytes is cheaper
            raw = np.frombuffer(self.buffer, dtype=np.uint8)
            bounds = np.empty(2 * len(starts) + 2, dtype=np.int64)  # skipped, taken, skipped, ... taken, skipped
            bounds[0], bounds[-1] = 0, len(raw)
            bounds[1:-1:2], bounds[2:-1:2] = starts, np.minimum(ends + 1, len(raw))  # lines with their newline
            taken = np.zeros(len(bounds) - 1, dtype=bool)
            taken[1::2] = True
            picked = raw[np.repeat(taken, np.diff(bounds))].tobytes()
            return pa.py_buffer(picked if ends[-1] < len(raw) else picked + b"\n")
        view = memoryview(self.buffer)
        firsts = np.concatenate(([0], breaks)).astype(np.int64)
        lasts = np.concatenate((breaks - 1, [len(positions) - 1])).astype(np.int64)
        runs = zip(starts[firsts].tolist(), ends[lasts].tolist(), strict=True)
        return pa.py_buffer(b"\n".join([view[begin:end] for begin, end in runs]) + b"\n")


def screen_lines(
    data: bytes | memoryview, screen: Screen, schema: pa.Schema | None
) -> tuple[pa.Buffer, list[tuple[int, str]]]:
    """JSON lines judged by ``screen`` alone, in one pass: the lines it lets through (one buffer, a line each) and
    ``(index, reason)`` of the records it rejects. For a sink that loads the lines it lets through itself (its
    reader then has the last word on them)."""
    lines = _Lines(pa.py_buffer(data))
    everything = np.arange(len(lines), dtype=np.int64)
    rejected = screen(lines.records(everything), schema) if len(lines) else []
    return lines.gather(np.delete(everything, [at for at, _ in rejected])), rejected


def _parse_records(
    buffer: pa.Buffer,
    read: Reader,
    schema: pa.Schema | None,
    lines_from: int = 0,
    screen: Screen | None = None,
) -> ParsedBatch:
    """Parse line-delimited records with ``read``; on failure search the lines for the bad ones (with ``screen``
    once they turn out to be many)."""
    try:
        whole = read(buffer.slice(lines_from), schema)
    except RECORD_ERRORS as exc:
        search = _LineSearch(read, schema, screen)
        lines = _Lines(buffer, lines_from)
        if len(lines):
            search.run(lines, np.arange(len(lines), dtype=np.int64), exc)
        return _finish(search.pieces, search.errors, schema)
    return _finish([(whole, None)], [], schema)


class _LineSearch:
    """The records of lines known to fail as a whole: pieces that read (with the index of each row) and errors."""

    def __init__(self, read: Reader, schema: pa.Schema | None, screen: Screen | None):
        self.read = read
        #: The schema records are read into; without a table schema the first good piece fixes the types.
        self.schema = schema
        self.screen = screen
        self.pieces: list[tuple[pa.Table, np.ndarray | None]] = []
        self.errors: list[tuple[int, str]] = []

    def run(self, lines: _Lines, index: np.ndarray, whole_error: BaseException) -> None:
        """Search ``lines`` (record ``index[i]`` is line ``i``), which failed as a whole with ``whole_error``."""
        errors: list[tuple[int, str]] = []

        def attempt(lo: int, hi: int) -> None:
            table = self.read(lines.slice(lo, hi), self.schema)
            if self.schema is None:
                self.schema = _inferred_schema(table.schema)
            self.pieces.append((table, index[lo : lo + table.num_rows]))

        def screen_rest(failing: list[tuple[int, int]]) -> None:
            self._screen(lines, index, np.concatenate([np.arange(lo, hi, dtype=np.int64) for lo, hi in failing]))

        _search(len(lines), attempt, errors, whole_error, screen_rest if self.screen is not None else None)
        self.errors.extend((int(index[position]), reason) for position, reason in errors)

    def _screen(self, lines: _Lines, index: np.ndarray, positions: np.ndarray) -> None:
        """Screen lines ``positions``; read the ones the screen lets through in one call (searching them again,
        without the screen, when the reader still rejects one)."""
        assert self.screen is not None
        rejected = self.screen(lines.records(positions), self.schema)
        self.errors.extend((int(index[positions[at]]), reason) for at, reason in rejected)
        keep = np.delete(positions, [at for at, _ in rejected])
        if not len(keep):
            return
        kept = _Lines(lines.gather(keep))
        self.screen = None
        try:
            self.pieces.append((self.read(kept.buffer, self.schema), index[keep]))
        except RECORD_ERRORS as exc:
            self.run(kept, index[keep], exc)


def _finish(
    pieces: list[tuple[pa.Table, np.ndarray | None]], errors: list[tuple[int, str]], schema: pa.Schema | None
) -> ParsedBatch:
    """Cast every piece to ``schema`` (searching rows that do not cast) and join them in record order (pieces
    carry the record index of each row, ``None`` for the whole input)."""
    done: list[tuple[pa.Table, np.ndarray | None]] = []
    for table, indices in pieces:
        if schema is not None:
            cast = conform(table, schema)
            if cast.errors:
                errors.extend((int(indices[row]) if indices is not None else row, why) for row, why in cast.errors)
                if indices is not None:
                    indices = np.delete(indices, [row for row, _ in cast.errors])
            table = cast.table
        done.append((table, indices))
    errors.sort()
    if not done:
        return ParsedBatch(empty_table(schema), errors)
    tables = [table for table, _ in done]
    if len(tables) == 1:
        return ParsedBatch(tables[0], errors)
    joined = pa.concat_tables(tables, promote_options="permissive" if schema is None else "none")
    order = np.concatenate([indices for _, indices in done if indices is not None])
    if len(order) == joined.num_rows and np.any(np.diff(order) < 0):  # pieces of a screened read interleave
        joined = joined.take(int64_array(np.argsort(order, kind="stable")))
    return ParsedBatch(joined, errors)


def _inferred_schema(schema: pa.Schema) -> pa.Schema | None:
    """An inferred schema to hold later records to, without columns whose type is still unknown (null)."""
    fields = [f for f in schema if not pa.types.is_null(f.type)]
    return pa.schema(fields) if fields else None


def _block_size(size: int) -> int:
    """A reader block size giving both cores work on big inputs without tiny blocks on small ones."""
    threads = max(1, os.cpu_count() or 1)
    return int(min(_MAX_BLOCK, max(_MIN_BLOCK, size // (4 * threads) + 1)))


# --------------------------------------------------------------------------------------------------- json
#: Arrow types pyarrow's JSON reader converts itself; others are read as text and cast afterwards.
def _json_readable(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_boolean(data_type)
        or pa.types.is_integer(data_type)
        or pa.types.is_floating(data_type)
        or pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_timestamp(data_type)
    )


def _json_parse_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f if _json_readable(f.type) else pa.field(f.name, pa.string()) for f in schema])


def _json_reader(table_schema: pa.Schema | None) -> Reader:
    def read(buffer: pa.Buffer, schema: pa.Schema | None) -> pa.Table:
        _check_utf8(buffer)
        buffer = _null_records_as_objects(buffer)
        if schema is None:
            options = pa_json.ParseOptions(newlines_in_values=False)
        else:
            behaviour = "ignore" if table_schema is not None else "infer"
            options = pa_json.ParseOptions(
                explicit_schema=_json_parse_schema(schema),
                unexpected_field_behavior=behaviour,
                newlines_in_values=False,
            )
        block = _block_size(buffer.size)
        try:
            table = pa_json.read_json(
                pa.BufferReader(buffer), read_options=pa_json.ReadOptions(block_size=block), parse_options=options
            )
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc) or block >= buffer.size:
                raise
            # A record longer than a block: read it in one block.
            table = pa_json.read_json(
                pa.BufferReader(buffer),
                read_options=pa_json.ReadOptions(block_size=buffer.size + 1),
                parse_options=options,
            )
        if table_schema is None:
            table.validate(full=True)  # inferred nested types may come out broken (apache/arrow#51305)
        return table

    return read


def _whole(buffer: pa.Buffer) -> pa.LargeBinaryArray:
    """``buffer`` as one binary value (no copy), for Arrow's vectorised checks."""
    offsets = pa.py_buffer(np.array([0, buffer.size], dtype=np.int64))
    return pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, buffer])


def _check_utf8(buffer: pa.Buffer) -> None:
    """``ArrowInvalid`` when ``buffer`` is not UTF-8 (pyarrow's JSON reader would take it, and the sink fail)."""
    try:
        _whole(buffer).view(pa.large_string()).validate(full=True)
    except pa.ArrowInvalid as exc:
        raise pa.ArrowInvalid("JSON parse error: the record is not UTF-8") from exc


def _binary_parts(records: pa.LargeBinaryArray) -> tuple[np.ndarray, memoryview]:
    """The value offsets (``len(records) + 1`` of them) and the data of a binary array, without copies."""
    _, offsets, data = records.buffers()
    if offsets is None:
        return np.zeros(1, dtype=np.int64), memoryview(b"")
    start = records.offset
    return np.frombuffer(offsets, np.int64)[start : start + len(records) + 1], memoryview(data or b"")


def int64_array(values: np.ndarray) -> pa.Int64Array:
    """``values`` as an Arrow array, without a copy and without ``pa.array`` (whose first call imports pandas)."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def not_utf8(records: pa.LargeBinaryArray) -> np.ndarray:
    """Which records are not UTF-8: one vectorised check of all; when it fails, the records holding bytes above
    0x7f are decoded one by one."""
    broken = np.zeros(len(records), dtype=bool)
    try:
        records.view(pa.large_string()).validate(full=True)
    except pa.ArrowInvalid:
        offsets, data = _binary_parts(records)
        high = np.frombuffer(data, dtype=np.uint8) >= 0x80
        starts = np.minimum(offsets[:-1], max(len(high) - 1, 0))
        for at in np.flatnonzero(np.logical_or.reduceat(high, starts)).tolist():
            try:
                str(data[offsets[at] : offsets[at + 1]], "utf-8")
            except UnicodeDecodeError:
                broken[at] = True
    return broken


#: A record ``null`` (at the start of a line).
_NULL_RECORD = re.compile(rb"(?:^|\n)[ \t\r\n]*(null)")


def _null_records_as_objects(buffer: pa.Buffer) -> pa.Buffer:
    """``buffer`` with each record ``null`` written ``{}`` (a row of nulls all the same): pyarrow's JSON reader
    crashes on a block that starts with one (apache/arrow#47409)."""
    if not pc.match_substring_regex(_whole(buffer), _NULL_RECORD.pattern.decode())[0].as_py():
        return buffer
    data = bytearray(buffer)
    for start in [match.start(1) for match in _NULL_RECORD.finditer(data)]:
        data[start : start + 4] = b"{}  "
    return pa.py_buffer(data)


#: Python's JSON scanner: (text, position) -> (value, end).
_SCAN = make_scanner(json.JSONDecoder())
_JSON_SPACE = " \t\r\n"
#: Values rapidjson (pyarrow's parser) takes that Python's JSON does not.
_RAPIDJSON_ONLY = ("Inf", "-Inf", "-NaN")
_JSON_KINDS = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}


#: JSON white space.
_WS = r"[ \t\r\n]*"
#: A JSON string without control characters and without escaped surrogates (pyarrow rejects lone ones).
_STRING = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u(?:[0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}))*"'
#: A JSON number a double holds (exponents of two digits at most).
_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]{1,2})?"
_MEMBER = f"{_STRING}{_WS}:{_WS}(?:{_STRING}|{_NUMBER}|true|false|null)"
#: A record that is ``null`` or a flat object of plain strings, numbers, booleans and nulls: valid JSON, whose
#: values' kinds a regular expression can tell (:func:`_suspects`).
_PLAIN_RECORD = f"^{_WS}(?:\\{{{_WS}(?:{_MEMBER}(?:{_WS},{_WS}{_MEMBER})*)?{_WS}\\}}|null){_WS}$"


@dataclass(frozen=True)
class _JsonColumn:
    """A column as pyarrow's JSON reader reads it (for its screen)."""

    name: str
    data_type: pa.DataType
    types: tuple[type, ...]  #: Python types of the JSON values it takes
    kind: str  #: their JSON kind
    refused: str  #: a pattern of the starts of values it certainly refuses (null aside)
    bounds: tuple[int, int] | None = None  #: the integers it holds: ``lo <= n < hi``


def _json_column(field: pa.Field) -> _JsonColumn:
    """``field`` (of :func:`_json_parse_schema`) as pyarrow's JSON reader reads it."""
    data_type = field.type
    if pa.types.is_integer(data_type):
        digits = len(str(2 ** (data_type.bit_width - 1))) - 1  # as many digits fit whatever they are
        unsigned = pa.types.is_unsigned_integer(data_type)
        refused = f'["tf\\[{{{"-" if unsigned else ""}]|-?[0-9]+[.eE]|-?[0-9]{{{digits + 1}}}'
        half = 2 ** (data_type.bit_width - 1)
        bounds = (0, 2 * half) if unsigned else (-half, half)
        return _JsonColumn(field.name, data_type, (int,), "number", refused, bounds)
    if pa.types.is_floating(data_type):
        return _JsonColumn(field.name, data_type, (int, float), "number", '["tf\\[{]')
    if pa.types.is_boolean(data_type):
        return _JsonColumn(field.name, data_type, (bool,), "boolean", '["0-9\\[{-]')
    return _JsonColumn(field.name, data_type, (str,), "string", "[-0-9tf\\[{]")


def _suspects(records: pa.LargeBinaryArray, columns: list[_JsonColumn]) -> np.ndarray:
    """Which records (all UTF-8) the Python screen must look at: those that are not plain (:data:`_PLAIN_RECORD`)
    and the plain ones with a value of a kind its column refuses. Two vectorised regular expressions: most records
    of a dirty input never become Python objects."""
    if not len(records):
        return np.zeros(0, dtype=bool)
    plain = pc.match_substring_regex(records, _PLAIN_RECORD)
    keys = [(json.dumps(column.name, ensure_ascii=False), column.refused) for column in columns]
    if not keys or any("\\E" in key for key, _ in keys):
        suspect = pc.invert(plain)
    else:
        refusals = "|".join(f"\\Q{key}\\E{_WS}:{_WS}(?:{refused})" for key, refused in keys)
        suspect = pc.or_(pc.invert(plain), pc.match_substring_regex(records, refusals))
    bits = np.unpackbits(np.frombuffer(suspect.buffers()[1], dtype=np.uint8), bitorder="little")
    return bits[suspect.offset : suspect.offset + len(suspect)].astype(bool)  # to_numpy() would import pandas


def _screen_json_lines(records: pa.LargeBinaryArray, schema: pa.Schema | None) -> list[tuple[int, str]]:
    """The screen of pyarrow's JSON reader. A record is rejected when it is not UTF-8, not JSON, neither an object
    nor ``null``, or holds a value of another JSON kind than its column takes (a string for a number...), a
    fraction for an integer or an integer out of the column's range. UTF-8 is checked at once, the suspects are
    picked by regular expressions (:func:`_suspects`) and only they are parsed with Python's JSON scanner. What it
    lets through may still fail pyarrow (a malformed timestamp, a key twice): the reader finds those."""
    columns = [_json_column(field) for field in _json_parse_schema(schema)] if schema is not None else []
    broken = not_utf8(records)
    rejected = [(int(at), "JSON parse error: the record is not UTF-8") for at in np.flatnonzero(broken)]
    whole = np.flatnonzero(~broken)
    suspects = whole[_suspects(records.take(int64_array(whole)) if rejected else records, columns)]
    offset_array, data = _binary_parts(records)
    offsets = offset_array.tolist()
    for position in suspects.tolist():
        text = str(data[offsets[position] : offsets[position + 1]], "utf-8")
        # A byte order mark is skipped at the start of an input only: a reader's call, not the screen's.
        reason = _json_record_fault(text.strip(_JSON_SPACE + "\ufeff"), columns)
        if reason is not None:
            rejected.append((position, reason))
    return sorted(rejected)


def _json_record_fault(text: str, columns: list[_JsonColumn]) -> str | None:
    """Why pyarrow's JSON reader rejects the line ``text`` for certain, or ``None`` (it reads each JSON value of
    the line as a record)."""
    at, size = 0, len(text)
    while at < size:
        try:
            value, at = _SCAN(text, at)
        except RecursionError:  # nested deeper than Python goes: the reader decides
            return None
        except StopIteration as exc:  # no JSON value starts here
            return None if text.startswith(_RAPIDJSON_ONLY, exc.value) else f"JSON parse error: no value at {exc.value}"
        except json.JSONDecodeError as exc:
            return None if text.startswith(_RAPIDJSON_ONLY, exc.pos) else f"JSON parse error: {exc}"
        if type(value) is dict:
            for column in columns:
                item = value.get(column.name)
                if item is None:
                    continue
                if type(item) not in column.types:
                    if column.kind == "number" and type(item) is float:
                        return f"Failed to convert JSON to {column.data_type}, couldn't parse:{item!r}"
                    kind = _JSON_KINDS[type(item)]
                    return f"JSON parse error: Column(/{column.name}) changed from {column.kind} to {kind}"
                if column.bounds is not None and not column.bounds[0] <= item < column.bounds[1]:
                    return f"Failed to convert JSON to {column.data_type}, couldn't parse:{item}"
        elif value is not None:
            return f"JSON parse error: Column() changed from object to {_JSON_KINDS[type(value)]}"
        while at < size and text[at] in _JSON_SPACE:
            at += 1
    return None


def _parse_json(
    data: bytes | memoryview, config: JsonFormatConfig, schema: pa.Schema | None, reader: RecordReader | None
) -> ParsedBatch:
    is_array = starts_json_array(data)
    if is_array is None:
        return ParsedBatch(empty_table(schema))
    reader = reader or RecordReader(_json_reader(schema), _screen_json_lines)
    if not (config.array or is_array):
        return _parse_records(pa.py_buffer(data), reader.read, schema, screen=reader.screen)
    lines, element_of_line, errors = _json_array_as_lines(bytes(data))
    parsed = _parse_records(pa.py_buffer(lines), reader.read, schema, screen=reader.screen)
    parsed.errors = sorted(errors + [(int(element_of_line[line]), reason) for line, reason in parsed.errors])
    return parsed


def _json_array_as_lines(data: bytes) -> tuple[bytes, np.ndarray, list[tuple[int, str]]]:
    """A JSON array rewritten as JSON lines, the element number of each line, and the elements that broke.

    Bytes that are not UTF-8 break only the elements holding them: they are decoded as lone surrogates
    (``surrogateescape``), which such an element cannot be written back with."""
    text = data.decode("utf-8", "surrogateescape")
    try:
        elements = json.loads(text)
    except json.JSONDecodeError:
        return _scan_broken_array(text)
    if not isinstance(elements, list):
        return b"", np.zeros(0, np.int64), [(0, "JSON input is neither an array nor JSON lines")]
    return _element_lines(enumerate(elements), [])


def _element_lines(
    elements: Iterable[tuple[int, Any]], errors: list[tuple[int, str]]
) -> tuple[bytes, np.ndarray, list[tuple[int, str]]]:
    """Numbered array elements as JSON lines, the element number of each line, and ``errors`` with the elements
    that are not UTF-8."""
    lines: list[bytes] = []
    element_of_line: list[int] = []
    for element, value in elements:
        try:
            lines.append(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        except UnicodeEncodeError as exc:
            errors.append((element, f"JSON array element is not UTF-8: {_reason(exc)}"))
            continue
        element_of_line.append(element)
    return b"\n".join(lines) + b"\n", np.array(element_of_line, dtype=np.int64), errors


def _scan_broken_array(text: str) -> tuple[bytes, np.ndarray, list[tuple[int, str]]]:
    """Decode element after element; after a broken one, resume at the next object start."""
    decoder = json.JSONDecoder()
    elements: list[tuple[int, Any]] = []
    errors: list[tuple[int, str]] = []
    position = text.find("[") + 1
    size = len(text)
    element = 0
    while 0 < position < size:
        while position < size and text[position] in " \t\r\n,":
            position += 1
        if position >= size or text[position] == "]":
            break
        try:
            value, position = decoder.raw_decode(text, position)
            elements.append((element, value))
        except json.JSONDecodeError as exc:
            errors.append((element, f"malformed JSON array element: {_reason(exc)}"))
            following = text.find("{", max(exc.pos, position + 1))
            if following < 0:
                break
            position = following
        element += 1
    if position <= 0:
        errors.append((0, "malformed JSON array: no '[' found"))
    return _element_lines(elements, errors)


# ---------------------------------------------------------------------------------------------------- csv
def _parse_csv(
    data: bytes | memoryview,
    config: CsvFormatConfig,
    schema: pa.Schema | None,
    starts_object: bool,
    header: bytes | None,
) -> ParsedBatch:
    data = bytes(data)
    delimiter = config.delimiter
    has_header = config.header
    buffer = pa.py_buffer(data)
    body_from = 0
    names: list[str] | None = list(schema.names) if schema is not None else None
    if has_header and starts_object:
        stripped = len(data) - len(data.lstrip(b"\r\n"))
        newline = data.find(b"\n", stripped)
        body_from = len(data) if newline < 0 else newline + 1
        header = data[stripped:body_from]
    if has_header and header is not None:
        if not header.strip():
            return ParsedBatch(empty_table(schema))
        names = pa_csv.read_csv(
            pa.py_buffer(header),
            read_options=pa_csv.ReadOptions(use_threads=False),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter),
        ).column_names
    if not data[body_from:].strip():
        return ParsedBatch(empty_table(schema))

    def read(chunk: pa.Buffer, target: pa.Schema | None) -> pa.Table:
        convert = pa_csv.ConvertOptions()
        if target is not None:
            convert = pa_csv.ConvertOptions(
                column_types={f.name: f.type for f in target},
                include_columns=list(target.names) if schema is not None else None,
                include_missing_columns=schema is not None,
            )
        return pa_csv.read_csv(
            pa.BufferReader(chunk),
            read_options=pa_csv.ReadOptions(
                column_names=names, autogenerate_column_names=names is None, block_size=_block_size(chunk.size)
            ),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=False),
            convert_options=convert,
        )

    return _parse_records(buffer, read, schema, lines_from=body_from)


# ------------------------------------------------------------------------------------------------ parquet
def _parse_parquet(data: bytes | memoryview, schema: pa.Schema | None) -> ParsedBatch:
    if not data:
        return ParsedBatch(empty_table(schema))
    try:
        table = pq.read_table(pa.BufferReader(pa.py_buffer(data)))
    except (pa.ArrowInvalid, OSError) as exc:
        return ParsedBatch(empty_table(schema), [(0, f"not a readable parquet file: {_reason(exc)}")])
    return conform(table, schema) if schema is not None else ParsedBatch(table)
