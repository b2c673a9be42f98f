"""The project file (``connectors.yaml``): typed models, loading, and errors that name the bad key.

Every model forbids unknown keys. :func:`load_project` turns any problem into one
:class:`ProjectFileError` whose message names the file, the key path (for example
``pipelines.example.tables.price.connectors[1].start_after``), the line where known, and what is allowed.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from connector_core.column_types import COLUMN_TYPES
from connector_core.formats import Format
from connector_core.locate import program_problem, target_problems
from connector_core.secrets import ENV_NAME, EnvSecret
from connector_core.transports.configs import (
    TRANSPORT_CONFIG_MODELS,
    TransportName,
    no_literal_secrets,
    no_url_credentials,
)
from connector_core.yaml_loader import KeyPath, YamlProblem, key_path, line_index, load_yaml, paused_gc, read_text

NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
PROJECT_FILE_ENV = "CONNECTORS_PROJECT_FILE"
DEFAULT_PROJECT_FILE = "connectors.yaml"
PROCEDURES = (
    "prerequisites",
    "configure",
    "connect",
    "finalize",
    "reset",
    "pause",
    "resume",
    "update_connection",
    "update_warehouse",
)


class Strict(BaseModel):
    """Base for every project-file model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


Scalar = str | int | float | bool
ConfigValue = EnvSecret | Scalar


def resolve_value(value: ConfigValue | None) -> Any:
    """Return a plain value, reading ``{env: NAME}`` secrets from the environment."""
    return value.resolve() if isinstance(value, EnvSecret) else value


# ----------------------------------------------------------------------------------------------- connections
class KafkaConnection(Strict):
    """A Kafka cluster: librdkafka settings (``bootstrap.servers``, ``sasl.*`` ...)."""

    kind: Literal["kafka"] = Field(description="kafka: a Kafka cluster.")
    config: dict[str, ConfigValue] = Field(description="librdkafka configuration; secrets as {env: NAME}.")

    @field_validator("config")
    @classmethod
    def _needs_bootstrap(cls, config: dict[str, ConfigValue]) -> dict[str, ConfigValue]:
        if "bootstrap.servers" not in config:
            raise ValueError("config needs 'bootstrap.servers'")
        return no_literal_secrets(config)


class PostgresConnection(Strict):
    """A PostgreSQL database, reached through a libpq DSN (usually ``{env: PG_DSN}``)."""

    kind: Literal["postgres"] = Field(description="postgres: a PostgreSQL database.")
    dsn: EnvSecret = Field(description="libpq connection string or URL; a secret, so {env: NAME}.")


class S3Connection(Strict):
    """S3 or an S3-compatible server. Credentials come from the usual AWS chain unless given as secrets."""

    kind: Literal["s3"] = Field(description="s3: S3 or an S3-compatible server.")
    endpoint_url: str | None = Field(default=None, description="S3-compatible server, without credentials.")
    region_name: str | None = Field(default=None, description="AWS region (default: the AWS chain's).")
    aws_access_key_id: ConfigValue | None = Field(
        default=None, description="Access key id (a value or {env: NAME}); default: the AWS chain."
    )
    aws_secret_access_key: EnvSecret | None = Field(
        default=None, description="Secret access key; a secret, so {env: NAME}."
    )

    @field_validator("endpoint_url")
    @classmethod
    def _no_credentials(cls, url: str | None) -> str | None:
        return no_url_credentials(url) if url is not None else None


class SnowflakeConnection(Strict):
    """A Snowflake account (or any server speaking its protocol, through host/port/protocol)."""

    kind: Literal["snowflake"] = Field(description="snowflake: a Snowflake account.")
    account: str = Field(description="Account identifier.")
    user: str = Field(description="User name.")
    password: EnvSecret | None = Field(default=None, description="Password; a secret, so {env: NAME}.")
    role: str | None = Field(default=None, description="Role to use (default: the user's).")
    host: str | None = Field(default=None, description="Server host, for a server speaking Snowflake's protocol.")
    port: int | None = Field(default=None, description="Server port, with host.")
    protocol: Literal["http", "https"] | None = Field(default=None, description="http or https, with host.")


Connection = Annotated[
    KafkaConnection | PostgresConnection | S3Connection | SnowflakeConnection, Field(discriminator="kind")
]

_INT_TEXT = re.compile(r"^-?(0|[1-9][0-9]*)$")
_FLOAT_TEXT = re.compile(r"^-?(0|[1-9][0-9]*)\.[0-9]+$")


def parse_setting_value(text: str) -> Any:
    """A ``key=value`` value typed in by a user (CLI ``--set``, Launchpad): ``env:NAME`` -> ``{"env": NAME}``,
    ``true``/``false`` -> bool, integers and decimals -> numbers (``007`` stays text), anything else -> text.

    Raises :class:`ValueError` for ``env:`` not followed by a variable name.
    """
    if text.startswith("env:"):
        name = text[len("env:") :]
        if not ENV_NAME.fullmatch(name):
            raise ValueError(f"{text!r}: env: must be followed by an environment variable name")
        return {"env": name}
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if _INT_TEXT.fullmatch(text):
        return int(text)
    if _FLOAT_TEXT.fullmatch(text):
        return float(text)
    return text


