"""Formats: bytes from a transport -> an Arrow table of the table's schema, plus parse errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from connector_core.project import Format


@dataclass
class ParsedBatch:
    """Records that parsed (as Arrow) and the ones that did not, with their index in the input and reason."""

    table: pa.Table
    errors: list[tuple[int, str]] = field(default_factory=list)


def parse(data: bytes, fmt: Format, schema: pa.Schema | None, starts_object: bool = False) -> ParsedBatch:
    """Parse ``data`` (whole records) into ``schema`` (or an inferred one when ``None``).

    A malformed or incompatible record is an entry of ``errors``; the other records still parse.
    """
    raise NotImplementedError
