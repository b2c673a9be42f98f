"""Processors: steps between a connector's transport and the sink, each a function from Arrow table to Arrow
table for one connector and one run (``docs/processors.md`` is the user's page).

Runners: ``python`` (:mod:`.python`, in this process), ``sql`` (:mod:`.sql`, DuckDB over the table ``batch``),
``command`` (:mod:`.command`, a program in any language: once per batch, or long-lived over the ``jsonl`` or
``arrow`` protocol). :func:`load_processor` turns a processor use into a :class:`ProcessorStep`; a step's
failure is a :class:`ProcessorError` naming the processor and the connector, and :meth:`ProcessorStep.close`
stops whatever it started.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector_core.processors.base import ProcessorError, ProcessorStep
from connector_core.project import Processor, ProcessorUse, ProcessorUseError, resolve_processor

if TYPE_CHECKING:
    from connector_core.pipeline import Pipeline

__all__ = ["ProcessorError", "ProcessorStep", "load_processor"]


def load_processor(
    processor: Processor | ProcessorUse, pipeline: Pipeline, endpoint: str | None = None
) -> ProcessorStep:
    """The step running ``processor`` (a resolved use, or an inline processor with its own args) for the
    connector ``endpoint`` of ``pipeline``; programs start lazily, at the first batch."""
    if isinstance(processor, ProcessorUse):
        use = processor
    else:
        try:
            use = resolve_processor(processor, {})
        except ProcessorUseError as exc:
            raise ProcessorError(f"processor {processor.target}: {exc}") from None
    who = f"processor {use.label}" + (f" of connector {endpoint}" if endpoint else "")
    kind = use.definition.kind
    if kind == "python":
        from connector_core.processors.python import PythonStep

        return PythonStep(use, pipeline.base_dir, who)
    if kind == "sql":
        from connector_core.processors.sql import SqlStep

        return SqlStep(use, who)
    from connector_core.processors.command import open_command_step

    return open_command_step(use, pipeline.base_dir, who)