# ----------------------------------------------------------------------------------------------------- sinks
class DuckDBSink(Strict):
    """The embedded sink: one DuckDB file (relative paths are relative to the project file)."""

    kind: Literal["duckdb"] = Field(description="duckdb: an embedded DuckDB file.")
    path: str = Field(default="warehouse.duckdb", description="The DuckDB file, relative to the project file's folder.")
    schema_: str = Field(default="main", alias="schema", description="Schema of the tables.")


class SnowflakeSink(Strict):
    """The production sink: tables in one Snowflake database and schema, loaded through a warehouse."""

    kind: Literal["snowflake"] = Field(description="snowflake: tables in Snowflake.")
    connection: str = Field(description="Name of a snowflake connection of the pipeline.")
    database: str = Field(description="Database of the tables.")
    schema_: str = Field(alias="schema", description="Schema of the tables.")
    warehouse: str | None = Field(
        default=None,
        description="Warehouse that loads (the wizard's configure step or update-warehouse may change it).",
    )


class KafkaSink(Strict):
    """A channel to other pipelines: each table's records go to a Kafka topic (the table's ``topic``, default
    ``{pipeline}.{table}``) as Arrow IPC streams (or JSON lines, for other consumers), read downstream by
    ``kafka_input`` exactly once (``docs/channels.md``)."""

    kind: Literal["kafka"] = Field(description="kafka: a channel to other pipelines.")
    connection: str = Field(description="Name of a kafka connection of the pipeline.")
    encoding: Literal["arrow", "json"] = Field(
        default="arrow",
        description="How a message holds its records: arrow (one Arrow IPC stream; kafka_input reads it without "
        "parsing) or json (JSON lines, for other consumers).",
    )
    max_message_bytes: int = Field(
        default=900_000,
        ge=1024,
        description="Bytes of records per message at most (a batch takes several messages; one larger record "
        "travels alone). Above ~1 MB the topic's max.message.bytes must allow it.",
    )
    partitions: int = Field(default=1, gt=0, description="Partitions of a topic the sink creates (existing: kept).")


class CommandSink(Strict):
    """An external program in any language that receives every batch and acknowledges it (``docs/channels.md``):
    started once per run, fed JSON lines, each batch closed by a marker carrying its batch id; the connector's
    state (the mark) is committed after the program echoed that marker."""

    kind: Literal["command"] = Field(description="command: a program that acknowledges each batch.")
    command: list[str] = Field(min_length=1, description="argv of the program.")
    args: dict[str, Any] = Field(default_factory=dict, description="Given to the program as its first line (JSON).")
    env: dict[str, str | EnvSecret] = Field(
        default_factory=dict,
        description="Variables given to the program on top of a minimal environment; secrets as {env: NAME}.",
    )
    timeout_seconds: float = Field(default=300, gt=0, description="Seconds the program may take to acknowledge.")

    _env = field_validator("env")(no_literal_secrets)


Sink = Annotated[DuckDBSink | SnowflakeSink | KafkaSink | CommandSink, Field(discriminator="kind")]

#: A Kafka topic name (the broker's rule).
TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"


# -------------------------------------------------------------------------------------------------- pipeline
class Prerequisite(Strict):
    """One item of the wizard's prerequisite checklist."""

    id: str = Field(pattern=NAME_PATTERN, description="Identifier, used by `wizard P prerequisites --done ID`.")
    title: str = Field(description="What to do, as the checklist shows it.")
    url: str | None = Field(default=None, description="Where to read about it.")
    description: str | None = Field(default=None, description="Longer explanation.")


class Backup(Strict):
    """Where connector state databases are backed up (no bucket: a local directory)."""

    bucket: str | None = Field(default=None, description="S3 bucket of the backups (else a local folder).")
    connection: str | None = Field(default=None, description="Name of the s3 connection reaching the bucket.")
    directory: str | None = Field(
        default=None, description="Local folder of the backups (default .connectors-backups beside the state folder)."
    )
    max_age_hours: float = Field(
        default=24, gt=0, description="A database whose backup is older than this is backed up again."
    )


class SQLiteStateSpec(Strict):
    """State in SQLite files under the project's ``state_dir`` (the default; backed up under the 24-hour rule)."""

    kind: Literal["sqlite"] = Field(description="sqlite: files under state_dir.")


class PostgresStateSpec(Strict):
    """State in tables of one PostgreSQL schema, shared by every process and machine that reaches the database (a
    production deployment: see docs/production.md). Backups are the database's own (``connectors backup`` says so).
    """

    kind: Literal["postgres"] = Field(description="postgres: tables in a PostgreSQL schema.")
    connection: str = Field(description="Name of the pipeline's postgres connection (its dsn reaches the database).")
    db_schema: str = Field(
        default="connectors",
        alias="schema",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="The schema of the state tables (created on the first write); one per project.",
    )


StateSpec = Annotated[SQLiteStateSpec | PostgresStateSpec, Field(discriminator="kind")]


