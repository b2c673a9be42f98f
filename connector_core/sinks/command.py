"""The command sink: ``{kind: command, command: [program, ...]}``, an external program in any language that
receives every batch and acknowledges it (the seed's "sink processor"; the protocol is in ``docs/channels.md``).

The program is started once per run (at the first batch with records) in the project folder with the minimal
environment plus ``env``. It reads the sink's ``args`` as one JSON object on its first line, then per batch the
records as JSON lines followed by the marker line
``["__end_of_batch__",N,{"batch_id":"<connector id>:<batch>","connector_id":...,"batch":...,"table":...,
"records":...}]``, and acknowledges the batch by writing that same line back (and nothing else). The mark is the
connector's state, committed after the acknowledgement: a crash in between sends the batch again with the same
``batch_id``, so a program that remembers the ids it has applied stays exactly once. A program that exits,
answers anything else or takes longer than ``timeout_seconds`` fails the batch (:class:`SinkError` with its stderr
tail); it is stopped, and the next batch starts it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from connector_core.locate import program_problem
from connector_core.processors.base import ProcessorError
from connector_core.processors.command import JsonLinesStep
from connector_core.project import Processor, ProcessorUse
from connector_core.sinks.base import SinkError, SinkMark
from connector_core.sinks.state_marks import ConnectorMarks, StateMarkedSink, connector_marks

if TYPE_CHECKING:
    from connector_core.pipeline import Pipeline


class _AcknowledgedBatches(JsonLinesStep):
    """The ``jsonl`` runner with the batch's identity in its marker; the answer must be the marker alone."""

    batch: dict[str, Any] = {}  # noqa: RUF012 - set before each batch

    def marker(self, number: int) -> list[Any]:
        return [*super().marker(number), self.batch]


class CommandSink(StateMarkedSink):
    """Batches handed to a program that acknowledges each one; marks in the connectors' state."""

    kind = "command"

    def __init__(
        self,
        use: ProcessorUse,
        base_dir: Path,
        columns: dict[str, dict[str, str] | None],
        marks: ConnectorMarks,
    ) -> None:
        super().__init__(columns, marks)
        self.use, self.base_dir = use, base_dir
        self.program = " ".join(use.definition.command or [])
        self._step: _AcknowledgedBatches | None = None

    def check(self) -> None:
        """The program can be found and run."""
        problem = program_problem(self.use.definition.command or [], self.use.definition.env, self.base_dir)
        if problem:
            raise SinkError(f"command sink: {problem}")

    def table_schema(self, table: str) -> pa.Schema | None:
        """The declared ``columns``, or the schema inferred from this process's first batch."""
        return self.declared_schema(table)

    def ensure_table(self, table: str, columns: dict[str, str] | None, inferred: pa.Schema | None) -> pa.Schema:
        """Remember the table's schema (there is nothing to create)."""
        return self.remember_schema(table, columns, inferred)

    def write(self, table: str, rows: pa.Table, mark: SinkMark) -> None:
        """Hand ``rows`` to the program and wait for its acknowledgement (the mark is committed by the connector's
        state commit afterwards); :class:`SinkError` when it does not acknowledge."""
        self.check_follows(mark)
        if not rows.num_rows:
            return
        if self._step is None:
            self._step = _AcknowledgedBatches(self.use, self.base_dir, f"command sink {self.program!r}")
        self._step.batch = {
            "batch_id": f"{mark.connector_id}:{mark.batch_seq}",
            "connector_id": str(mark.connector_id),
            "batch": mark.batch_seq,
            "table": table,
            "records": rows.num_rows,
        }
        try:
            answer = self._step(rows)
        except ProcessorError as exc:
            raise SinkError(f"{exc}; the batch is not committed and will be sent again") from None
        if answer.num_rows:
            self.close()
            raise SinkError(
                f"command sink {self.program!r} answered batch {mark.batch_seq} of {mark.connector_id} with "
                f"{answer.num_rows} record(s); a sink acknowledges with the marker line alone"
            )

    def read_table(self, table: str) -> Any:
        """Not possible: what the program did with the records is its own."""
        raise SinkError(f"a command sink cannot be read back; ask {self.program!r} where table {table} went")

    def close(self) -> None:
        """End the program (its stdin closes: it may finish its work and exit)."""
        step, self._step = self._step, None
        if step is not None:
            step.close()


def open_command_sink(pipeline: Pipeline, settings: dict[str, Any]) -> CommandSink:
    """The command sink of ``pipeline`` from its sink settings."""
    definition = Processor(
        kind="command",
        command=list(settings["command"]),
        protocol="jsonl",
        env=settings.get("env") or {},
        timeout_seconds=float(settings.get("timeout_seconds") or 300),
    )
    use = ProcessorUse(definition, dict(settings.get("args") or {}), name="sink")
    columns = {name: table.columns for name, table in pipeline.spec.tables.items()}
    return CommandSink(use, pipeline.base_dir, columns, connector_marks(pipeline))
