"""The reference of the project file, generated from its pydantic models so it cannot drift from them.

:func:`project_file_markdown` writes ``docs/project-file.md`` (every model: each key's type, default and
description), :func:`project_json_schema` the JSON Schema ``docs/connectors.schema.json`` (editors complete and
check ``connectors.yaml`` with it: the file names it in a ``# yaml-language-server: $schema=...`` comment).
``connectors docs`` writes both, ``connectors schema`` prints the schema; ``tests/test_reference.py`` fails when a
committed file differs from what the models give.

Where the models check more than their types say (a transport's ``config`` validated by the transport's model, a
connector's ``name`` filled in when absent, ``start_after`` given as one string), the schema is completed here,
by name, so a renamed model or key fails loudly rather than leaving the schema behind.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from connector_core.formats import FORMAT_CONFIG_MODELS, Format
from connector_core.project import PROCEDURES, ConnectorSpec, Hooks, Project, Transport
from connector_core.secrets import EnvSecret
from connector_core.transports.configs import TRANSPORT_CONFIG_MODELS, KafkaInputConfig

#: The committed reference files, relative to the repository root.
PROJECT_FILE_DOC = Path("docs/project-file.md")
SCHEMA_DOC = Path("docs/connectors.schema.json")
#: The command that writes every generated page.
REGENERATE = "connectors docs"

_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path", type(None): "null"}


# ------------------------------------------------------------------------------------------------ markdown
def _unwrap(kind: Any) -> Any:
    return get_args(kind)[0] if get_origin(kind) is Annotated else kind


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def _anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()


def type_text(kind: Any) -> str:
    """A field's type in words, models as links to their section."""
    kind = _unwrap(kind)
    origin = get_origin(kind)
    if kind is Any:
        return "any"
    if kind is EnvSecret:
        return "`{env: NAME}`"
    if kind in _SIMPLE:
        return _SIMPLE[kind]
    if _is_model(kind):
        return f"[{kind.__name__}](#{_anchor(kind)})"
    if origin is Literal:
        return " or ".join(f"`{value}`" for value in get_args(kind))
    if origin in (Union, types.UnionType):
        members = [m for m in get_args(kind) if m is not type(None)]
        return " or ".join(type_text(member) for member in members)
    if origin is list:
        return f"list of {type_text(get_args(kind)[0])}"
    if origin is tuple:
        return "[" + ", ".join(type_text(member) for member in get_args(kind)) + "]"
    if origin is dict:
        key, value = get_args(kind)
        return f"map of {type_text(key)} to {type_text(value)}"
    return getattr(kind, "__name__", str(kind))


def _constraints(field: FieldInfo) -> str:
    words = []
    for item in field.metadata:
        for attribute, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if isinstance(item, getattr(annotated_types, attribute.capitalize())):
                words.append(f"{sign} {getattr(item, attribute)}")
        if isinstance(item, annotated_types.MinLen):
            words.append(f"at least {item.min_length}")
        if getattr(item, "pattern", None):
            words.append(f"matching `{item.pattern}`")
    return f" ({', '.join(words)})" if words else ""


