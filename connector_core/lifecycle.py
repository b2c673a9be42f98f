"""Lifecycle procedures of a pipeline and of its connectors (DESIGN §3, §4).

Every procedure answers a :class:`Response`; ``Response.as_dict()`` is the JSON object users see:
``{"response_code": "OK", "message": ...}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connector_core.clients import ConnectionClients
from connector_core.pipeline import Pipeline

OK = "OK"


@dataclass
class Response:
    """The answer of a procedure."""

    response_code: str
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the procedure succeeded."""
        return self.response_code == OK

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of the response (data keys merged in)."""
        return {"response_code": self.response_code, "message": self.message, **self.data}


Hook = Callable[..., Any]


class Lifecycle:
    """The procedures of one pipeline. ``hooks`` maps ``<procedure>_validator|callback`` to callables."""

    def __init__(
        self,
        pipeline: Pipeline,
        clients: ConnectionClients | None = None,
        hooks: dict[str, Hook] | None = None,
    ):
        raise NotImplementedError

    def status(self) -> Response: ...
    def prerequisites(self, done: list[str] | None = None, all_done: bool = False, complete: bool = False) -> Response: ...
    def configure(self, values: dict[str, Any] | None = None) -> Response: ...
    def connect(self) -> Response: ...
    def finalize(self) -> Response: ...
    def reset(self) -> Response: ...
    def setup(self, confirm_prerequisites: bool = False) -> Response: ...
    def pause(self) -> Response: ...
    def resume(self) -> Response: ...
    def recover(self, to: str) -> Response: ...
    def update_connection(self, connection: str, values: dict[str, Any]) -> Response: ...
    def update_warehouse(self, warehouse: str) -> Response: ...
    def start_connector(self, table: str, connector: str) -> Response: ...
    def pause_connector(self, table: str, connector: str) -> Response: ...
