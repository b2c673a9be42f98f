"""Shared fixtures: the real services the tests start (Kafka, S3, PostgreSQL databases, HTTP), and for the Dagster
tests a test instance (its storage chosen by ``--dagster-storage``: default, postgres or both), the module's
``PROJECT`` written as a project file, and its definitions; ingest sessions into a DuckDB file."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from clients_for_tests import DuckDBClients

from connector_core.ingest import IngestSession
from connector_core.pipeline import Pipeline

if TYPE_CHECKING:
    import dagster as dg

pytest_plugins = ["fixtures_services"]


#: Values of ``--dagster-storage``: which Dagster storage the ``instance`` fixture gives.
DAGSTER_STORAGES = {"default": ["default"], "postgres": ["postgres"], "both": ["default", "postgres"]}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--dagster-storage",
        choices=sorted(DAGSTER_STORAGES),
        default="default",
        help="Storage of the Dagster test instance (fixture `instance`): default (SQLite in a temporary folder), "
        "postgres (a fresh database on the local PostgreSQL server per session, dropped at its end), or both "
        "(every test using the fixture runs on each).",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize the tests that use ``instance`` by storage (ids ``dagster-default``, ``dagster-postgres``), unless
    only the default one is asked for; ``daemon_storage`` (the storage name, for a test that writes its own
    ``dagster.yaml``) always."""
    storages = DAGSTER_STORAGES[metafunc.config.getoption("dagster_storage")]
    ids = [f"dagster-{storage}" for storage in storages]
    if "instance" in metafunc.fixturenames and storages != ["default"]:
        metafunc.parametrize("instance", storages, indirect=True, scope="module", ids=ids)
    if "daemon_storage" in metafunc.fixturenames:  # a test that starts its own daemon and instance
        metafunc.parametrize("daemon_storage", storages, ids=ids)


@pytest.fixture(scope="session")
def dagster_postgres_url() -> Iterator[str]:
    """``postgres_url`` of a fresh database ``dagster_test_<hex>`` for Dagster storage; dropped with ``FORCE`` at the
    end of the session. The driver is psycopg2: SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, with which
    dagster-postgres' ``NOTIFY`` fails every run."""
    from fixtures_services import dagster_storage_url, fresh_database

    with fresh_database("dagster_test") as params:
        yield dagster_storage_url(params)


@pytest.fixture(scope="module")
def instance(request: pytest.FixtureRequest) -> Iterator[dg.DagsterInstance]:
    """A Dagster test instance shared by the tests of a module, on the storage ``--dagster-storage`` names.

    On PostgreSQL every module starts from a wiped instance (runs, event logs, schedule and sensor state) in the
    session's database, as it would from a new SQLite one.
    """
    import dagster as dg

    if getattr(request, "param", "default") == "default":
        with dg.instance_for_test() as instance:
            yield instance
        return
    url = request.getfixturevalue("dagster_postgres_url")
    with dg.instance_for_test(overrides={"storage": {"postgres": {"postgres_url": url}}}) as instance:
        instance.wipe()
        instance.wipe_all_schedules()
        yield instance


@pytest.fixture
def project_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The test module's ``PROJECT`` text (dedented) written to ``connectors.yaml`` in a fresh folder; in the
    PostgreSQL turn of ``state_backend``, with every pipeline's state in PostgreSQL."""
    path = tmp_path / "connectors.yaml"
    from fixtures_services import STATE_SCHEMA_ENV, with_state_backend

    text = textwrap.dedent(request.module.PROJECT)
    if os.environ.get(STATE_SCHEMA_ENV):
        text = yaml.safe_dump(with_state_backend(yaml.safe_load(text)), sort_keys=False)
    path.write_text(text)
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
