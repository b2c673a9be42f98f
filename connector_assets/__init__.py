"""Dagster wiring of the connector control plane (the shape of dagster-dlt / dagster-sling).

.. code-block:: python

    from connector_assets import build_definitions

    defs = build_definitions("connectors.yaml")

Or piece by piece: :func:`connector_assets` (a ``multi_asset`` of a pipeline's tables around your own body),
:class:`ConnectorsResource` (``yield from connectors.ingest(context)``), :class:`ConnectorsTranslator` (table ->
``AssetSpec``). Names are imported on first use, so that importing ``connector_assets.component_registry`` (done
by every dg project in the environment) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connector_assets.assets import build_table_assets, connector_assets
    from connector_assets.component import ConnectorsComponent
    from connector_assets.definitions import build_definitions
    from connector_assets.jobs import build_lifecycle_jobs
    from connector_assets.resource import ConnectorsResource
    from connector_assets.translator import ConnectorsTranslator, TableProps, build_connector_asset_specs

_EXPORTS = {
    "ConnectorsComponent": "connector_assets.component",
    "ConnectorsResource": "connector_assets.resource",
    "ConnectorsTranslator": "connector_assets.translator",
    "TableProps": "connector_assets.translator",
    "build_connector_asset_specs": "connector_assets.translator",
    "build_definitions": "connector_assets.definitions",
    "build_lifecycle_jobs": "connector_assets.jobs",
    "build_table_assets": "connector_assets.assets",
    "connector_assets": "connector_assets.assets",
}

__all__ = [
    "ConnectorsComponent",
    "ConnectorsResource",
    "ConnectorsTranslator",
    "TableProps",
    "build_connector_asset_specs",
    "build_definitions",
    "build_lifecycle_jobs",
    "build_table_assets",
    "connector_assets",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'connector_assets' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
