"""Backups of a pipeline's state databases as procedures (DESIGN §6): ``backup`` (the 24-hour rule, or every
database with ``force``) and ``restore`` (a connector from another pipeline's/connector's backup, onto its own
ids). The command line (``connectors backup | restore``) and the Dagster jobs (``{p}__backup``, ``{p}__restore``)
call these same methods."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from connector_core.backups import (
    RestoreError,
    backs_up_files,
    connector_key,
    database_backups_note,
    open_store,
    restore_connector,
    run_backup_check,
)
from connector_core.lifecycle.engine import ProcedureEngine, Response
from connector_core.sinks import open_sink
from connector_core.vocabulary import ResponseCode


@dataclass(frozen=True)
class RestoreSource:
    """The connector whose backup a restore takes: its pipeline's and its own id, and its org (``None``: the
    pipeline's own ``org_slug``)."""

    pipeline_id: str
    connector_id: str
    org: str | None = None


class BackupProcedures(ProcedureEngine):
    """``backup`` and ``restore``."""

    def backup(self, force: bool = False) -> Response:
        """The 24-hour check (``force``: upload every database) as a response: ``OK``, or ``INTERNAL_ERROR`` when an
        upload failed; its data is the report (store, and per database key, bytes, sha256, age, uploaded, reason)."""
        report = run_backup_check(self.pipeline, self.clients, force=force).as_dict()
        return Response(report.pop("response_code"), report.pop("message"), report).redacted(self.pipeline.redact)

    def restore(self, table: str, connector: str, source: RestoreSource, force: bool = False) -> Response:
        """Restore ``table.connector`` from the backup of ``source`` (``restore_connector``), its mark moved by the
        pipeline's sink (``force``: replacing the connector's own), under the pipeline's procedure lock. A refused or
        failed restore answers ``INTERNAL_ERROR`` with the core's message and the key it looked at; an unknown
        connector ``CONNECTOR_STATUS_NOT_FOUND``."""
        pipeline = self.pipeline
        try:
            pipeline.connector(table, connector)
        except LookupError as exc:
            return Response(ResponseCode.CONNECTOR_STATUS_NOT_FOUND, f"pipeline {pipeline.name}: {exc}")
        if not backs_up_files(pipeline):
            return Response(ResponseCode.INTERNAL_ERROR, f"restore refused: {database_backups_note(pipeline)}")
        clients = self._require_clients()
        key = connector_key(source.org or pipeline.spec.org_slug, source.pipeline_id, source.connector_id)
        sink = open_sink(pipeline, clients)
        try:
            with pipeline.state.procedure_lock(self.lock_timeout_seconds):
                restored = restore_connector(
                    pipeline,
                    open_store(pipeline, clients),
                    table,
                    connector,
                    from_pipeline_id=source.pipeline_id,
                    from_connector_id=source.connector_id,
                    from_org=source.org,
                    force=force,
                    move_mark=sink.move_mark,
                )
        except RestoreError as exc:
            message = str(exc) if key in str(exc) else f"{exc} (backup {key})"
            return Response(ResponseCode.INTERNAL_ERROR, pipeline.redact(f"restore refused: {message}"), {"key": key})
        finally:
            getattr(sink, "close", lambda: None)()
        return Response(ResponseCode.OK, str(restored.reason), {"key": key, "restored": asdict(restored)})
