"""The orchestration sensor of a pipeline (DESIGN §5): releases ``start_after`` connectors, requests ingest runs.

Each tick reads every connector's state, starts the paused ``start_after`` connectors whose labels have all
finished, and requests one run per table whose active connectors still have data left. The ``run_key`` is
derived from the connectors' stored positions (``connector_core.orchestration.work_key``), so the same work is
never launched twice, across ticks and daemon restarts alike. The cursor records the positions seen.

One run per table at a time: where the instance's run queue limits the run tag ``connectors/table`` to one run in
progress per value (``concurrency: runs: tag_concurrency_limits`` in ``dagster.yaml``, as ``deploy/dagster.yaml``
sets it), the sensor relies on the queue: it requests a run for a table even while one is in progress (the queue
holds it until the first ends), and skips only a table that already has a run waiting in the queue, so at most one
waits per table (the run key changes with every read a running run makes: without that check each tick would
queue one more run). Without that limit it skips every table that a queued or running run is materializing
(:func:`_busy_tables`).

A tick reads every state database once, read-only, in one query each (``open_for_tick``); it writes only to
release a ``start_after`` connector. Its cost grows linearly with the connectors (``benchmarks/sensor.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import dagster as dg

from connector_assets.names import PIPELINE_TAG, TABLE_TAG, orchestration_sensor_name, pipeline_tags
from connector_assets.translator import table_asset_keys
from connector_core.orchestration import open_for_tick, tables_with_work, work_key
from connector_core.project import Project
from connector_core.vocabulary import Status

__all__ = ["build_orchestration_sensor", "queue_limits_one_run_per_table"]

#: Runs in these states still hold a table's work: no second run is requested for that table meanwhile.
UNFINISHED_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def queue_limits_one_run_per_table(instance: dg.DagsterInstance) -> bool:
    """Whether the instance's run queue lets at most one run per value of ``connectors/table`` be in progress.

    True for a tag concurrency limit on that key with ``limit`` 1 (or 0) applied per unique value, or to the key
    whatever its value (one table run at a time overall). A limit on one given value covers one table only: False.
    """
    run_queue = instance.get_concurrency_config().run_queue_config
    if run_queue is None:  # no queued run coordinator: runs start as soon as they are submitted
        return False
    return any(
        limit.get("key") == TABLE_TAG
        and limit.get("limit", 1) <= 1
        and (limit.get("value") is None or limit.get("value") == {"applyLimitPerUniqueValue": True})
        for limit in run_queue.tag_concurrency_limits
    )


def _busy_tables(
    context: dg.SensorEvaluationContext,
    pipeline_name: str,
    asset_keys: Mapping[str, dg.AssetKey],
    job_name: str,
) -> set[str]:
    """Tables of this pipeline that get no run request this tick (empty without an instance).

    Where the run queue allows one run per table (:func:`queue_limits_one_run_per_table`): the tables with a run of
    this sensor's already waiting in the queue. Otherwise the tables that a queued or running run is materializing:
    a run requested by this sensor names its table in a tag; any other run (a materialization launched from the UI,
    the whole ``{pipeline}__ingest`` job) counts for the tables in its asset selection.
    """
    try:
        instance = context.instance
    except dg.DagsterInvariantViolationError:  # a test context built without an instance
        return set()
    if queue_limits_one_run_per_table(instance):
        waiting = instance.get_runs(
            filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED], tags={PIPELINE_TAG: pipeline_name})
        )
        return {run.tags[TABLE_TAG] for run in waiting if TABLE_TAG in run.tags}
    table_of = {key: table for table, key in asset_keys.items()}
    busy: set[str] = set()
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED_RUN_STATUSES)):
        if run.tags.get(PIPELINE_TAG) == pipeline_name and TABLE_TAG in run.tags:
            busy.add(run.tags[TABLE_TAG])
        elif run.asset_selection:
            busy.update(table_of[key] for key in run.asset_selection if key in table_of)
        elif run.job_name == job_name:
            busy.update(asset_keys)
    return busy


def build_orchestration_sensor(
    pipeline_name: str,
    project: Project,
    state_dir: str | os.PathLike[str] | None,
    assets: dg.AssetsDefinition,
    asset_job: dg.JobDefinition | dg.UnresolvedAssetJobDefinition,
    minimum_interval_seconds: int = 10,
) -> dg.SensorDefinition:
    """The sensor ``{pipeline}__orchestration`` (running by default) requesting runs of ``asset_job``.

    A table's asset key is the one its spec in ``assets`` carries (whatever key the translator chose).
    """
    keys = table_asset_keys(assets, pipeline_name)

    @dg.sensor(
        name=orchestration_sensor_name(pipeline_name),
        target=asset_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description=(
            f"Pipeline {pipeline_name}: starts start_after connectors whose labels finished and requests an ingest "
            "run for each table whose active connectors have data left."
        ),
        tags=pipeline_tags(pipeline_name),
    )
    def _orchestration(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        pipeline, started = open_for_tick(project, pipeline_name, state_dir)
        try:
            if started:
                context.log.info(f"{pipeline_name}: started {', '.join(started)} (start_after labels finished)")
            status = pipeline.state.status
            if status != Status.STARTED:
                return dg.SkipReason(f"pipeline {pipeline_name} is {status}, not {Status.STARTED}: nothing to ingest")
            if not pipeline.state.scheduling_enabled:
                return dg.SkipReason(f"pipeline {pipeline_name}: scheduling is off")
            work = tables_with_work(pipeline)
            if not work:
                return dg.SkipReason(
                    f"pipeline {pipeline_name}: no active connector has data left"
                    + (f" (started {', '.join(started)})" if started else "")
                )
            busy = _busy_tables(context, pipeline_name, keys, asset_job.name)
            requests = [
                dg.RunRequest(
                    run_key=work_key(pipeline, table, handles),
                    asset_selection=[keys[table]],
                    tags=pipeline_tags(pipeline_name, table=table),
                )
                for table, handles in work.items()
                if table not in busy
            ]
            if not requests:
                return dg.SkipReason(
                    f"pipeline {pipeline_name}: runs already in progress or queued for {', '.join(sorted(work))}"
                )
            positions = {h.endpoint: h.state.position()[1] for h in pipeline.connectors()}
            return dg.SensorResult(run_requests=requests, cursor=json.dumps({"batch_seq": positions}, sort_keys=True))
        finally:
            pipeline.close()

    return _orchestration
