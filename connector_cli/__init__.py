"""The ``connectors`` command line (DESIGN §7): a click front end over ``connector_core``."""

from connector_cli.main import cli

__all__ = ["cli"]
