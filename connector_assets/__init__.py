"""Dagster wiring of the connector control plane: translator, table assets, lifecycle jobs, definitions.

.. code-block:: python

    from connector_assets import build_definitions

    defs = build_definitions("connectors.yaml")

Names are imported on first use, so that importing ``connector_assets.component_registry`` (done by every dg
project in the environment) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connector_assets.assets import build_table_assets
    from connector_assets.component import ConnectorsComponent
    from connector_assets.definitions import build_definitions
    from connector_assets.jobs import build_lifecycle_jobs
    from connector_assets.translator import ConnectorsTranslator, TableProps

_EXPORTS = {
    "ConnectorsComponent": "connector_assets.component",
    "ConnectorsTranslator": "connector_assets.translator",
    "TableProps": "connector_assets.translator",
    "build_definitions": "connector_assets.definitions",
    "build_lifecycle_jobs": "connector_assets.jobs",
    "build_table_assets": "connector_assets.assets",
}

__all__ = [
    "ConnectorsComponent",
    "ConnectorsTranslator",
    "TableProps",
    "build_definitions",
    "build_lifecycle_jobs",
    "build_table_assets",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'connector_assets' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
