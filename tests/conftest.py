"""Shared fixtures: the real services the tests start (Kafka, S3, PostgreSQL databases, HTTP), and for the Dagster
tests a test instance, the module's ``PROJECT`` written as a project file, and its definitions; ingest sessions
into a DuckDB file."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from clients_for_tests import DuckDBClients

from connector_core.ingest import IngestSession
from connector_core.pipeline import Pipeline

if TYPE_CHECKING:
    import dagster as dg

pytest_plugins = ["fixtures_services"]


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    """A Dagster test instance shared by the tests of a module."""
    import dagster as dg

    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def project_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The test module's ``PROJECT`` text (dedented) written to ``connectors.yaml`` in a fresh folder."""
    path = tmp_path / "connectors.yaml"
    path.write_text(textwrap.dedent(request.module.PROJECT))
    return path


@pytest.fixture
def defs(project_file: Path) -> dg.Definitions:
    """The definitions built from ``project_file``."""
    from connector_assets import build_definitions

    return build_definitions(project_file)


@pytest.fixture
def session_factory(tmp_path: Path) -> Iterator[Callable[[Pipeline], IngestSession]]:
    """Makes ingest sessions of a pipeline into ``warehouse.duckdb`` in ``tmp_path``; closes them afterwards."""
    sessions: list[IngestSession] = []

    def make(pipeline: Pipeline) -> IngestSession:
        session = IngestSession(pipeline, DuckDBClients(tmp_path / "warehouse.duckdb"), log=lambda _: None)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()
