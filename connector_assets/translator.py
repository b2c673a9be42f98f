"""From a table of the project file to a Dagster ``AssetSpec`` (the dagster-sling / dagster-dlt translator idiom).

Subclass :class:`ConnectorsTranslator` and override :meth:`~ConnectorsTranslator.get_asset_spec` to change keys,
groups, kinds, owners or metadata; start from ``super().get_asset_spec(props).replace_attributes(...)``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import dagster as dg

from connector_assets.names import PIPELINE_METADATA_KEY, TABLE_METADATA_KEY, group_name
from connector_core.channel import channel_upstreams
from connector_core.project import PipelineSpec, Project, TableSpec

#: Dagster allows at most this many kinds on one asset.
MAX_KINDS = 10

#: The kind shown for each transport (names Dagster's UI has icons for where one exists).
TRANSPORT_KINDS = {
    "datagen": "datagen",
    "file_input": "file",
    "url_input": "http",
    "kafka_input": "kafka",
    "postgres_input": "postgres",
    "s3_input": "s3",
    "command": "command",
}


@dataclass(frozen=True)
class TableProps:
    """What the translator is given for one table: its names and specs."""

    pipeline_name: str
    table_name: str
    table: TableSpec
    pipeline: PipelineSpec
    #: Asset keys of the tables upstream of this one across a Kafka channel (their pipeline's sink writes the
    #: topic one of this table's ``kafka_input`` connectors reads), as the translator keys them.
    channel_upstreams: tuple[dg.AssetKey, ...] = ()

    @property
    def endpoints(self) -> list[str]:
        """``table.connector`` of every connector of the table, in file order."""
        return [f"{self.table_name}.{c.name}" for c in self.table.connectors]


class ConnectorsTranslator:
    """Decides the ``AssetSpec`` of each table: key, group, kinds, owners, metadata and code version."""

    def get_asset_spec(self, props: TableProps) -> dg.AssetSpec:
        """The spec of one table's asset.

        Key ``[pipeline, table]``, group = pipeline, kinds = its transports and the sink, owner
        ``team:<org_slug>``, ``skippable`` (a table with no active connector materializes nothing),
        ``dagster/column_schema`` and ``dagster/table_name`` metadata plus ``connectors/...`` metadata (the
        processors of each connector among them), a ``code_version`` hashing the table's configuration, and the
        tables upstream across a Kafka channel as ``deps`` (lineage from one pipeline to the next).
        """
        return dg.AssetSpec(
            key=dg.AssetKey([props.pipeline_name, props.table_name]),
            deps=props.channel_upstreams,
            description=self._description(props),
            group_name=group_name(props.pipeline_name),
            kinds=self._kinds(props),
            owners=[f"team:{props.pipeline.org_slug}"],
            metadata=self._metadata(props),
            code_version=table_code_version(props.table),
            skippable=True,
        )

    @staticmethod
    def _description(props: TableProps) -> str:
        lines = [
            f"Table `{props.table_name}` of pipeline `{props.pipeline_name}` in the {props.pipeline.sink.kind} "
            f"sink, fed by {', '.join(f'`{e}`' for e in props.endpoints)}."
        ]
        for endpoint, steps in processor_labels(props).items():
            lines.append(f"`{endpoint}` is processed by {' -> '.join(f'`{step}`' for step in steps)}.")
        return "\n\n".join(lines)

    @staticmethod
    def _kinds(props: TableProps) -> set[str]:
        transports = [TRANSPORT_KINDS.get(c.transport.name, c.transport.name) for c in props.table.connectors]
        sink = props.pipeline.sink.kind
        ordered = [k for k in dict.fromkeys(transports) if k != sink][: MAX_KINDS - 1]
        return {*ordered, sink}

    @staticmethod
    def _metadata(props: TableProps) -> dict[str, Any]:
        metadata: dict[str, Any] = {"dagster/table_name": sink_table_name(props)}
        if props.table.columns:
            metadata["dagster/column_schema"] = dg.TableSchema(
                columns=[dg.TableColumn(name=name, type=sql_type) for name, sql_type in props.table.columns.items()]
            )
        metadata[PIPELINE_METADATA_KEY] = props.pipeline_name
        metadata["connectors/sink"] = props.pipeline.sink.kind
        metadata["connectors/endpoints"] = dg.MetadataValue.json(props.endpoints)
        metadata["connectors/transports"] = dg.MetadataValue.json(
            {f"{props.table_name}.{c.name}": c.transport.name for c in props.table.connectors}
        )
        processors = processor_labels(props)
        if processors:
            metadata["connectors/processors"] = dg.MetadataValue.json(processors)
        waits = {f"{props.table_name}.{c.name}": c.start_after for c in props.table.connectors if c.start_after}
        if waits:
            metadata["connectors/start_after"] = dg.MetadataValue.json(waits)
        return metadata


def processor_labels(props: TableProps) -> dict[str, list[str]]:
    """``table.connector -> [processor, ...]`` of the connectors with processors: a processor of the pipeline's map
    by its name (and its arguments), an inline one by what it runs."""
    labels: dict[str, list[str]] = {}
    for connector in props.table.connectors:
        uses = props.pipeline.processor_uses(connector)
        if uses:
            labels[f"{props.table_name}.{connector.name}"] = [
                f"{use.label}({', '.join(f'{k}={v!r}' for k, v in use.args.items())})" if use.args else use.label
                for use in uses
            ]
    return labels


def sink_table_name(props: TableProps) -> str:
    """The table's name in the sink: ``schema.table`` (DuckDB), ``database.schema.table`` (Snowflake) or the
    topic (Kafka)."""
    sink = props.pipeline.sink
    if sink.kind == "snowflake":
        return f"{sink.database}.{sink.schema_}.{props.table_name}"
    if sink.kind == "kafka":
        return props.table.topic_name(props.pipeline_name, props.table_name)
    if sink.kind == "command":
        return props.table_name
    return f"{sink.schema_}.{props.table_name}"


def table_code_version(table: TableSpec) -> str:
    """A short hash of a table's configuration (columns and connectors): changes when the file changes it."""
    text = json.dumps(table.model_dump(mode="json", by_alias=True), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_connector_asset_specs(
    project: Project, pipeline_name: str, translator: ConnectorsTranslator | None = None
) -> list[dg.AssetSpec]:
    """The translator's ``AssetSpec`` of every table of a pipeline, in file order.

    Whatever the translator decides, each spec stays ``skippable`` (a table with no active connector
    materializes nothing) and keeps the pipeline and table it stands for in its metadata (``connectors/pipeline``,
    ``connectors/table``): the execution resource and the sensor find a table's asset key there.
    """
    translator = translator or ConnectorsTranslator()
    spec = project.pipeline(pipeline_name)
    upstreams = channel_upstreams(project)

    def upstream_keys(table_name: str) -> tuple[dg.AssetKey, ...]:
        return tuple(
            translator.get_asset_spec(
                TableProps(name, table, project.pipelines[name].tables[table], project.pipelines[name])
            ).key
            for name, table in upstreams.get((pipeline_name, table_name), [])
        )

    return [
        translator.get_asset_spec(TableProps(pipeline_name, table_name, table, spec, upstream_keys(table_name)))
        .replace_attributes(skippable=True)
        .merge_attributes(metadata={PIPELINE_METADATA_KEY: pipeline_name, TABLE_METADATA_KEY: table_name})
        for table_name, table in spec.tables.items()
    ]


def table_asset_keys(assets: dg.AssetsDefinition, pipeline_name: str) -> dict[str, dg.AssetKey]:
    """Table -> asset key of the tables of ``pipeline_name`` among ``assets`` (built from
    :func:`build_connector_asset_specs`), in the assets' order."""
    return {
        spec.metadata[TABLE_METADATA_KEY]: spec.key
        for spec in assets.specs
        if spec.metadata.get(PIPELINE_METADATA_KEY) == pipeline_name and TABLE_METADATA_KEY in spec.metadata
    }
