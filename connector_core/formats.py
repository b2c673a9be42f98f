"""Formats: how a transport cuts bytes, and bytes -> an Arrow table of the table's schema, plus parse errors.

The format owns every rule about its bytes:

- its typed config (:class:`JsonFormatConfig`, :class:`CsvFormatConfig`, :class:`ParquetFormatConfig`; unknown
  keys are refused naming the allowed ones), inside :class:`Format`, the project file's ``format: {name, config}``;
- its :class:`Framing`, which the byte transports ask how they may cut the input (at newlines, whole objects, a
  header line handed on, a JSON array found by its first byte: :func:`starts_json_array`);
- :func:`json_route`, the one decision whether a sink's own JSON reader reads a batch.

The fast path hands the whole input to one pyarrow reader (``pyarrow.json`` / ``pyarrow.csv`` /
``pyarrow.parquet``) with the sink table's schema as the explicit schema; records never become Python objects.
When that call fails because of a malformed or incompatible record, the input is cut into lines (offsets found
with numpy, slices are zero-copy views) and bisected: each half is parsed again, so ``k`` bad records among ``n``
cost ``O(k log n)`` pyarrow calls. Casting to the table's schema is bisected over rows the same way. Each bad
record becomes ``(index, reason)``, ``index`` being its record number within the input.

A sink may bring its own JSON reader (``json_reader``, e.g. DuckDB's ``read_json``): it replaces pyarrow's for the
whole input, bisection included, and raises :class:`RecordError` for a record it rejects.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

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
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

#: Longest reason kept per bad record.
MAX_REASON_CHARS = 300
_MIN_BLOCK = 1 << 20
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
    """Base of the per-format config models: an unknown key is refused with the keys the format allows."""

    model_config = ConfigDict(extra="forbid")

    #: The format's name in the project file.
    format_name: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(str(key) for key in set(data) - set(cls.model_fields))
            if unknown:
                raise ValueError(
                    f"unknown {cls.format_name} format config key(s) {', '.join(unknown)}; "
                    f"allowed: {', '.join(sorted(cls.model_fields)) or 'none'}"
                )
        return data

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


#: Format name -> its config model.
FORMAT_CONFIG_MODELS: dict[str, type[FormatConfig]] = {
    model.format_name: model for model in (JsonFormatConfig, CsvFormatConfig, ParquetFormatConfig)
}


class Format(BaseModel):
    """How bytes from a transport become records: ``format: {name, config}`` of a connector; ``config`` is
    validated by the format's own model."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["json", "csv", "parquet"]
    config: JsonFormatConfig | CsvFormatConfig | ParquetFormatConfig = Field(
        default_factory=dict, validate_default=True
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
    SINK_PARSES = "sink parses"  #: the sink's JSON reader parses the records into Arrow (processors, arrays)
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


def parse(
    data: bytes | memoryview,
    fmt: Format,
    schema: pa.Schema | None,
    starts_object: bool = False,
    json_reader: Reader | None = None,
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


def _bisect(lo: int, hi: int, attempt: Callable[[int, int], None], errors: list[tuple[int, str]]) -> None:
    """Run ``attempt`` on records ``[lo, hi)``; where it fails, halve the range until single records fail, and
    add those to ``errors``. One bad record among n costs O(log n) attempts."""
    try:
        attempt(lo, hi)
    except RECORD_ERRORS as exc:
        if hi - lo == 1:
            errors.append((lo, _reason(exc)))
        else:
            mid = (lo + hi) // 2
            _bisect(lo, mid, attempt, errors)
            _bisect(mid, hi, attempt, errors)


def conform(table: pa.Table, schema: pa.Schema) -> ParsedBatch:
    """``table`` cast to ``schema`` (columns by name, missing ones null, extra ones dropped).

    Rows whose values cannot be cast are errors (index = row number in ``table``); the rest are kept.
    """
    try:
        return ParsedBatch(_cast(table, schema))
    except ARROW_ERRORS:
        pass
    pieces: list[pa.Table] = []
    errors: list[tuple[int, str]] = []
    _bisect(0, table.num_rows, lambda lo, hi: pieces.append(_cast(table.slice(lo, hi - lo), schema)), errors)
    good = pa.concat_tables(pieces) if pieces else schema.empty_table()
    return ParsedBatch(good, errors)


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


# ------------------------------------------------------------------------------------------ line bisection
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


def _parse_records(
    buffer: pa.Buffer,
    read: Reader,
    schema: pa.Schema | None,
    lines_from: int = 0,
) -> ParsedBatch:
    """Parse line-delimited records with ``read``; on failure bisect the lines to find the bad ones."""
    try:
        whole = read(buffer.slice(lines_from), schema)
    except RECORD_ERRORS:
        whole = None
    if whole is not None:
        return _finish([(whole, None)], [], schema)

    lines = _Lines(buffer, lines_from)
    pieces: list[tuple[pa.Table, np.ndarray | None]] = []
    errors: list[tuple[int, str]] = []
    adopted: list[pa.Schema | None] = [schema]

    def attempt(lo: int, hi: int) -> None:
        table = read(lines.slice(lo, hi), adopted[0])
        if adopted[0] is None:
            # Without a table schema the first good piece fixes the types; later records must fit them.
            adopted[0] = _inferred_schema(table.schema)
        pieces.append((table, np.arange(lo, lo + table.num_rows, dtype=np.int64)))

    if len(lines):
        _bisect(0, len(lines), attempt, errors)
    return _finish(pieces, errors, schema)


def _finish(
    pieces: list[tuple[pa.Table, np.ndarray | None]], errors: list[tuple[int, str]], schema: pa.Schema | None
) -> ParsedBatch:
    """Cast every piece to ``schema`` (bisecting rows that do not cast) and join them."""
    tables: list[pa.Table] = []
    for table, indices in pieces:
        if schema is None:
            tables.append(table)
            continue
        cast = conform(table, schema)
        for row, reason in cast.errors:
            errors.append((int(indices[row]) if indices is not None else row, reason))
        tables.append(cast.table)
    errors.sort()
    if not tables:
        return ParsedBatch(empty_table(schema), errors)
    if schema is None:
        joined = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
        return ParsedBatch(joined, errors)
    return ParsedBatch(pa.concat_tables(tables) if len(tables) > 1 else tables[0], errors)


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
            return pa_json.read_json(
                pa.BufferReader(buffer), read_options=pa_json.ReadOptions(block_size=block), parse_options=options
            )
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc) or block >= buffer.size:
                raise
            # A record longer than a block: read it in one block.
            return pa_json.read_json(
                pa.BufferReader(buffer),
                read_options=pa_json.ReadOptions(block_size=buffer.size + 1),
                parse_options=options,
            )

    return read


def _parse_json(
    data: bytes | memoryview, config: JsonFormatConfig, schema: pa.Schema | None, reader: Reader | None
) -> ParsedBatch:
    is_array = starts_json_array(data)
    if is_array is None:
        return ParsedBatch(empty_table(schema))
    read = reader or _json_reader(schema)
    if not (config.array or is_array):
        return _parse_records(pa.py_buffer(data), read, schema)
    lines, element_of_line, errors = _json_array_as_lines(bytes(data))
    parsed = _parse_records(pa.py_buffer(lines), read, schema)
    parsed.errors = sorted(errors + [(int(element_of_line[line]), reason) for line, reason in parsed.errors])
    return parsed


def _json_array_as_lines(data: bytes) -> tuple[bytes, np.ndarray, list[tuple[int, str]]]:
    """A JSON array rewritten as JSON lines, the element number of each line, and the elements that broke."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return b"", np.zeros(0, np.int64), [(0, f"JSON array is not UTF-8: {_reason(exc)}")]
    try:
        elements = json.loads(text)
    except json.JSONDecodeError:
        return _scan_broken_array(text)
    if not isinstance(elements, list):
        return b"", np.zeros(0, np.int64), [(0, "JSON input is neither an array nor JSON lines")]
    lines = "\n".join(json.dumps(e, separators=(",", ":")) for e in elements)
    return lines.encode() + b"\n", np.arange(len(elements), dtype=np.int64), []


def _scan_broken_array(text: str) -> tuple[bytes, np.ndarray, list[tuple[int, str]]]:
    """Decode element after element; after a broken one, resume at the next object start."""
    decoder = json.JSONDecoder()
    lines: list[str] = []
    element_of_line: list[int] = []
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
            lines.append(json.dumps(value, separators=(",", ":")))
            element_of_line.append(element)
        except json.JSONDecodeError as exc:
            errors.append((element, f"malformed JSON array element: {_reason(exc)}"))
            following = text.find("{", max(exc.pos, position + 1))
            if following < 0:
                break
            position = following
        element += 1
    if position <= 0:
        errors.append((0, "malformed JSON array: no '[' found"))
    return "\n".join(lines).encode() + b"\n", np.array(element_of_line, dtype=np.int64), errors


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
