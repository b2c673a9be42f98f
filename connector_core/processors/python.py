"""``kind: python``: a function (or a class) of the user's, run in this process.

``function: "module:name"`` is imported with the project folder on ``sys.path``. A **function** is called once
per batch as ``function(batch, **args)``; a **class** is instantiated once per connector per run as
``Class(**args)`` and the instance is called per batch (``instance(batch)``), so it may keep state across the
batches of a run; its ``close()``, when it has one, is called when the run ends or the batch fails.

The batch is a ``pyarrow.Table``, or a ``pandas.DataFrame`` when the first parameter is annotated
``pandas.DataFrame`` / ``pd.DataFrame`` (the class or the text). Either may be returned; a DataFrame becomes
Arrow with ``pa.Table.from_pandas(preserve_index=False)``.
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from connector_core.locate import import_callable
from connector_core.processors.base import ProcessorError, ProcessorStep
from connector_core.project import ProcessorUse

_PANDAS_NAMES = {"pd.DataFrame", "pandas.DataFrame", "pandas.core.frame.DataFrame"}


class PythonStep(ProcessorStep):
    """A Python function or class instance over Arrow tables or pandas DataFrames."""

    def __init__(self, use: ProcessorUse, base_dir: Path, who: str):
        self._who = who
        function = use.definition.function or ""
        try:
            target = import_callable(function, base_dir)
        except LookupError as exc:
            raise ProcessorError(f"{who}: {exc}") from None
        self._instance: Any = None
        if inspect.isclass(target):
            try:
                self._instance = target(**use.args)
            except Exception as exc:  # the user's code
                raise ProcessorError(f"{who}: {function}(**args) raised {_last_words(exc)}") from exc
            self._call: Callable[[Any], Any] = self._instance
            self._wants_pandas = wants_dataframe(self._instance)
        else:
            args = use.args
            self._call = (lambda batch: target(batch, **args)) if args else target
            self._wants_pandas = wants_dataframe(target)

    def __call__(self, table: pa.Table) -> pa.Table:
        batch: Any = table.to_pandas() if self._wants_pandas else table
        try:
            result = self._call(batch)
        except Exception as exc:  # the user's code: report it, keep the batch for a retry
            raise ProcessorError(f"{self._who} raised {_last_words(exc)}") from exc
        if isinstance(result, pa.Table):
            return result
        if isinstance(result, pa.RecordBatch):
            return pa.Table.from_batches([result])
        if type(result).__name__ == "DataFrame" and type(result).__module__.startswith("pandas"):
            try:
                return pa.Table.from_pandas(result, preserve_index=False)
            except (pa.ArrowException, ValueError, TypeError) as exc:
                raise ProcessorError(f"{self._who} returned a DataFrame Arrow cannot hold: {exc}") from exc
        raise ProcessorError(f"{self._who} returned {type(result).__name__}, not a pyarrow.Table or pandas.DataFrame")

    def close(self) -> None:
        instance, self._instance = self._instance, None
        close = getattr(instance, "close", None)
        if callable(close):
            close()


def wants_dataframe(function: Callable[..., Any]) -> bool:
    """Whether the first parameter of ``function`` is annotated as a pandas DataFrame (class or text)."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return False
    if not parameters:
        return False
    annotation = parameters[0].annotation
    if isinstance(annotation, str):
        text = annotation.replace(" ", "")
        if text == "DataFrame":  # resolve the bare name where the function was written
            annotation = getattr(inspect.getmodule(function), "DataFrame", None)
        else:
            return text in _PANDAS_NAMES
    return getattr(annotation, "__name__", None) == "DataFrame" and str(
        getattr(annotation, "__module__", "")
    ).startswith("pandas")


def _last_words(exc: BaseException) -> str:
    """The exception and the line of the user's code that raised it."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{exc!r}{where}"
