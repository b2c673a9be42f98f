"""Finding what a processor runs, for the project file's load-time checks (their messages name the fix) and for the
runners: a Python callable imported from the project folder or the environment, a program on PATH or relative to
the project folder, one DuckDB ``SELECT``."""

from __future__ import annotations

import importlib
import inspect
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connector_core.project import Processor
    from connector_core.yaml_loader import KeyPath


def import_callable(function: str, base_dir: Path) -> Callable[..., Any]:
    """``module:name`` (``name`` may be dotted) imported with the project folder on ``sys.path``; a
    :class:`LookupError` says why not and what to do."""
    module_name, _, attribute = function.partition(":")
    base = str(base_dir)
    if base not in sys.path:
        sys.path.append(base)
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise LookupError(
                f"module {module_name!r} not found; put {module_name.replace('.', '/')}.py in the project folder "
                f"({base_dir}) or install it in this environment"
            ) from None
        raise LookupError(f"importing module {module_name!r} failed: {exc}") from None
    except Exception as exc:  # the user's module: say what it raised
        raise LookupError(f"importing module {module_name!r} failed: {exc!r}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            defined = sorted(
                name
                for name, value in vars(target).items()
                if callable(value) and name[0] != "_" and getattr(value, "__module__", None) == module_name
            )
            raise LookupError(
                f"{module_name} has no {attribute!r}; it defines: {', '.join(defined[:20]) or 'no functions'}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise LookupError(f"{function} is a {type(target).__name__}, not a function or class")
    return target


def program_problem(command: list[str], env: dict[str, Any], base_dir: Path) -> str | None:
    """Why ``command[0]`` cannot be run (not on the PATH the program gets, no such file relative to the project
    folder, not executable), else ``None``."""
    program = command[0]
    if "/" in program or os.sep in program:
        path = Path(program) if Path(program).is_absolute() else base_dir / program
        if not path.is_file():
            return f"program {program!r} not found ({path}); fix the path (relative paths start at {base_dir})"
        if not os.access(path, os.X_OK):
            return f"program {program!r} is not executable; chmod +x it, or run it through its interpreter"
        return None
    search = env.get("PATH") if isinstance(env.get("PATH"), str) else os.environ.get("PATH", os.defpath)
    if shutil.which(program, path=search):
        return None
    if (base_dir / program).is_file():
        return f"program {program!r} is not on PATH; to run the one in the project folder write './{program}'"
    return f"program {program!r} not found on PATH; install it, or give its path (absolute or relative to {base_dir})"


def sql_problem(query: str, names: set[str]) -> str | None:
    """Why ``query`` is not one DuckDB ``SELECT`` whose ``$name`` parameters are all in ``names``, else ``None``."""
    import duckdb

    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        return f"not valid DuckDB SQL: {str(exc).splitlines()[0]}"
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        return "must be one SELECT statement over the table 'batch'"
    used = statements[0].named_parameters
    if any(not name.isidentifier() for name in used):
        return "use named parameters ($name, given as args), not ? or $1"
    unknown = sorted(used - names)
    if unknown:
        return (
            f"uses ${', $'.join(unknown)} but no such param is declared; declare it under params (or give it in args)"
        )
    return None


def query_parameters(query: str) -> set[str]:
    """The ``$name`` parameters of a ``SELECT``."""
    import duckdb

    return set(duckdb.extract_statements(query)[0].named_parameters)


def target_problems(processor: Processor, names: set[str], base_dir: Path) -> list[tuple[KeyPath, str]]:
    """What keeps ``processor`` from running, as (key below the processor, why and the fix); ``names`` are the
    arguments a use may give (its params, or an inline processor's args)."""
    if processor.kind == "python":
        assert processor.function is not None
        try:
            target = import_callable(processor.function, base_dir)
        except LookupError as exc:
            return [(("function",), str(exc))]
        problem = _signature_problem(target, names)
        return [(("function",), f"{processor.function} {problem}")] if problem else []
    if processor.kind == "sql":
        problem = sql_problem(processor.query or "", names)
        return [(("query",), problem)] if problem else []
    problem = program_problem(processor.command or [""], processor.env, base_dir)
    return [(("command", 0), problem)] if problem else []


def _signature_problem(target: Callable[..., Any], names: set[str]) -> str | None:
    """Why ``target`` cannot be called as the runner calls it (a function: the batch and the args as keywords; a
    class: the args as keywords), else ``None``."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin without a signature: the first batch will tell
        return None
    arguments = dict.fromkeys(sorted(names))
    try:
        if inspect.isclass(target):
            signature.bind(**arguments)
        else:
            signature.bind(None, **arguments)
    except TypeError as exc:
        shape = "Class(**args)" if inspect.isclass(target) else "function(batch, **args)"
        return f"cannot be called as {shape} with args {sorted(names)}: {exc}"
    return None
