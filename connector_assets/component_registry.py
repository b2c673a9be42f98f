"""Components registered for ``dg list components`` (the ``dagster_dg_cli.registry_modules`` entry point).

Every dg project in the environment imports this module: keep it to re-exports.
"""

from connector_assets.component import ConnectorsComponent

__all__ = ["ConnectorsComponent"]
