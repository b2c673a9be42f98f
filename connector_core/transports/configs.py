"""Typed configuration of every transport (the ``transport.config`` mapping of a connector).

These models import nothing heavy, so the project file validates without the transports' libraries.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connector_core.secrets import EnvSecret, literal_secret_keys, refusal, url_credentials

#: Bytes per batch of the byte transports by default: DuckDB parses and inserts a piece of this size on every core
#: (a piece under ~30 MB runs on one), and the connector holds about one piece at a time.
DEFAULT_CHUNK_SIZE = 32 * 1024 * 1024

TransportName = Literal["datagen", "file_input", "url_input", "kafka_input", "postgres_input", "s3_input", "command"]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def no_literal_secrets(values: dict[str, Any]) -> dict[str, Any]:
    """The secret rule (``connector_core.secrets``) for a mapping of the project file: secret keys and URLs with
    credentials only as ``{env: NAME}``."""
    refused = literal_secret_keys(values)
    if refused:
        raise ValueError(refusal(refused))
    return values


def no_url_credentials(url: str) -> str:
    """A URL of the project file may not carry credentials (they would be stored and printed with it)."""
    if url_credentials(url):
        raise ValueError(
            "the URL carries credentials (user:password@); give them as {env: NAME} settings instead "
            "(S3: aws_access_key_id and aws_secret_access_key; HTTP: headers: {Authorization: {env: NAME}})"
        )
    return url


class DatagenField(_Config):
    """How one column is generated (Feldera's datagen semantics)."""

    strategy: Literal["increment", "uniform", "zipf"] = Field(
        default="increment", description="increment (in order), uniform or zipf (random)."
    )
    range: tuple[float, float] | None = Field(default=None, description="Half-open [a, b): b is never produced.")
    values: list[Any] | None = Field(default=None, description="Used in order (increment) or sampled.")
    scale: float = Field(default=1, description="Step of increment per record.")
    e: float = Field(default=1.0, gt=0, description="Zipf exponent.")
    null_percentage: float = Field(default=0, ge=0, le=100, description="Share of nulls, in percent.")

    @model_validator(mode="after")
    def _check(self) -> DatagenField:
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError(f"range {list(self.range)} is empty; write [a, b] with a < b (b is excluded)")
        if self.values is not None and not self.values:
            raise ValueError("values is an empty list")
        if self.values is not None and self.range is not None:
            raise ValueError("give either range or values, not both")
        return self


class DatagenPlan(_Config):
    """One step of a datagen plan: ``limit`` records at ``rate`` records/second."""

    rate: float | None = Field(default=None, gt=0, description="Records per second; unlimited when absent.")
    limit: int | None = Field(default=None, ge=0, description="Records in this step; endless when absent.")
    fields: dict[str, DatagenField] = Field(
        default_factory=dict, description="column name -> how it is generated (default: increment)."
    )


class DatagenConfig(_Config):
    """Generated records: a list of plans run in order."""

    plan: list[DatagenPlan] = Field(
        default_factory=lambda: [DatagenPlan()], min_length=1, description="Steps run in order."
    )
    seed: int | None = Field(default=None, description="Seed of the random strategies (default: random).")


class FileInputConfig(_Config):
    """A local file; with ``follow`` the file is polled for appended lines."""

    path: str = Field(description="The file, relative to the project file's folder.")
    follow: bool = Field(default=False, description="Poll the file for appended lines (never ends).")
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, gt=0, description="Bytes read per batch at most.")


class UrlInputConfig(_Config):
    """One HTTP GET; end of input when the body is read."""

    path: str = Field(description="http(s) URL, without credentials (give them in headers)")
    timeout_seconds: float = Field(default=30, gt=0, description="Seconds the request may take.")
    headers: dict[str, str | EnvSecret] = Field(
        default_factory=dict,
        description="Extra request headers; secret ones (Authorization, tokens, keys) only as {env: NAME}.",
    )
    chunk_size: int = Field(
        default=DEFAULT_CHUNK_SIZE, gt=0, description="Bytes per batch at most (pieces end at a newline)."
    )

    _path = field_validator("path")(no_url_credentials)
    _headers = field_validator("headers")(no_literal_secrets)


