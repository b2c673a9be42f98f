"""Generated records (Feldera's datagen semantics), produced as Arrow tables with numpy, a batch at a time.

Position = number of records produced so far (over all plans), so a restart resumes exactly. Plans run in order;
inside plan ``p`` the ``i``-th record (``i`` counted from 0 within the plan) has values that depend only on
``(seed, p, column, i)``: random draws come from a counter-based hash (splitmix64 of ``i`` mixed with the seed,
plan and column), so the same seed gives the same rows whatever the batch sizes.

* ``increment`` (default): ``i * scale``; with ``range: [a, b)``: ``a + (i * scale) mod (b - a)``; with
  ``values``: ``values[i mod len(values)]`` (99, 100, 101, 99, ...).
* ``uniform`` / ``zipf``: a draw from ``range`` (half-open: ``b`` never appears) or from ``values``; zipf ranks
  the range (or the values list) and picks rank ``k`` with probability proportional to ``1 / k**e``.
* ``null_percentage``: that share of the values is NULL.
* Types come from the table's ``columns``: integers, DOUBLE/FLOAT, VARCHAR (an increment gives the number as
  text), BOOLEAN (odd/even, or a fair coin), DATE (days since 1970-01-01) and TIMESTAMP (milliseconds since
  the epoch); ``values`` may also be written as text of the column's type. Without ``columns`` the fields'
  keys are the columns: BIGINT, DOUBLE for a fractional range or scale, or the type of ``values``.
* ``rate`` (records/s): a read waits until the plan's rate allows a batch (at most about one second's worth),
  so a run never exceeds the rate.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connector_core.column_types import COLUMN_TYPES, sql_type_of_values
from connector_core.transports.base import ReadResult, TransportContext, TransportError
from connector_core.transports.configs import DatagenConfig, DatagenField, DatagenPlan

#: Largest zipf domain with an exact cumulative table; larger ones use the continuous approximation.
ZIPF_EXACT_LIMIT = 1_000_000
#: At most this much time's worth of records is gathered by one read of a rate-limited plan.
RATE_BATCH_SECONDS = 1.0

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer of each uint64 (a good 64-bit hash of a counter)."""
    with np.errstate(over="ignore"):
        z = values + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def _stream_key(seed: int, plan: int, column: str, purpose: str) -> np.uint64:
    digest = hashlib.blake2b(f"{seed}/{plan}/{column}/{purpose}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def uniform01(key: np.uint64, indices: np.ndarray) -> np.ndarray:
    """Reproducible uniform draws in ``[0, 1)``, one per record index."""
    with np.errstate(over="ignore"):
        bits = splitmix64(indices.astype(np.uint64) * _GOLDEN + key)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _zipf_ranks(u: np.ndarray, size: int, exponent: float) -> np.ndarray:
    """Ranks in ``[0, size)`` with P(rank k) proportional to ``1 / (k + 1) ** exponent``."""
    if size <= ZIPF_EXACT_LIMIT:
        weights = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** exponent
        cdf = np.cumsum(weights)
        cdf /= cdf[-1]
        return np.minimum(np.searchsorted(cdf, u, side="right"), size - 1)
    # Inverse of the continuous density x ** -e on [1, size + 1).
    if exponent == 1.0:
        ranks = np.exp(u * math.log(size + 1.0))
    else:
        power = 1.0 - exponent
        ranks = ((size + 1.0) ** power - 1.0) * u + 1.0
        ranks = ranks ** (1.0 / power)
    return np.clip(np.floor(ranks).astype(np.int64) - 1, 0, size - 1)


def _is_integral(value: float) -> bool:
    return float(value).is_integer()


@dataclass
class _Column:
    name: str
    sql_type: str

    @property
    def arrow_type(self) -> pa.DataType:
        return COLUMN_TYPES[self.sql_type].arrow


def _columns_of(ctx_columns: dict[str, str] | None, config: DatagenConfig) -> list[_Column]:
    if ctx_columns:
        return [_Column(name, sql_type.upper()) for name, sql_type in ctx_columns.items()]
    columns: dict[str, str] = {}
    for plan in config.plan:
        for name, spec in plan.fields.items():
            columns.setdefault(name, _inferred_type(spec))
    if not columns:
        raise TransportError(
            "datagen: the table has no 'columns' and no plan names 'fields'; declare the table's columns"
        )
    return [_Column(name, sql_type) for name, sql_type in columns.items()]


def _inferred_type(spec: DatagenField) -> str:
    if spec.values is not None:
        return sql_type_of_values(pa.array(spec.values).type)
    numbers = [*(spec.range or ()), spec.scale]
    return "BIGINT" if all(_is_integral(n) for n in numbers) else "DOUBLE"


class DatagenReader:
    """Generates the records of a :class:`DatagenConfig` for one table."""

    def __init__(self, config: DatagenConfig, columns: list[_Column]):
        self.config = config
        self.columns = columns
        self.seed = config.seed if config.seed is not None else random.getrandbits(63)
        self.can_finish = all(plan.limit is not None for plan in config.plan)
        self.schema = pa.schema([pa.field(c.name, c.arrow_type) for c in columns])
        self._plan_starts = self._starts()
        self._values_cache: dict[tuple[int, str], pa.Array] = {}
        self._rate_clock: tuple[int, float, int] | None = None  # (plan, started at, position when started)

    def _starts(self) -> list[int]:
        """The first record number of each plan, up to the first endless plan (later ones never run)."""
        starts, total = [], 0
        for plan in self.config.plan:
            starts.append(total)
            if plan.limit is None:
                break
            total += plan.limit
        return starts

    @property
    def total(self) -> int | None:
        """Records produced over every plan (``None``: endless)."""
        if not self.can_finish:
            return None
        return sum(plan.limit or 0 for plan in self.config.plan)

    def _plan_at(self, position: int) -> tuple[int, DatagenPlan, int] | None:
        """The plan producing record ``position``, its index and the record's index inside it."""
        for index, start in enumerate(self._plan_starts):
            plan = self.config.plan[index]
            if plan.limit is None or position < start + plan.limit:
                return index, plan, position - start
        return None

    def read(self, position: Any, max_records: int) -> ReadResult:
        """Up to ``max_records`` records after ``position`` (fewer at a plan's end or under its rate)."""
        produced = int(position or 0)
        located = self._plan_at(produced)
        if located is None:
            return ReadResult(None, produced, end_of_input=True)
        plan_index, plan, first = located
        count = max(1, max_records)
        if plan.limit is not None:
            count = min(count, plan.limit - first)
        if plan.rate is not None:
            count = self._wait_for_rate(plan_index, plan.rate, produced, count)
        table = self.generate(plan_index, first, count)
        new_position = produced + count
        end = self.total is not None and new_position >= self.total
        return ReadResult(table, new_position, end_of_input=end, bytes_read=table.nbytes)

    def _wait_for_rate(self, plan_index: int, rate: float, produced: int, wanted: int) -> int:
        """Sleep until ``rate`` allows a batch since this plan started in this process; return its size."""
        clock = self._rate_clock
        if clock is None or clock[0] != plan_index or produced < clock[2]:
            clock = self._rate_clock = (plan_index, time.monotonic(), produced)
        _, started, base = clock
        target = min(wanted, max(1, int(rate * RATE_BATCH_SECONDS)))
        # Records base .. produced + target - 1 are allowed once (produced + target - base) / rate seconds passed.
        ready_at = started + (produced + target - base) / rate
        delay = ready_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return target

    def close(self) -> None:
        """Nothing to release."""

    def generate(self, plan_index: int, first: int, count: int) -> pa.Table:
        """Records ``first .. first + count - 1`` of plan ``plan_index``."""
        indices = np.arange(first, first + count, dtype=np.int64)
        plan = self.config.plan[plan_index]
        arrays = [
            self._column(plan_index, column, plan.fields.get(column.name, DatagenField()), indices)
            for column in self.columns
        ]
        return pa.Table.from_arrays(arrays, schema=self.schema)

    # ------------------------------------------------------------------------------------------- columns
    def _column(self, plan_index: int, column: _Column, spec: DatagenField, indices: np.ndarray) -> pa.Array:
        key = _stream_key(self.seed, plan_index, column.name, "value")
        if spec.values is not None:
            values = self._values(plan_index, column, spec)
            if spec.strategy == "increment":
                picks = indices % len(values)
            else:
                u = uniform01(key, indices)
                picks = self._ranks(spec, u, len(values))
            array = values.take(pa.array(picks))
        else:
            array = self._numbers(column, spec, key, indices)
        if spec.null_percentage:
            nulls = uniform01(_stream_key(self.seed, plan_index, column.name, "null"), indices)
            mask = pa.array(nulls * 100.0 < spec.null_percentage)
            array = pc.if_else(mask, pa.nulls(len(array), array.type), array)
        return array

    @staticmethod
    def _ranks(spec: DatagenField, u: np.ndarray, size: int) -> np.ndarray:
        if spec.strategy == "zipf":
            return _zipf_ranks(u, size, spec.e)
        return np.minimum((u * size).astype(np.int64), size - 1)

    def _values(self, plan_index: int, column: _Column, spec: DatagenField) -> pa.Array:
        cache_key = (plan_index, column.name)
        if cache_key not in self._values_cache:
            try:
                raw = pa.array(spec.values)
                self._values_cache[cache_key] = _to_type(raw, column)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise TransportError(
                    f"datagen: values of column {column.name!r} do not fit its type {column.sql_type}: {exc}"
                ) from exc
        return self._values_cache[cache_key]

    def _numbers(self, column: _Column, spec: DatagenField, key: np.uint64, indices: np.ndarray) -> pa.Array:
        arrow_type = column.arrow_type
        if pa.types.is_boolean(arrow_type):
            if spec.strategy == "increment":
                return pa.array(indices % 2 == 1)
            return pa.array(uniform01(key, indices) < 0.5)
        low, high = spec.range if spec.range is not None else (None, None)
        integral = not pa.types.is_floating(arrow_type) and all(
            _is_integral(n) for n in (spec.scale, *(spec.range or ()))
        )
        if spec.strategy == "increment":
            if integral:
                numbers = indices * int(spec.scale)
                if low is not None:
                    numbers = int(low) + numbers % (int(high) - int(low))
            else:
                numbers = indices * float(spec.scale)
                if low is not None:
                    numbers = low + np.mod(numbers, high - low)
        else:
            if low is None:
                width = arrow_type.bit_width if pa.types.is_integer(arrow_type) else 32
                low, high = (0, 2 ** min(31, width - 1)) if integral else (0.0, 1.0)
            u = uniform01(key, indices)
            if integral:
                span = int(high) - int(low)
                numbers = int(low) + self._ranks(spec, u, span)
            elif spec.strategy == "zipf":
                ranks = _zipf_ranks(u, ZIPF_EXACT_LIMIT, spec.e)
                numbers = low + (ranks + uniform01(key ^ _GOLDEN, indices)) / ZIPF_EXACT_LIMIT * (high - low)
            else:
                numbers = low + u * (high - low)
            if not integral:
                numbers = np.minimum(numbers, np.nextafter(high, low))  # keep the range half-open
        return _to_type(pa.array(numbers), column)


def _to_type(array: pa.Array, column: _Column) -> pa.Array:
    """Numbers or text turned into the column's type (dates: days, timestamps: milliseconds since epoch)."""
    target = column.arrow_type
    if array.type == target:
        return array
    if pa.types.is_string(target):
        return pc.cast(array, pa.string())
    if pa.types.is_date(target) and (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        return pc.cast(pc.cast(pc.floor(array) if pa.types.is_floating(array.type) else array, pa.int32()), target)
    if pa.types.is_timestamp(target) and (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        micros = pc.multiply(pc.cast(array, pa.float64()), 1000.0)
        return pc.cast(pc.cast(pc.floor(micros), pa.int64()), target)
    if pa.types.is_integer(target) and pa.types.is_floating(array.type):
        array = pc.floor(array)
    return pc.cast(array, target)


def open_reader(ctx: TransportContext) -> DatagenReader:
    """A datagen reader for the connector of ``ctx`` (types from the table's columns)."""
    config = ctx.connector.transport.parsed_config()
    assert isinstance(config, DatagenConfig)
    return DatagenReader(config, _columns_of(ctx.columns, config))
