"""Transports: one module per transport name, each with ``open_reader(ctx) -> TransportReader``."""

from __future__ import annotations

import importlib

from connector_core.transports.base import ReadResult, TransportContext, TransportError, TransportReader

__all__ = ["ReadResult", "TransportContext", "TransportError", "TransportReader", "open_transport"]


def open_transport(ctx: TransportContext) -> TransportReader:
    """Open the transport named by ``ctx.connector.transport.name`` (its module is imported on first use)."""
    module = importlib.import_module(f"connector_core.transports.{ctx.connector.transport.name}")
    return module.open_reader(ctx)