class KafkaInputConfig(_Config):
    """A Kafka topic, read with ``assign()`` from offsets stored with the sink."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    topic: str = Field(description="The topic to read.")
    connection: str | None = Field(default=None, description="Name of a kafka connection of the pipeline.")
    start_from: Literal["earliest", "latest"] | dict[str, list[int]] = Field(
        default="earliest", description="earliest, latest or {offsets: [offset per partition]}."
    )
    enable_partition_eof: bool = Field(
        default=False,
        alias="enable.partition.eof",
        description="End of input at the end of every partition (else never ends).",
    )
    poll_timeout_seconds: float = Field(default=1.0, gt=0, description="Longest wait for one batch.")
    metadata_timeout_seconds: float = Field(default=10.0, gt=0, description="Longest wait for the broker's answer.")
    chunk_size: int = Field(
        default=DEFAULT_CHUNK_SIZE, gt=0, description="Bytes of message values per batch at most (one more message)."
    )

    @model_validator(mode="after")
    def _check(self) -> KafkaInputConfig:
        if isinstance(self.start_from, dict) and set(self.start_from) != {"offsets"}:
            raise ValueError("start_from must be earliest, latest or {offsets: [offset per partition]}")
        extra = self.model_extra or {}
        if not self.connection and "bootstrap.servers" not in extra:
            raise ValueError("name a kafka 'connection' or give 'bootstrap.servers'")
        bad = [k for k in extra if not _looks_like_librdkafka_key(k)]
        if bad:
            raise ValueError(
                f"unknown key(s) {', '.join(bad)}; allowed: topic, connection, start_from, enable.partition.eof, "
                "poll_timeout_seconds, metadata_timeout_seconds, chunk_size and librdkafka settings "
                "(dotted names such as fetch.max.bytes)"
            )
        return self

    def librdkafka_settings(self) -> dict[str, Any]:
        """The extra librdkafka settings given on the connector."""
        return dict(self.model_extra or {})


def _looks_like_librdkafka_key(key: str) -> bool:
    return "." in key and all(part.isalnum() or part.replace("_", "").isalnum() for part in key.split("."))


class PostgresInputConfig(_Config):
    """A snapshot of a query result (or a whole table) over a postgres connection."""

    connection: str = Field(description="Name of a postgres connection of the pipeline.")
    query: str | None = Field(
        default=None, description="SELECT to snapshot; give it an ORDER BY so a resume after a restart is exact."
    )
    table: str | None = Field(default=None, description="'table' or 'schema.table'; read in primary-key order.")
    batch_rows: int = Field(default=50_000, gt=0, description="Rows per batch.")

    @model_validator(mode="after")
    def _one_source(self) -> PostgresInputConfig:
        if bool(self.query) == bool(self.table):
            raise ValueError("give exactly one of 'query' or 'table'")
        return self


class S3InputConfig(_Config):
    """Objects under a prefix (or one key) in a bucket, in key order."""

    connection: str | None = Field(
        default=None, description="Name of an s3 connection of the pipeline (default: the AWS chain)."
    )
    bucket: str = Field(description="The bucket.")
    prefix: str | None = Field(default=None, description="Read every object under this prefix, in key order.")
    key: str | None = Field(default=None, description="Read this one object.")
    chunk_size: int = Field(
        default=DEFAULT_CHUNK_SIZE, gt=0, description="Bytes per batch at most (pieces end at a newline)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> S3InputConfig:
        if self.prefix is not None and self.key is not None:
            raise ValueError("give 'prefix' or 'key', not both")
        return self


class CommandInputConfig(_Config):
    """An external program writing records to stdout (JSON lines by default)."""

    command: list[str] = Field(min_length=1, description="argv; the program runs in the project folder")
    env: dict[str, str | EnvSecret] = Field(
        default_factory=dict,
        description="Variables given to the program on top of a minimal environment (PATH, HOME, locale...: "
        "connector_core.secrets.CHILD_ENVIRONMENT); secrets only as {env: NAME}.",
    )
    chunk_size: int = Field(
        default=DEFAULT_CHUNK_SIZE, gt=0, description="Bytes per batch at most (pieces end at a newline)."
    )
    poll_timeout_seconds: float = Field(default=1.0, gt=0, description="Longest wait for output in one batch.")

    _env = field_validator("env")(no_literal_secrets)


TRANSPORT_CONFIG_MODELS: dict[str, type[BaseModel]] = {
    "datagen": DatagenConfig,
    "file_input": FileInputConfig,
    "url_input": UrlInputConfig,
    "kafka_input": KafkaInputConfig,
    "postgres_input": PostgresInputConfig,
    "s3_input": S3InputConfig,
    "command": CommandInputConfig,
}