def _value_text(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    if isinstance(value, list):
        value = [
            v.model_dump(by_alias=True, exclude_defaults=True, mode="json") if isinstance(v, BaseModel) else v
            for v in value
        ]
    return value if isinstance(value, str) else json.dumps(value)


def default_text(field: FieldInfo) -> str:
    """``required``, or the default as YAML would show it."""
    if field.default_factory is not None:
        return f"`{_value_text(field.default_factory())}`"  # type: ignore[call-arg]
    if field.default is PydanticUndefined:
        return "required"
    return f"`{_value_text(field.default)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _fields(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    for name, field in model.model_fields.items():
        if not field.exclude:
            yield field.alias or name, field


def _nested_models(kind: Any) -> Iterator[tuple[type[BaseModel], str]]:
    """The models a field's type holds, with the key path suffix that reaches them (``.<name>``, ``[]``)."""
    kind = _unwrap(kind)
    origin = get_origin(kind)
    if _is_model(kind):
        yield kind, ""
    elif origin in (Union, types.UnionType, list, dict, tuple):
        suffix = {list: "[]", dict: ".<name>"}.get(origin, "")  # type: ignore[call-overload]
        members = get_args(kind)[-1:] if origin is dict else get_args(kind)
        for member in members:
            for model, inner in _nested_models(member):
                yield model, suffix + inner


def documented_models() -> list[tuple[type[BaseModel], str]]:
    """Every model of the project file with the first key path reaching it, in reading order: from
    :class:`Project` down, then each transport's and each format's config model."""
    found: dict[type[BaseModel], str] = {}
    starts = [[(Project, "")]]
    starts += [[(model, f"...transport.config (name: {name})")] for name, model in TRANSPORT_CONFIG_MODELS.items()]
    starts += [[(model, f"...format.config (name: {name})")] for name, model in FORMAT_CONFIG_MODELS.items()]
    for queue in starts:
        while queue:
            model, where = queue.pop(0)
            if model in found:
                continue
            found[model] = where
            for key, field in _fields(model):
                for nested, suffix in _nested_models(field.annotation):
                    queue.append((nested, f"{where}.{key}{suffix}".lstrip(".")))
    return list(found.items())


def _extra_keys(model: type[BaseModel]) -> str:
    if model is Hooks:
        return (
            "Keys are `<procedure>_validator` and `<procedure>_callback`, each a `module:function` string, with "
            f"procedure one of {', '.join(f'`{p}`' for p in PROCEDURES)}.\n\n"
        )
    if model is KafkaInputConfig:
        return "Other keys: librdkafka consumer settings (dotted names such as `fetch.max.bytes`).\n\n"
    return ""


def project_file_markdown() -> str:
    """``docs/project-file.md``: every key of the project file, its type, default and description."""
    out = [
        "# The project file (`connectors.yaml`)\n",
        f"<!-- Generated from the models by `{REGENERATE}`; do not edit. -->\n",
        "Every key of the project file, generated from the pydantic models in `connector_core/project.py`, "
        "`connector_core/transports/configs.py` and `connector_core/formats.py`. Every model refuses unknown keys "
        "(a near miss is named: `did you mean 'transport'?`). Secrets are only ever `{env: NAME}`. Editors complete "
        "and check the file with the JSON Schema [connectors.schema.json](connectors.schema.json) "
        "(`connectors schema` prints it).\n",
    ]
    for model, where in documented_models():
        doc = " ".join((model.__doc__ or "").split()).replace("``", "`")
        out.append(f'<a id="{_anchor(model)}"></a>\n\n## {model.__name__}\n')
        out.append((f"At `{where}`. " if where else "The top level. ") + doc + "\n")
        out.append(_extra_keys(model).rstrip("\n") + ("\n" if _extra_keys(model) else ""))
        if model is Transport:
            names = ", ".join(f"`{n}`: [{m.__name__}](#{_anchor(m)})" for n, m in TRANSPORT_CONFIG_MODELS.items())
            out.append(f"The `config` keys per transport `name`: {names}.\n")
        if model is Format:
            names = ", ".join(f"`{n}`: [{m.__name__}](#{_anchor(m)})" for n, m in FORMAT_CONFIG_MODELS.items())
            out.append(f"The `config` keys per format `name`: {names}.\n")
        rows = list(_fields(model))
        if not rows:
            if not _extra_keys(model):
                out.append("No keys.\n")
            continue
        table = ["| key | type | default | description |", "|---|---|---|---|"]
        for key, field in rows:
            kind = _cell(type_text(field.annotation) + _constraints(field))
            table.append(f"| `{key}` | {kind} | {_cell(default_text(field))} | {_cell(field.description or '')} |")
        out.append("\n".join(table) + "\n")
    return "\n".join(part for part in out if part).rstrip("\n") + "\n"


def undocumented_keys() -> list[str]:
    """``Model.key`` for every key without a description (the reference needs one for each)."""
    return [
        f"{model.__name__}.{key}"
        for model, _ in documented_models()
        for key, field in _fields(model)
        if not field.description
    ]


# --------------------------------------------------------------------------------------------- JSON Schema
def _by_name(variants: dict[str, str]) -> list[dict[str, Any]]:
    """``if name is N then config is the model N names`` for each (name, $defs entry)."""
    return [
        {
            "if": {"properties": {"name": {"const": name}}, "required": ["name"]},
            "then": {"properties": {"config": {"$ref": f"#/$defs/{definition}"}}},
        }
        for name, definition in variants.items()
    ]


def project_json_schema() -> dict[str, Any]:
    """The JSON Schema of the project file: :class:`Project`'s, completed with what its validators accept (see
    the module docstring)."""
    schema = Project.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    definitions = schema.setdefault("$defs", {})
    schema["properties"].pop("source_path")  # set by the loader, never written
    for model in TRANSPORT_CONFIG_MODELS.values():
        own = model.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
        definitions.update(own.pop("$defs", {}))
        definitions[model.__name__] = own
    transport = definitions[Transport.__name__]
    transport["allOf"] = _by_name({name: model.__name__ for name, model in TRANSPORT_CONFIG_MODELS.items()})
    format_schema = definitions[Format.__name__]
    format_schema["allOf"] = _by_name({name: model.__name__ for name, model in FORMAT_CONFIG_MODELS.items()})
    connector = definitions[ConnectorSpec.__name__]
    connector["required"].remove("name")  # a connector without one is named unnamed-{index}
    start_after = connector["properties"]["start_after"]
    start_after["anyOf"].insert(0, {"type": "string"})  # one label, or a list of them
    hooks = definitions[Hooks.__name__]
    hooks["additionalProperties"] = False
    hooks["patternProperties"] = {
        f"^({'|'.join(PROCEDURES)})_(validator|callback)$": {"type": "string", "pattern": r"^[\w.]+:[\w.]+$"}
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
    }


def schema_text() -> str:
    """``docs/connectors.schema.json``: the schema as indented JSON."""
    return json.dumps(project_json_schema(), indent=2) + "\n"