class Transport(Strict):
    """The transport of a connector: its name and its config (validated by the transport's own model)."""

    name: TransportName = Field(description="Which transport reads the input.")
    config: dict[str, Any] = Field(
        default_factory=dict, description="The transport's settings; its keys depend on name."
    )

    @field_validator("config")
    @classmethod
    def _validate_config(cls, config: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("name")
        if name in TRANSPORT_CONFIG_MODELS:
            TRANSPORT_CONFIG_MODELS[name].model_validate(config)
        return config

    def parsed_config(self) -> Any:
        """The config as the transport's typed model."""
        return TRANSPORT_CONFIG_MODELS[self.name].model_validate(self.config)


ParamType = Literal["string", "integer", "number", "boolean", "list", "object"]


class ProcessorParam(Strict):
    """One declared argument of a processor; without a ``default`` it is required."""

    type: ParamType = Field(description="Type an argument must have.")
    default: Any = Field(default=None, description="Value when a use gives none; without it the argument is required.")
    description: str | None = Field(default=None, description="What the argument means (shown when it is missing).")

    @property
    def required(self) -> bool:
        """Whether a use must give this argument (no ``default`` key)."""
        return "default" not in self.model_fields_set

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not of this parameter's type, else ``None``."""
        if isinstance(value, _PARAM_TYPES[self.type]) and not (isinstance(value, bool) and self.type != "boolean"):
            return None
        return f"must be {'an' if self.type[0] in 'aeiou' else 'a'} {self.type}, not {_yaml_type(value)} {value!r:.60}"

    @model_validator(mode="after")
    def _default_fits(self) -> ProcessorParam:
        if not self.required and self.default is not None and (problem := self.problem(self.default)):
            raise ValueError(f"default {problem}")
        return self


class Processor(Strict):
    """A step between transport and sink (``docs/processors.md``): a Python function over Arrow tables or pandas
    DataFrames, a DuckDB ``SELECT ... FROM batch``, or an external program in any language."""

    kind: Literal["python", "sql", "command"] = Field(description="python, sql or command.")
    function: str | None = Field(
        default=None, description="python: 'module:function' (or 'module:Class') taking a pyarrow.Table or DataFrame"
    )
    query: str | None = Field(default=None, description="sql: one DuckDB SELECT over the table 'batch'; args as $name")
    command: list[str] | None = Field(default=None, description="command: argv of the program")
    protocol: Literal["filter", "jsonl", "arrow"] = Field(
        default="filter",
        description="command: filter (one run per batch, JSON lines to EOF), jsonl or arrow (one long-lived program)",
    )
    timeout_seconds: float = Field(default=300, gt=0, description="Seconds one batch may take.")
    env: dict[str, str | EnvSecret] = Field(
        default_factory=dict,
        description="command: variables given to the program on top of a minimal environment; secrets as {env: NAME}.",
    )
    description: str | None = Field(default=None, description="What the processor does.")
    params: dict[str, ProcessorParam] = Field(default_factory=dict, description="argument name -> type and default")

    _env = field_validator("env")(no_literal_secrets)

    @model_validator(mode="after")
    def _one_target(self) -> Processor:
        if self.kind is None or getattr(self, "use", None) is not None:  # a connector's reference {use: NAME}
            return self
        target = {"python": "function", "sql": "query", "command": "command"}[self.kind]
        if not getattr(self, target):
            raise ValueError(_TARGET_HINTS[self.kind])
        own = {target, "protocol", "env"} if self.kind == "command" else {target}
        stray = sorted(({"function", "query", "command", "protocol", "env"} & self.model_fields_set) - own)
        if stray:
            raise ValueError(f"{', '.join(stray)}: not used by a {self.kind} processor; remove it")
        if self.kind == "python" and not re.fullmatch(r"[\w.]+:[\w.]+", self.function or ""):
            raise ValueError(f"function {self.function!r} must be written 'module:function' (or 'module:Class')")
        return self

    @property
    def target(self) -> str:
        """What runs: ``python mod:fn``, ``sql SELECT ...`` or ``command prog args``."""
        if self.kind == "python":
            return f"python {self.function}"
        if self.kind == "sql":
            query = " ".join((self.query or "").split())
            return f"sql {query if len(query) <= 60 else query[:57] + '...'}"
        return f"command {shlex.join(self.command or [])}"


class ProcessorEntry(Processor):
    """One entry of a connector's ``processors``: an inline processor (which may carry ``args``), or a reference
    ``{use: NAME, args: {...}}`` to the pipeline's ``processors`` map."""

    kind: Literal["python", "sql", "command"] | None = Field(  # type: ignore[assignment]
        default=None, description="Inline processor: python, sql or command (absent with use)."
    )
    use: str | None = Field(default=None, description="name of a processor of the pipeline's processors map")
    args: dict[str, Any] = Field(default_factory=dict, description="arguments (checked against the params)")

    @model_validator(mode="after")
    def _inline_or_reference(self) -> ProcessorEntry:
        if self.use is not None:
            extra = sorted(self.model_fields_set - {"use", "args"})
            if extra:
                raise ValueError(
                    f"a reference {{use: {self.use}}} takes only 'args'; remove {', '.join(extra)} (or define the "
                    "processor inline, without 'use')"
                )
        elif self.kind is None:
            raise ValueError(
                "a processor needs 'use: NAME' (a processor of the pipeline's processors map) or 'kind' "
                "(python, sql or command)"
            )
        return self


@dataclass(frozen=True)
class ProcessorUse:
    """A processor as one connector uses it: its definition and its arguments, defaults applied."""

    definition: Processor
    args: dict[str, Any]
    name: str | None = None  #: its name in the pipeline's ``processors`` map; ``None`` for an inline processor

    @property
    def label(self) -> str:
        """How messages name it: its name in the map, else what it runs."""
        return self.name or self.definition.target


class ProcessorUseError(ValueError):
    """A connector's processor entry that does not fit: ``problems`` are (key path below the entry, why)."""

    def __init__(self, problems: list[tuple[KeyPath, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{key_path(where)}: {why}" for where, why in problems))


def resolve_processor(entry: Processor, known: Mapping[str, Processor]) -> ProcessorUse:
    """One connector processor entry as a :class:`ProcessorUse`: a reference looked up in ``known`` (the
    pipeline's map), arguments checked against the declared ``params`` and defaults applied.

    An inline processor without ``params`` passes its ``args`` on unchecked. Raises :class:`ProcessorUseError`.
    """
    name = getattr(entry, "use", None)
    args: dict[str, Any] = dict(getattr(entry, "args", None) or {})
    if name is None:
        definition, checked = entry, bool(entry.params)
    elif name in known:
        definition, checked = known[name], True
    else:
        names = ", ".join(sorted(known)) or "none is defined"
        why = f"unknown processor {name!r}; the pipeline's processors are: {names} (pipeline key 'processors')"
        raise ProcessorUseError([(("use",), why)])
    if not checked:
        return ProcessorUse(definition, args, name)
    problems: list[tuple[KeyPath, str]] = []
    params = definition.params
    for arg in args:
        if arg not in params:
            takes = f"its arguments are: {', '.join(params)}" if params else "it takes no arguments"
            why = f"unknown argument {arg!r} of processor {name or definition.target}; {takes}"
            problems.append((("args", arg), why))
    resolved: dict[str, Any] = {}
    for param_name, param in params.items():
        if param_name in args:
            if problem := param.problem(args[param_name]):
                problems.append((("args", param_name), f"argument {param_name!r} {problem}"))
            resolved[param_name] = args[param_name]
        elif param.required:
            about = f" ({param.description})" if param.description else ""
            problems.append(
                (("args", param_name), f"missing required argument {param_name!r}: a {param.type}{about}; add it")
            )
        else:
            resolved[param_name] = param.default
    if problems:
        raise ProcessorUseError(problems)
    return ProcessorUse(definition, resolved, name)


_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "list": (list,),
    "object": (dict,),
}
_TARGET_HINTS = {
    "python": "a python processor needs 'function: module:function'",
    "sql": "a sql processor needs 'query: SELECT ... FROM batch'",
    "command": "a command processor needs 'command: [program, args...]'",
}


def _yaml_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


class ConnectorSpec(Strict):
    """One input feeding one table from one transport."""

    name: str = Field(
        pattern=NAME_PATTERN, description="unique in its table; a connector without one is named unnamed-{index}"
    )
    paused: bool = Field(
        default=False, description="Create the connector Paused (started by `connectors connector P T C start`)."
    )
    labels: list[str] = Field(default_factory=list, description="Labels other connectors' start_after may wait for.")
    start_after: list[str] | None = Field(
        default=None,
        description="A label or list of labels: the connector starts once every connector carrying them has finished.",
    )
    max_batch_size: int = Field(
        default=1_000_000,
        gt=0,
        description="Records per batch (one sink transaction) at most; byte transports are also bounded by their "
        "chunk_size. Large batches load fastest into DuckDB, whose loads of under ~30 MB run on one core.",
    )
    transport: Transport = Field(description="Where records come from.")
    format: Format | None = Field(
        default=None, description="How the transport's bytes become records (not for datagen and postgres_input)."
    )
    processors: list[ProcessorEntry] = Field(
        default_factory=list,
        description="in order, between transport and sink: inline processors or {use: NAME, args: {...}}",
    )

    @field_validator("start_after", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and not value:
            raise ValueError("start_after is an empty list; name at least one label or remove the key")
        return value

    @model_validator(mode="after")
    def _format_fits_transport(self) -> ConnectorSpec:
        produces_records = self.transport.name in ("datagen", "postgres_input")
        if produces_records and self.format is not None:
            raise ValueError(f"transport {self.transport.name} produces records itself; remove 'format'")
        if not produces_records and self.format is None:
            raise ValueError(f"transport {self.transport.name} needs a 'format' (json, csv or parquet)")
        return self

    @property
    def starts_paused(self) -> bool:
        """A connector created paused, or waiting for ``start_after``, starts ``Paused``."""
        return self.paused or bool(self.start_after)


class TableSpec(Strict):
    """A destination table and the connectors that fill it."""

    columns: dict[str, str] | None = Field(default=None, description="column name -> SQL type")
    topic: str | None = Field(
        default=None, pattern=TOPIC_PATTERN, description="kafka sink: the table's topic (default {pipeline}.{table})"
    )
    connectors: list[ConnectorSpec] = Field(min_length=1, description="The inputs of the table (at least one).")

    def topic_name(self, pipeline: str, table: str) -> str:
        """The topic a kafka sink writes this table to: ``topic``, else ``{pipeline}.{table}``."""
        return self.topic or f"{pipeline}.{table}"

    @field_validator("columns")
    @classmethod
    def _known_types(cls, columns: dict[str, str] | None) -> dict[str, str] | None:
        for column, sql_type in (columns or {}).items():
            if sql_type.upper() not in COLUMN_TYPES:
                raise ValueError(
                    f"column {column!r} has unknown type {sql_type!r}; use one of {', '.join(sorted(COLUMN_TYPES))}"
                )
        return {c: t.upper() for c, t in columns.items()} if columns else columns

    @field_validator("connectors", mode="before")
    @classmethod
    def _name_unnamed(cls, connectors: Any) -> Any:
        """A connector without ``name`` is named ``unnamed-{index}`` (its 0-based place in the list, as Feldera
        names them); a name given explicitly is kept, and duplicates are still refused after."""
        if not isinstance(connectors, list):
            return connectors
        return [
            {**connector, "name": f"unnamed-{index}"}
            if isinstance(connector, dict) and connector.get("name") is None
            else connector
            for index, connector in enumerate(connectors)
        ]

    @field_validator("connectors")
    @classmethod
    def _unique_names(cls, connectors: list[ConnectorSpec]) -> list[ConnectorSpec]:
        seen: set[str] = set()
        for connector in connectors:
            if connector.name in seen:
                raise ValueError(f"two connectors are named {connector.name!r}; connector names must be unique")
            seen.add(connector.name)
        return connectors


class Hooks(Strict):
    """Replaceable validators and callbacks, as ``module:function`` strings."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _known_names(self) -> Hooks:
        allowed = {f"{p}_{kind}" for p in PROCEDURES for kind in ("validator", "callback")}
        for key, value in (self.model_extra or {}).items():
            if key not in allowed:
                raise ValueError(
                    f"unknown hook {key!r}; hooks are <procedure>_validator or <procedure>_callback with "
                    f"procedure one of {', '.join(PROCEDURES)}"
                )
            if not isinstance(value, str) or not re.fullmatch(r"[\w.]+:[\w.]+", value):
                raise ValueError(f"hook {key!r} must be a 'module:function' string")
        return self

    def as_dict(self) -> dict[str, str]:
        """Hook name -> ``module:function``."""
        return dict(self.model_extra or {})


class PipelineSpec(Strict):
    """What one deployment ingests: sink, connections, tables and wizard settings."""

    org_slug: str = Field(
        default="default", pattern=NAME_PATTERN, description="Organisation, the first part of backup keys."
    )
    sink: Sink = Field(default_factory=lambda: DuckDBSink(kind="duckdb"), description="Where the tables are written.")
    processors: dict[str, Processor] = Field(
        default_factory=dict, description="processors written once, used by connectors as {use: NAME, args: {...}}"
    )
    connections: dict[str, Connection] = Field(
        default_factory=dict, description="name -> a connection (kafka, postgres, s3, snowflake)."
    )
    prerequisites: list[Prerequisite] = Field(default_factory=list, description="The wizard's checklist.")
    backup: Backup = Field(default_factory=Backup, description="Where state databases are backed up.")
    state: StateSpec = Field(
        default_factory=lambda: SQLiteStateSpec(kind="sqlite"),
        description="Where the pipeline's lifecycle and connector state live: sqlite (default) or postgres.",
    )
    hooks: Hooks = Field(default_factory=Hooks, description="Replaceable validators and callbacks of the procedures.")
    commit_interval: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between commits of a live connector at most (a continuous run's idle wait; "
        "connector_core/streaming.py).",
    )
    max_run_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Seconds a Dagster ingest run streams before it ends and the sensor starts the next.",
    )
    tables: dict[str, TableSpec] = Field(min_length=1, description="name -> a table and its connectors.")

    @field_validator("connections", "tables", "processors")
    @classmethod
    def _names(cls, items: dict[str, Any]) -> dict[str, Any]:
        for key in items:
            if not re.fullmatch(NAME_PATTERN, key):
                raise ValueError(f"name {key!r} must match {NAME_PATTERN}")
        return items

    def iter_connectors(self) -> Iterator[tuple[str, ConnectorSpec]]:
        """Every (table name, connector) pair in file order."""
        for table_name, table in self.tables.items():
            for connector in table.connectors:
                yield table_name, connector

    def connector(self, table: str, name: str) -> ConnectorSpec:
        """The connector ``table.name``; a :class:`LookupError` names what exists otherwise."""
        if table not in self.tables:
            raise LookupError(f"no table {table!r}; tables: {', '.join(self.tables)}")
        for connector in self.tables[table].connectors:
            if connector.name == name:
                return connector
        names = ", ".join(c.name for c in self.tables[table].connectors)
        raise LookupError(f"no connector {name!r} in table {table!r}; connectors: {names}")

    def processor_uses(self, connector: ConnectorSpec) -> list[ProcessorUse]:
        """The connector's processors in order, references resolved and argument defaults applied."""
        return [resolve_processor(entry, self.processors) for entry in connector.processors]


class Project(Strict):
    """The whole project file."""

    pipelines: dict[str, PipelineSpec] = Field(min_length=1, description="name -> a pipeline.")
    state_dir: str | None = Field(default=None, description="Where state databases live (default .connectors).")

    #: Path of the file this project was read from (set by :func:`load_project`).
    source_path: Path | None = Field(default=None, exclude=True)

    @field_validator("pipelines")
    @classmethod
    def _pipeline_names(cls, items: dict[str, Any]) -> dict[str, Any]:
        return PipelineSpec._names(items)

    def pipeline(self, name: str) -> PipelineSpec:
        """The pipeline ``name``; a :class:`LookupError` names what exists otherwise."""
        if name not in self.pipelines:
            raise LookupError(f"no pipeline {name!r}; pipelines: {', '.join(self.pipelines)}")
        return self.pipelines[name]

    @property
    def base_dir(self) -> Path:
        """The folder of the project file (relative paths in the file are relative to it)."""
        return self.source_path.parent if self.source_path else Path.cwd()

    def resolve_state_dir(self, override: str | os.PathLike[str] | None = None) -> Path:
        """The state directory: an explicit override, else ``state_dir`` from the file, else ``.connectors``.

        An override (``--state-dir``, a component's ``state_dir``) is checked like the file's ``state_dir`` is when
        the file loads; a :class:`ProjectFileError` names it and the reason.
        """
        chosen = Path(override or self.state_dir or ".connectors")
        resolved = chosen if chosen.is_absolute() else self.base_dir / chosen
        if override is not None:
            problems = _state_dir_problems(resolved.resolve()) + [
                problem for where, problem in _sink_clashes(self, resolved.resolve()) if where == ("state_dir",)
            ]
            if problems:
                raise ProjectFileError(
                    self.source_path or "<memory>", [f"state_dir (given as {override}): {p}" for p in problems]
                )
        return resolved


# ---------------------------------------------------------------------------------------------------- errors
class ProjectFileError(ValueError):
    """A project file that cannot be used; the message names the file, each bad key path and the fix."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = Path(path)
        self.problems = problems
        super().__init__(f"Invalid project file {self.path}:\n" + "\n".join(f"  - {p}" for p in problems))


def _clean_location(location: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union-branch tags (``KafkaConnection``, ``str``...) from an error location."""
    tags = {"kafka", "postgres", "s3", "snowflake", "duckdb"}
    cleaned: list[Any] = []
    for part in location:
        if isinstance(part, str):
            if part in {"str", "int", "float", "bool", "EnvSecret"} or part.startswith(("list[", "function-")):
                continue
            after_sink = cleaned[-1:] == ["sink"]
            after_connection = len(cleaned) >= 2 and cleaned[-2] == "connections"
            if part in tags and (after_sink or after_connection):
                continue
        cleaned.append(part)
    return tuple(cleaned)


def _with_lines(located: list[tuple[KeyPath, str]], text: str | None) -> list[str]:
    """``key.path (line N): problem`` for each (key path, problem); the line is the key's, else the nearest
    enclosing key's that is in ``text`` (none for a top-level key the file leaves out)."""
    lines = line_index(text, [location for location, _ in located]) if text and located else {}
    problems = []
    for location, problem in located:
        line = next((lines[location[:end]] for end in range(len(location), 0, -1) if location[:end] in lines), None)
        problems.append(f"{key_path(location) or '(top level)'}{f' (line {line})' if line else ''}: {problem}")
    return problems


def _describe(error: dict[str, Any], data: Any = None) -> str:
    if error["type"] == "extra_forbidden":
        key = str(error["loc"][-1])
        allowed = _allowed_keys(data, tuple(error["loc"]))
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if close:
            return f"unknown key {key!r}; did you mean {close[0]!r}?"
        known = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"unknown key {key!r}; remove it or check its spelling{known}"
    if error["type"] == "missing":
        return "required key is missing"
    message = error["msg"]
    return message.removeprefix("Value error, ")


def _allowed_keys(data: Any, location: tuple[Any, ...]) -> list[str]:
    """The keys the model holding the last key of a raw pydantic error ``location`` allows (as the file spells
    them), found by walking the models (and ``data``, which picks a transport's config model) along it."""
    kind: Any = Project
    node = data
    for part in location[:-1]:
        kind = _unwrap(kind)
        members = [m for m in get_args(kind) if m is not type(None)] if _is_union(kind) else None
        if members is not None:
            chosen = next((m for m in map(_unwrap, members) if part in _union_tags(m)), None)
            if chosen is not None:  # a union branch tag: the node stays
                kind = chosen
                continue
            kind = next((m for m in map(_unwrap, members) if isinstance(m, type) and issubclass(m, BaseModel)), None)
        node = (
            node.get(part)
            if isinstance(node, dict)
            else node[part]
            if isinstance(node, list) and isinstance(part, int) and part < len(node)
            else None
        )
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            if kind is Transport and part == "config":
                parent = _parent_node(data, location, part)
                kind = TRANSPORT_CONFIG_MODELS.get(parent.get("name") if isinstance(parent, dict) else None)
                continue
            field = next((f for name, f in kind.model_fields.items() if part in (name, f.alias)), None)
            kind = field.annotation if field is not None else None
        elif get_origin(kind) in (dict, list):
            kind = get_args(kind)[-1]
        else:
            return []
    kind = _unwrap(kind)
    if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
        return []
    return [field.alias or name for name, field in kind.model_fields.items() if not field.exclude]


def _parent_node(data: Any, location: tuple[Any, ...], part: Any) -> Any:
    """The data node holding ``part`` (the last occurrence of it in ``location``), union tags skipped."""
    node = data
    for step in location[: len(location) - 1 - location[::-1].index(part)]:
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and step < len(node):
            node = node[step]
    return node


def _unwrap(kind: Any) -> Any:
    """``Annotated[X, ...]`` -> ``X``."""
    return get_args(kind)[0] if get_origin(kind) is Annotated else kind


def _is_union(kind: Any) -> bool:
    return get_origin(kind) in (Union, types.UnionType)


def _union_tags(kind: Any) -> set[str]:
    """How pydantic names a union branch in an error location: its ``kind`` literal(s) or its class name."""
    if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
        return set()
    field = kind.model_fields.get("kind")
    literal = get_args(field.annotation) if field is not None and get_origin(field.annotation) is Literal else ()
    return {kind.__name__, *map(str, literal)}


def parse_project(data: Any, path: Path | str = "<memory>", text: str | None = None) -> Project:
    """Validate already-loaded YAML data; raise :class:`ProjectFileError` naming every bad key path (and its line,
    found in ``text`` when given, only once the data failed)."""
    with paused_gc():  # the models of a large file are millions of young objects: see paused_gc
        return _parse_project(data, path, text)


def _parse_project(data: Any, path: Path | str, text: str | None) -> Project:
    try:
        project = Project.model_validate(data)
    except ValidationError as exc:
        located = [(_clean_location(tuple(error["loc"])), _describe(error, data)) for error in exc.errors()]
        raise ProjectFileError(path, list(dict.fromkeys(_with_lines(located, text)))) from None
    project.source_path = Path(path) if path != "<memory>" else None
    problems = [problem for name, pipeline in project.pipelines.items() for problem in _graph_problems(name, pipeline)]
    problems += _with_lines(_path_problems(project) + _processor_problems(project), text)
    problems += _with_lines(_channel_problems(project) + _state_problems(project), text)
    if problems:
        raise ProjectFileError(path, problems)
    return project


def load_project(path: str | os.PathLike[str] | None = None) -> Project:
    """Read and validate a project file: ``path``, else ``$CONNECTORS_PROJECT_FILE``, else ``./connectors.yaml``."""
    chosen = Path(path or os.environ.get(PROJECT_FILE_ENV) or DEFAULT_PROJECT_FILE).absolute()
    if not chosen.is_file():
        raise ProjectFileError(
            chosen,
            [f"file not found; pass --project-file PATH or set {PROJECT_FILE_ENV} (default ./{DEFAULT_PROJECT_FILE})"],
        )
    try:
        text = read_text(chosen)
        data = load_yaml(text)
    except YamlProblem as exc:
        raise ProjectFileError(chosen, [str(exc)]) from None
    if not isinstance(data, dict):
        raise ProjectFileError(chosen, ["the file must be a mapping with a top-level 'pipelines' key"])
    return parse_project(data, chosen, text)


# -------------------------------------------------------------------------------------------------- channels
def _channel_problems(project: Project) -> list[tuple[KeyPath, str]]:
    """A kafka sink naming a connection that is missing or not a kafka one; a table ``topic`` without a kafka
    sink (nothing would write it): (key path, why and the fix)."""
    problems: list[tuple[KeyPath, str]] = []
    for name, pipeline in project.pipelines.items():
        sink = pipeline.sink
        if not isinstance(sink, KafkaSink):
            why = f"only a kafka sink writes topics, and this pipeline's sink is {sink.kind}; remove 'topic'"
            problems += [
                (("pipelines", name, "tables", table_name, "topic"), why)
                for table_name, table in pipeline.tables.items()
                if table.topic is not None
            ]
            continue
        at: KeyPath = ("pipelines", name, "sink", "connection")
        connection = pipeline.connections.get(sink.connection)
        if connection is None:
            known = ", ".join(pipeline.connections) or "none"
            why = f"no connection {sink.connection!r} (connections: {known}); add it with kind: kafka"
            problems.append((at, why))
        elif connection.kind != "kafka":
            why = f"connection {sink.connection!r} is a {connection.kind} connection; a kafka sink needs a kafka one"
            problems.append((at, why))
    return problems


def _state_problems(project: Project) -> list[tuple[KeyPath, str]]:
    """A postgres state naming a connection that is missing or not a postgres one: (key path, why and the fix)."""
    problems: list[tuple[KeyPath, str]] = []
    for name, pipeline in project.pipelines.items():
        if not isinstance(pipeline.state, PostgresStateSpec):
            continue
        at: KeyPath = ("pipelines", name, "state", "connection")
        connection = pipeline.connections.get(pipeline.state.connection)
        if connection is None:
            known = ", ".join(pipeline.connections) or "none"
            problems.append(
                (at, f"no connection {pipeline.state.connection!r} (connections: {known}); add it with kind: postgres")
            )
        elif connection.kind != "postgres":
            why = f"connection {pipeline.state.connection!r} is a {connection.kind} connection; state needs a postgres one"
            problems.append((at, why))
    return problems


# ----------------------------------------------------------------------------------------------------- paths
def _path_problems(project: Project) -> list[tuple[KeyPath, str]]:
    """State folders that cannot be, or that clash with a DuckDB file: (key path, why). Reads, never writes.

    Refused: a ``state_dir`` (default ``.connectors``) that is a file or lies under one, that lies in an existing
    pipeline state folder (one holding ``pipeline.sqlite``), or at/inside a pipeline's DuckDB file; a DuckDB
    ``sink.path`` inside the state folder of any pipeline (``{state_dir}/{pipeline}``).
    """
    state_dir = project.resolve_state_dir().resolve()
    return [(("state_dir",), problem) for problem in _state_dir_problems(state_dir)] + _sink_clashes(project, state_dir)


def _sink_clashes(project: Project, state_dir: Path) -> list[tuple[KeyPath, str]]:
    """A state folder at/inside a pipeline's DuckDB file, or a DuckDB file inside a pipeline's state folder."""
    problems: list[tuple[KeyPath, str]] = []
    for name, pipeline in project.pipelines.items():
        if not isinstance(pipeline.sink, DuckDBSink):
            continue
        location = ("pipelines", name, "sink", "path")
        sink = (project.base_dir / pipeline.sink.path).resolve()
        if state_dir.is_relative_to(sink):
            problems.append(
                (
                    ("state_dir",),
                    f"{state_dir} is at or inside the DuckDB file of pipeline {name} ({key_path(location)}: {sink}); "
                    "keep state and warehouse apart",
                )
            )
        for other in project.pipelines:
            if sink.is_relative_to(state_dir / other):
                problems.append(
                    (
                        location,
                        f"{sink} lies inside the state folder of pipeline {other} ({state_dir / other}); put the "
                        "DuckDB file outside it",
                    )
                )
    return problems


def _state_dir_problems(state_dir: Path) -> list[str]:
    """Why ``state_dir`` cannot hold state: a file, under a file, or in another pipeline's state folder."""
    try:
        if state_dir.exists() and not state_dir.is_dir():
            return [f"{state_dir} is a file, not a folder; point state_dir at a folder"]
        existing = next(folder for folder in state_dir.parents if folder.exists())
        if not state_dir.exists() and not existing.is_dir():
            return [f"{state_dir} cannot be created: {existing} is a file, not a folder"]
        for folder in (state_dir, *state_dir.parents):
            if (folder / "pipeline.sqlite").is_file():
                return [
                    f"{state_dir} is inside the state folder of a pipeline ({folder} holds pipeline.sqlite); point "
                    "state_dir at a folder of its own"
                ]
    except OSError:  # a folder that cannot be looked into: what uses the state says why
        return []
    return []


# ------------------------------------------------------------------------------------------------ processors
def _processor_problems(project: Project) -> list[tuple[KeyPath, str]]:
    """Processors (and a command sink) that cannot run, as (key path, why and the fix): unknown names, arguments that do not fit the
    declared ``params``, python functions that cannot be imported (from the project folder or the environment),
    programs found neither on PATH nor relative to the project folder, SQL that is not one SELECT."""
    problems: list[tuple[KeyPath, str]] = []
    for pipeline_name, pipeline in project.pipelines.items():
        if isinstance(pipeline.sink, CommandSink):
            problem = program_problem(pipeline.sink.command, pipeline.sink.env, project.base_dir)
            problems += [(("pipelines", pipeline_name, "sink", "command"), problem)] if problem else []
        for name, definition in pipeline.processors.items():
            at: KeyPath = ("pipelines", pipeline_name, "processors", name)
            found = target_problems(definition, set(definition.params), project.base_dir)
            problems += [((*at, *where), why) for where, why in found]
        for table_name, table in pipeline.tables.items():
            for index, connector in enumerate(table.connectors):
                for position, entry in enumerate(connector.processors):
                    at = ("pipelines", pipeline_name, "tables", table_name, "connectors", index, "processors", position)
                    try:
                        use = resolve_processor(entry, pipeline.processors)
                    except ProcessorUseError as exc:
                        problems += [((*at, *where), why) for where, why in exc.problems]
                        continue
                    if use.name is None:
                        found = target_problems(entry, set(entry.params or entry.args), project.base_dir)
                        problems += [((*at, *where), why) for where, why in found]
    return problems


# ---------------------------------------------------------------------------------------- start_after graph
def connector_labels(table: str, connector: ConnectorSpec) -> list[str]:
    """The labels a connector carries: its own plus the implicit ``table.connector`` name."""
    return list(dict.fromkeys([*connector.labels, f"{table}.{connector.name}"]))


def _graph_problems(pipeline_name: str, pipeline: PipelineSpec) -> list[str]:
    """Find ``start_after`` cycles: connector A waits for a label carried by B, ... back to A.

    Depth-first, without recursion, over the graph of connectors and labels (connector -> each label it waits for
    -> each connector carrying it), so the work grows with connectors + labels + start_after entries, however many
    connectors carry or wait for one label.
    """
    carriers: dict[str, list[str]] = {}
    waits: dict[str, list[str]] = {}
    for table, connector in pipeline.iter_connectors():
        endpoint = f"{table}.{connector.name}"
        for label in connector_labels(table, connector):
            carriers.setdefault(label, []).append(endpoint)
        waits[endpoint] = connector.start_after or []

    def following(node: tuple[bool, str]) -> Iterator[tuple[bool, str]]:  # (is a label, name)
        is_label, name = node
        if is_label:
            return ((False, carrier) for carrier in carriers[name])
        return ((True, label) for label in waits[name] if label in carriers)

    problems: list[str] = []
    reported: set[frozenset[str]] = set()
    position: dict[tuple[bool, str], int] = {}  # a node's index on the current path; -1 once done
    for start in waits:
        if (False, start) in position:
            continue
        path, todo = [(False, start)], [following((False, start))]
        position[path[0]] = 0
        while todo:
            node = next(todo[-1], None)
            if node is None:
                position[path.pop()] = -1
                todo.pop()
            elif node not in position:
                position[node] = len(path)
                path.append(node)
                todo.append(following(node))
            elif position[node] >= 0:
                loop = path[position[node] :]
                if loop[0][0]:  # start the loop at a connector
                    loop = loop[1:] + loop[:1]
                endpoints = [name for is_label, name in loop if not is_label]
                if frozenset(endpoints) not in reported:
                    reported.add(frozenset(endpoints))
                    steps = ", ".join(
                        f"{endpoint} waits for label {loop[2 * i + 1][1]!r} carried by "
                        f"{endpoints[(i + 1) % len(endpoints)]}"
                        for i, endpoint in enumerate(endpoints)
                    )
                    where = f"pipelines.{pipeline_name}.tables"
                    problems.append(f"{where}: start_after cycle: {steps}. Remove one of these start_after entries.")
    return problems
