"""Helpers for the tests that build Dagster definitions from a project file: open its pipeline, run procedures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from connector_core.lifecycle import Lifecycle
from connector_core.pipeline import Pipeline
from connector_core.project import load_project
from resources import build_clients


@contextmanager
def opened_pipeline(project_file: Path, name: str = "demo") -> Iterator[Pipeline]:
    """The pipeline ``name`` of the project file, closed on exit."""
    pipeline = Pipeline(load_project(project_file), name)
    try:
        yield pipeline
    finally:
        pipeline.close()


def lifecycle(project_file: Path, procedure: str, **kwargs: object) -> None:
    """Run one lifecycle procedure of the ``demo`` pipeline through the core; its answer must be OK.

    (The Dagster jobs that run the same procedures are tested in test_dagster_jobs.py.)
    """
    with opened_pipeline(project_file) as pipeline:
        answer = getattr(Lifecycle(pipeline, build_clients(pipeline)), procedure)(**kwargs)
        assert answer.ok, answer.as_dict()
