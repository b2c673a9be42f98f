"""Backups of the state databases to S3 or a folder, the 24-hour rule, and restores (DESIGN §6, issue 14).

Layout
======
A connector's database is stored at ``{org_slug}/datahub/{pipeline_id}/connector/{connector_id}/{file_name}`` and
the pipeline's at ``{org_slug}/datahub/{pipeline_id}/pipeline/{file_name}`` (``file_name``: the local file's name,
``sqlite.db`` / ``pipeline.sqlite``), in the bucket of an :class:`S3Store` or under the directory of a
:class:`FolderStore`. Each backup carries its sha256, the time of its snapshot, the pipeline's name, the kind of
database and the connector's ``table.connector`` (S3 object metadata; a side file ``{file}.meta.json`` in a folder).
Nothing half-written is ever visible at a key: S3 objects appear whole (one ``PutObject``, or above 8 MB a multipart
``upload_file`` whose object appears when it completes), folder copies are written under a temporary name, fsynced
and renamed. Without a ``backup:`` key a
pipeline backs up to the folder ``.connectors-backups/`` beside its state folder (:func:`open_store`).

A backup (:func:`backup_database`) is a consistent snapshot, never a raw copy of a live file:
:func:`connector_core.state.wal_snapshot` freezes the main file at one instant and a ``cp`` child copies it (no
descriptor of a database is ever opened and closed by this process: see that function), then the copy is hashed
and passes ``PRAGMA integrity_check`` while it is fsynced, before it is stored. (DESIGN §6 hashes while copying, in
one pass; the pass here would have to read through a pipe from a child, 2-4x slower than ``cp``'s in-kernel copy,
and hashing the copy, from the page cache, beside the check and the fsync costs no time and hashes what is
stored.)

When
====
:func:`check_backups` applies the 24-hour rule: a database is uploaded when there is no backup at its key or the one
there is older than ``backup.max_age_hours`` (its snapshot time where the listing carries it, the folder store,
else the object's ``LastModified``). It lists the pipeline's prefix once, whatever the number of connectors, and
never raises for a store or database problem: each failure is in its report (the caller decides whether it fails).

Restores
========
:func:`restore_missing` puts back, before anything opens them, the databases that are missing locally and have a
backup at their key: downloaded beside their place, checked (sha256 against the metadata, ``integrity_check``, the
ids it holds against the key), given an event naming the backup and its snapshot time, and linked into place (a
file that appeared meanwhile is never overwritten). A lost pipeline database's id is unknown (it was kept in that
database): the backups of ``{org_slug}/datahub/*/pipeline/`` whose ``pipeline-name`` metadata is the pipeline's
name are candidates, and the newest snapshot wins (a pipeline re-created under a new id leaves its older id's
backups behind; the newest is the one that ran last). The connectors' ids then come from the restored database.
The sink's mark stays the truth: positions in an old backup are caught up from it by the next batch, so nothing
is ingested twice.

:func:`restore_connector` restores a connector from another pipeline's/connector's backup (another org too): the
ids it keeps are rewritten to the current ones in one transaction (:meth:`SQLiteConnectorState.rewrite_ids`), the sink's
mark is moved to the new id by the caller's ``move_mark`` (a sink transaction), and the database is swapped in;
the connector stays Paused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from connector_core.clients import ConnectionClients
from connector_core.pipeline import ConnectorHandle, Pipeline
from connector_core.state import (
    SQLiteConnectorState,
    SQLitePipelineState,
    StateError,
    integrity_problems,
    replace_database,
    stored_ids,
    wal_snapshot,
)
from connector_core.vocabulary import ResponseCode, RunState

#: The folder a pipeline without a ``backup:`` key backs up to, beside its state folder.
DEFAULT_BACKUP_FOLDER = ".connectors-backups"
#: Larger backups go to S3 as multipart uploads (boto3's own threshold).
MULTIPART_BYTES = 8 * 1024 * 1024
#: Bytes per read when a file is hashed.
COPY_CHUNK = 1 << 20
#: Scratch files older than this (left by a killed process) are removed by the next check.
STALE_SCRATCH_SECONDS = 3600
_SIDE_SUFFIX = ".meta.json"
_TEMP_MARK = ".tmp-"


# ------------------------------------------------------------------------------------------------------ keys
def pipeline_prefix(org_slug: str, pipeline_id: str) -> str:
    """``{org_slug}/datahub/{pipeline_id}/``: every backup of one pipeline."""
    return f"{org_slug}/datahub/{pipeline_id}/"


def pipeline_key(org_slug: str, pipeline_id: str, file_name: str = "pipeline.sqlite") -> str:
    """``{org_slug}/datahub/{pipeline_id}/pipeline/{file_name}``."""
    return f"{pipeline_prefix(org_slug, pipeline_id)}pipeline/{file_name}"


def connector_key(org_slug: str, pipeline_id: str, connector_id: str, file_name: str = "sqlite.db") -> str:
    """``{org_slug}/datahub/{pipeline_id}/connector/{connector_id}/{file_name}``."""
    return f"{pipeline_prefix(org_slug, pipeline_id)}connector/{connector_id}/{file_name}"


# ------------------------------------------------------------------------------------------------- objects
def _utc(value: dt.datetime | None = None) -> dt.datetime:
    return (value or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)


@dataclass(frozen=True)
class BackupMeta:
    """What is stored with a backup (S3 metadata ``x-amz-meta-*``, or the folder store's side file)."""

    sha256: str
    snapshot_time: dt.datetime
    pipeline_name: str
    database: str  #: ``pipeline`` or ``connector``
    endpoint: str = ""  #: ``table.connector`` of a connector's database
    bytes: int = 0

    def to_metadata(self) -> dict[str, str]:
        """As S3 user metadata (text values, lower-case names)."""
        return {
            "sha256": self.sha256,
            "snapshot-time": self.snapshot_time.isoformat(),
            "pipeline-name": self.pipeline_name,
            "database": self.database,
            "endpoint": self.endpoint,
            "bytes": str(self.bytes),
        }

    @classmethod
    def from_metadata(cls, values: dict[str, str]) -> BackupMeta | None:
        """From S3 metadata or a side file; ``None`` when it carries no sha256 and snapshot time."""
        try:
            return cls(
                sha256=values["sha256"],
                snapshot_time=_utc(dt.datetime.fromisoformat(values["snapshot-time"])),
                pipeline_name=values.get("pipeline-name", ""),
                database=values.get("database", ""),
                endpoint=values.get("endpoint", ""),
                bytes=int(values.get("bytes") or 0),
            )
        except (KeyError, ValueError, TypeError):
            return None


@dataclass(frozen=True)
class BackupObject:
    """One backup in a store: its key, size, time and (when the store's listing carries it) its metadata."""

    key: str
    size: int
    modified: dt.datetime  #: the snapshot time where known, else when the object was stored
    meta: BackupMeta | None = None

    def age_hours(self, now: dt.datetime) -> float:
        """Hours from the backup's time to ``now``."""
        return (now - self.modified).total_seconds() / 3600


class BackupStoreError(RuntimeError):
    """A store that cannot be listed, read or written (unreachable, access denied, no such bucket, disk full)."""


class BackupError(RuntimeError):
    """A snapshot that could not be taken or failed its integrity check (nothing was stored)."""


class RestoreError(RuntimeError):
    """A restore refused or failed; the message names the key; nothing local changed."""


class BackupStore(Protocol):
    """Where backups live. Every method raises :class:`BackupStoreError` for a problem of the store."""

    description: str  #: e.g. ``s3://bucket`` or ``folder /path``
    needs_fsync: bool  #: whether a file handed to :meth:`put` must be fsynced first (it is renamed into place)

    def list(self, prefix: str) -> dict[str, BackupObject]:
        """Every backup whose key starts with ``prefix`` (one listing: paged, never one request per key)."""
        ...

    def head(self, key: str) -> BackupObject | None:
        """One backup with its metadata; ``None`` when there is none at ``key``."""
        ...

    def put(self, key: str, path: Path, meta: BackupMeta) -> None:
        """Store the finished file ``path`` at ``key`` with ``meta``, visible only once whole; ``path`` is taken
        (moved or deleted)."""
        ...

    def get(self, key: str, destination: Path) -> BackupObject:
        """Download ``key`` to ``destination`` (a new file); the object with its metadata."""
        ...

    def scratch_path(self, key: str) -> Path | None:
        """Where a snapshot bound for ``key`` should be written (``None``: a local scratch folder of the caller)."""
        ...


# ------------------------------------------------------------------------------------------------- stores
def fsync_path(path: Path) -> None:
    """Flush a file or a folder to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raise_unless_missing(error: OSError) -> None:
    """``os.walk``'s error handler: a folder that does not exist holds no backup; any other error is raised."""
    if not isinstance(error, FileNotFoundError):
        raise error


class FolderStore:
    """Backups under a local (or mounted) folder, in the same layout as the bucket; metadata in side files."""

    needs_fsync = True

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.description = f"folder {self.directory}"

    def _path(self, key: str) -> Path:
        return self.directory / key

    def _object(self, path: Path) -> BackupObject | None:
        """The backup at ``path`` (its side file read), ``None`` when there is none."""
        try:
            size = path.stat().st_size
            meta = BackupMeta.from_metadata(json.loads((path.parent / (path.name + _SIDE_SUFFIX)).read_text()))
        except (FileNotFoundError, ValueError):
            return None  # no side file, or one without sha256: not a usable backup (the next check replaces it)
        except OSError as exc:
            raise BackupStoreError(f"{self.description}: cannot read {path}: {exc}") from exc
        if meta is None:
            return None
        key = path.relative_to(self.directory).as_posix()
        return BackupObject(key, size, meta.snapshot_time, meta)

    def list(self, prefix: str) -> dict[str, BackupObject]:
        """Walk the folder of ``prefix`` (side files read; temporary files skipped)."""
        found: dict[str, BackupObject] = {}
        base = prefix.rsplit("/", 1)[0]
        try:
            for folder, _, files in os.walk(self.directory / base, onerror=_raise_unless_missing):
                for name in files:
                    if name.startswith(".") or name.endswith(_SIDE_SUFFIX):
                        continue
                    path = Path(folder) / name
                    if (found_object := self._object(path)) is not None and found_object.key.startswith(prefix):
                        found[found_object.key] = found_object
        except OSError as exc:
            raise BackupStoreError(f"{self.description}: cannot list {prefix}: {exc}") from exc
        return found

    def head(self, key: str) -> BackupObject | None:
        """The backup at ``key`` with its side file."""
        return self._object(self._path(key))

    def scratch_path(self, key: str) -> Path:
        """A temporary name beside the key's file, so that :meth:`put` only renames it."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackupStoreError(f"{self.description}: cannot create {path.parent}: {exc}") from exc
        return path.parent / f".{path.name}{_TEMP_MARK}{uuid.uuid4().hex}"

    def put(self, key: str, path: Path, meta: BackupMeta) -> None:
        """fsync ``path``, rename it to the key, then write the side file the same way (the data file goes first:
        after a crash between the two, the old side file's snapshot time makes the next check upload again)."""
        final = self._path(key)
        side = final.parent / (final.name + _SIDE_SUFFIX)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            if path.parent != final.parent:
                staged = final.parent / f".{final.name}{_TEMP_MARK}{uuid.uuid4().hex}"
                shutil.copyfile(path, staged)
                path.unlink()
                path = staged
            fsync_path(path)
            os.replace(path, final)
            side_temp = final.parent / f".{side.name}{_TEMP_MARK}{uuid.uuid4().hex}"
            with open(side_temp, "w") as handle:
                json.dump(meta.to_metadata(), handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(side_temp, side)
            fsync_path(final.parent)
        except OSError as exc:
            raise BackupStoreError(f"{self.description}: cannot store {key}: {exc}") from exc
        finally:
            path.unlink(missing_ok=True)
        self._sweep(final.parent)

    def get(self, key: str, destination: Path) -> BackupObject:
        """Copy the key's file to ``destination``."""
        found = self.head(key)
        if found is None:
            raise BackupStoreError(f"{self.description}: no backup at {key}")
        try:
            shutil.copyfile(self._path(key), destination)
        except OSError as exc:
            raise BackupStoreError(f"{self.description}: cannot read {key}: {exc}") from exc
        return found

    @staticmethod
    def _sweep(folder: Path) -> None:
        """Remove temporary files a killed process left in ``folder``."""
        limit = time.time() - STALE_SCRATCH_SECONDS
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                if entry.name.startswith(".") and _TEMP_MARK in entry.name and entry.stat().st_mtime < limit:
                    os.unlink(entry.path)


class S3Store:
    """Backups in an S3 bucket, through a boto3 client (from ``ConnectionClients.s3_client``)."""

    needs_fsync = False

    def __init__(self, client: Any, bucket: str):
        self.client = client
        self.bucket = bucket
        self.description = f"s3://{bucket}"

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """Turn any client error into a :class:`BackupStoreError` naming the bucket and the operation."""
        try:
            yield
        except BackupStoreError:
            raise
        except Exception as exc:
            raise BackupStoreError(f"{self.description}: {what}: {exc}") from exc

    def list(self, prefix: str) -> dict[str, BackupObject]:
        """``ListObjectsV2`` of ``prefix``, all pages (1,000 keys each); no metadata (ages are ``LastModified``)."""
        found: dict[str, BackupObject] = {}
        with self._calling(f"cannot list {prefix}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    found[item["Key"]] = BackupObject(item["Key"], int(item["Size"]), _utc(item["LastModified"]))
        return found

    def head(self, key: str) -> BackupObject | None:
        """``HeadObject``: size, metadata, time (the snapshot's where the metadata has it)."""
        with self._calling(f"cannot read {key}"):
            try:
                answer = self.client.head_object(Bucket=self.bucket, Key=key)
            except Exception as exc:
                if _error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                    return None
                raise
        return self._object(key, answer)

    @staticmethod
    def _object(key: str, answer: dict[str, Any]) -> BackupObject:
        meta = BackupMeta.from_metadata(answer.get("Metadata") or {})
        modified = meta.snapshot_time if meta else _utc(answer["LastModified"])
        return BackupObject(key, int(answer["ContentLength"]), modified, meta)

    def scratch_path(self, key: str) -> None:
        """Snapshots for S3 are written to the caller's scratch folder."""
        return None

    def put(self, key: str, path: Path, meta: BackupMeta) -> None:
        """One ``PutObject`` up to :data:`MULTIPART_BYTES`, else ``upload_file`` (a multipart upload: the object
        appears when it completes); with the metadata."""
        metadata = meta.to_metadata()
        try:
            with self._calling(f"cannot upload {key}"):
                if path.stat().st_size <= MULTIPART_BYTES:
                    with open(path, "rb") as body:
                        self.client.put_object(Bucket=self.bucket, Key=key, Body=body, Metadata=metadata)
                else:
                    self.client.upload_file(str(path), self.bucket, key, ExtraArgs={"Metadata": metadata})
        finally:
            path.unlink(missing_ok=True)

    def get(self, key: str, destination: Path) -> BackupObject:
        """``GetObject`` streamed to ``destination``."""
        with self._calling(f"cannot download {key}"), open(destination, "xb") as out:
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
            for chunk in answer["Body"].iter_chunks(COPY_CHUNK):
                out.write(chunk)
        return self._object(key, answer)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return str((response or {}).get("Error", {}).get("Code", ""))


def default_backup_directory(pipeline: Pipeline) -> Path:
    """``.connectors-backups`` beside the state folder."""
    state_dir = getattr(pipeline.store, "state_dir", None) or pipeline.project.resolve_state_dir()
    return state_dir.parent / DEFAULT_BACKUP_FOLDER


def open_store(pipeline: Pipeline, clients: ConnectionClients | None = None) -> BackupStore:
    """The pipeline's store from its ``backup:`` key: a bucket (its client from ``clients.s3_client(connection)``),
    a directory (relative to the project file's folder), or else :func:`default_backup_directory`."""
    backup = pipeline.spec.backup
    if backup.bucket:
        if clients is None:
            raise ValueError(f"pipeline {pipeline.name} backs up to s3://{backup.bucket}: its clients are needed")
        return S3Store(clients.s3_client(backup.connection), backup.bucket)
    if backup.directory:
        directory = Path(backup.directory)
        return FolderStore(directory if directory.is_absolute() else pipeline.base_dir / directory)
    return FolderStore(default_backup_directory(pipeline))


# ------------------------------------------------------------------------------------------------ snapshot
def _file_sha256(path: Path) -> str:
    """sha256 of a file, read in large pieces (hashlib releases the GIL: it runs beside other work)."""
    digest = hashlib.sha256()
    buffer = bytearray(COPY_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """A snapshot copy: its file, size, sha256 and the instant it holds."""

    path: Path
    bytes: int
    sha256: str
    taken_at: dt.datetime


def _copy_main_file(source: Path, size: int, destination: Path) -> None:
    """Copy the main file of a database frozen by :func:`wal_snapshot` to the new file ``destination``, cut to the
    snapshot's ``size``. A ``cp`` child copies it (in the kernel: ``copy_file_range``, or a reflink): the file is
    never opened by this process (see :func:`wal_snapshot`)."""
    done = subprocess.run(["cp", str(source), str(destination)], capture_output=True, text=True, check=False)
    if done.returncode:
        raise BackupError(f"copying {source} failed: {done.stderr.strip() or done.returncode}")
    copied = destination.stat().st_size
    if copied < size:
        raise BackupError(f"copying {source} gave {copied} bytes, the snapshot has {size}")
    if copied > size:
        os.truncate(destination, size)


def take_snapshot(database: Path, destination: Path, sync: bool = False) -> Snapshot:
    """A consistent, checked copy of a live database: the WAL snapshot copied while it is frozen, then, at once on
    the copy, its sha256 and ``integrity_check`` (in threads) and, with ``sync``, its fsync (here: the disk works
    while the CPU hashes and checks). :class:`BackupError` (the copy removed) when the snapshot cannot be taken or
    the copy is not sound."""
    try:
        try:
            with wal_snapshot(database) as size:
                taken_at = _utc()
                _copy_main_file(database, size, destination)
        except StateError as exc:
            raise BackupError(str(exc)) from exc
        with ThreadPoolExecutor(2, thread_name_prefix="backup") as pool:
            digest = pool.submit(_file_sha256, destination)
            checked = pool.submit(integrity_problems, destination)
            if sync:
                fsync_path(destination)
            problems, sha256 = checked.result(), digest.result()
        if problems:
            raise BackupError(f"the snapshot of {database} fails integrity_check: {'; '.join(problems[:5])}")
    except BaseException:
        destination.unlink(missing_ok=True)
        raise
    return Snapshot(destination, size, sha256, taken_at)


def backup_database(
    database: Path, store: BackupStore, key: str, meta: dict[str, str], scratch_dir: Path
) -> BackupMeta:
    """Snapshot ``database`` and store it at ``key`` (``meta``: ``pipeline_name``, ``database``, ``endpoint``);
    the metadata stored. The local database is never changed; a failure raises :class:`BackupError` or
    :class:`BackupStoreError` and leaves no scratch file behind."""
    scratch = store.scratch_path(key)
    if scratch is None:
        scratch_dir.mkdir(parents=True, exist_ok=True)
        scratch = scratch_dir / f".{database.name}{_TEMP_MARK}{uuid.uuid4().hex}"
    try:
        snapshot = take_snapshot(database, scratch, sync=store.needs_fsync)
        stored = BackupMeta(sha256=snapshot.sha256, snapshot_time=snapshot.taken_at, bytes=snapshot.bytes, **meta)
        store.put(key, scratch, stored)
    finally:
        scratch.unlink(missing_ok=True)
    return stored


# --------------------------------------------------------------------------------------------- the check
@dataclass
class _Entry:
    """What a check or a restore did for one database."""

    database: str  #: ``pipeline`` or ``table.connector``
    path: str
    key: str | None = None
    reason: str = ""  #: why it was (not) uploaded / restored
    bytes: int | None = None  #: of the backup at the key
    sha256: str | None = None  #: of the backup at the key
    error: str | None = None  #: what failed or was refused (the store, the backup); the local database is untouched


@dataclass
class DatabaseBackup(_Entry):
    """What a check did for one database (``sha256`` is unknown for an S3 backup left alone: no HEAD is made)."""

    uploaded: bool = False
    age_hours: float | None = None  #: of the backup now at the key (``None``: there is none)


@dataclass
class _Report:
    """What a check or a restore did, one entry per database."""

    pipeline: str
    store: str
    databases: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing failed or was refused."""
        return not self.errors

    @property
    def errors(self) -> list[str]:
        """``database: error`` for each failure."""
        return [f"{d.database}: {d.error}" for d in self.databases if d.error]


@dataclass
class BackupReport(_Report):
    """The result of :func:`check_backups`."""

    databases: list[DatabaseBackup] = field(default_factory=list)
    checked_at: str = ""
    note: str = ""  #: set when the pipeline's state is not in files (PostgreSQL): why nothing is backed up

    @property
    def uploaded(self) -> list[str]:
        """The databases uploaded by this check."""
        return [d.database for d in self.databases if d.uploaded]

    @property
    def response_code(self) -> ResponseCode:
        """``OK``, else ``INTERNAL_ERROR``."""
        return ResponseCode.OK if self.ok else ResponseCode.INTERNAL_ERROR

    @property
    def message(self) -> str:
        """One line: what was uploaded, what failed (or why there is nothing to back up)."""
        if self.note:
            return self.note
        text = f"backups of {self.pipeline} to {self.store}: {len(self.uploaded)} uploaded"
        text += f", {len(self.databases) - len(self.uploaded)} left alone"
        return text + (f"; FAILED: {'; '.join(self.errors)}" if self.errors else "")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: response code, message and every database's entry."""
        return {
            "response_code": str(self.response_code),
            "message": self.message,
            "pipeline": self.pipeline,
            "store": self.store,
            "checked_at": self.checked_at,
            "databases": [asdict(d) for d in self.databases],
        }


@dataclass(frozen=True)
class _Database:
    """One local state database of a pipeline and its key."""

    label: str  #: ``pipeline`` or ``table.connector``
    path: Path
    key: str
    kind: str  #: ``pipeline`` or ``connector``
    handle: ConnectorHandle | None = None

    def meta(self, pipeline: Pipeline) -> dict[str, str]:
        endpoint = self.label if self.handle is not None else ""
        return {"pipeline_name": pipeline.name, "database": self.kind, "endpoint": endpoint}


def _databases(pipeline: Pipeline, pipeline_id: str) -> list[_Database]:
    """The pipeline's database and every connector's that has an id, with their keys (nothing opened)."""
    org = pipeline.spec.org_slug
    path = pipeline.state.path
    found = [_Database("pipeline", path, pipeline_key(org, pipeline_id, path.name), "pipeline")]
    for handle in pipeline.connectors():
        if handle.connector_id is None:
            continue
        local = pipeline.store.connector_path(pipeline.name, handle.connector_id)
        key = connector_key(org, pipeline_id, handle.connector_id, local.name)
        found.append(_Database(handle.endpoint, local, key, "connector", handle))
    return found


def _scratch_dir(pipeline: Pipeline) -> Path:
    """Where snapshots bound for a remote store are written: ``{state_dir}/{pipeline}/.backup-scratch``."""
    return pipeline.store.state_dir / pipeline.name / ".backup-scratch"


def _sweep_scratch(pipeline: Pipeline) -> None:
    folder = _scratch_dir(pipeline)
    if folder.is_dir():
        FolderStore._sweep(folder)


def check_backups(
    pipeline: Pipeline, store: BackupStore, now: dt.datetime | None = None, force: bool = False
) -> BackupReport:
    """The 24-hour rule for every state database of ``pipeline`` that exists: uploaded when ``force``, when there
    is no backup at its key, or when the backup there is older than ``backup.max_age_hours`` at ``now``.

    One listing of the pipeline's prefix serves every database. Nothing is raised for a store or database problem
    (unreachable store, access denied, a failed snapshot): it is the entry's ``error``, the local database is left
    untouched and the next check tries again. Databases that do not exist yet are reported and skipped.
    """
    now = _utc(now)
    max_age = pipeline.spec.backup.max_age_hours
    report = BackupReport(pipeline.name, store.description, checked_at=now.isoformat(timespec="seconds"))
    if not backs_up_files(pipeline):
        report.note = database_backups_note(pipeline)
        return report
    pipeline_id = pipeline.pipeline_id if pipeline.state.open_if_created() else None
    if pipeline_id is None:
        report.databases.append(
            DatabaseBackup("pipeline", str(pipeline.state.path), reason="does not exist yet (nothing to back up)")
        )
        return report
    databases = _databases(pipeline, pipeline_id)
    entries = [DatabaseBackup(d.label, str(d.path), d.key) for d in databases]
    report.databases = entries
    existing = []
    for database, entry in zip(databases, entries, strict=True):
        if database.path.exists():
            existing.append((database, entry))
        else:
            entry.reason = "does not exist yet (nothing to back up)"
    if not existing:
        return report
    try:
        listed = store.list(pipeline_prefix(pipeline.spec.org_slug, pipeline_id))
    except BackupStoreError as exc:
        for _, entry in existing:
            entry.error = pipeline.redact(str(exc))
            entry.reason = "the store could not be listed; not uploaded"
        return report
    _sweep_scratch(pipeline)
    for database, entry in existing:
        found = listed.get(database.key)
        if found is not None:
            entry.age_hours = round(found.age_hours(now), 3)
            entry.bytes = found.size
            entry.sha256 = found.meta.sha256 if found.meta else None
        if force:
            entry.reason = "forced"
        elif found is None:
            entry.reason = "no backup at the key"
        elif found.age_hours(now) > max_age:
            entry.reason = f"the backup is {found.age_hours(now):.1f} h old (max_age_hours {max_age:g})"
        else:
            entry.reason = f"the backup is {found.age_hours(now):.1f} h old, within max_age_hours {max_age:g}"
            continue
        try:
            stored = backup_database(
                database.path, store, database.key, database.meta(pipeline), _scratch_dir(pipeline)
            )
        except Exception as exc:  # reported, never raised: a restart must not fail on a backup
            entry.error = pipeline.redact(f"{type(exc).__name__}: {exc}")
            entry.reason += "; the upload failed (the local database is untouched; the next check retries)"
            continue
        entry.uploaded = True
        entry.bytes, entry.sha256, entry.age_hours = stored.bytes, stored.sha256, 0.0
    return report


def run_backup_check(
    pipeline: Pipeline,
    clients: ConnectionClients | None = None,
    *,
    force: bool = False,
    now: dt.datetime | None = None,
    record: bool = True,
) -> BackupReport:
    """The one call of every place that checks backups (a restart, ``connectors run``, a connector's first batch
    in a Dagster run, the schedule's job, ``connectors backup``): the pipeline's store (:func:`open_store`) and
    :func:`check_backups`. Never raises: a store that cannot be opened is reported like one that cannot be
    reached. With ``record``, a check that uploaded or failed leaves an event ``backup`` in the pipeline database
    (one that did nothing writes nothing). The caller decides whether ``not report.ok`` fails it. A pipeline whose
    state is in PostgreSQL gets a report that says why there is nothing to back up (no store is opened)."""
    if not backs_up_files(pipeline):
        checked_at = _utc(now).isoformat(timespec="seconds")
        return BackupReport(pipeline.name, "(none)", checked_at=checked_at, note=database_backups_note(pipeline))
    try:
        store = open_store(pipeline, clients)
    except Exception as exc:
        report = BackupReport(pipeline.name, "(not opened)", checked_at=_utc(now).isoformat(timespec="seconds"))
        error = pipeline.redact(f"cannot open the backup store: {type(exc).__name__}: {exc}")
        report.databases.append(DatabaseBackup("pipeline", str(pipeline.state.path), error=error))
        return report
    report = check_backups(pipeline, store, now=now, force=force)
    if record and (report.uploaded or report.errors) and pipeline.state.exists:
        source = {"store": report.store, "uploaded": report.uploaded, "errors": report.errors}
        with contextlib.suppress(StateError, sqlite3.Error):  # a read-only state folder: the report says it all
            with pipeline.state.transaction() as conn:
                pipeline.state.add_event(conn, "backup", None, None, report.response_code, report.message, source)
    return report


def run_restore_missing(pipeline: Pipeline, clients: ConnectionClients | None = None) -> RestoreReport:
    """The one call before a procedure or a run writes: the pipeline's store and :func:`restore_missing`. Never
    raises (a store that cannot be opened is the report's error)."""
    try:
        store = open_store(pipeline, clients)
    except Exception as exc:
        report = RestoreReport(pipeline.name, "(not opened)")
        error = pipeline.redact(f"cannot open the backup store: {type(exc).__name__}: {exc}")
        report.databases.append(RestoredDatabase("pipeline", str(pipeline.state.path), error=error))
        return report
    return restore_missing(pipeline, store)


def backs_up_files(pipeline: Pipeline) -> bool:
    """Whether the pipeline's state lives in SQLite files, which the 24-hour rule backs up (PostgreSQL state is
    backed up by the database's own means)."""
    return pipeline.store.kind == "sqlite"


def database_backups_note(pipeline: Pipeline) -> str:
    """What ``connectors backup`` and the schedule answer for a pipeline whose state is in PostgreSQL."""
    return (
        f"pipeline {pipeline.name} keeps its state in PostgreSQL ({pipeline.state.location}): the 24-hour rule backs "
        "up SQLite state files only; back the database up with its own means (pg_dump, base backups with WAL "
        "archiving, your provider's snapshots). Nothing to do here."
    )


def restore_before_write(pipeline: Pipeline, clients: ConnectionClients | None = None) -> RestoreReport | None:
    """The automatic restore of DESIGN §6, called before a procedure or a run reads the state it will change: when
    a state database of the pipeline is missing locally, :func:`run_restore_missing`; ``None`` when nothing is
    missing (no request reaches the store). A backup that exists but is refused (corrupt, unreadable, wrong ids) or
    a store that cannot be asked raises :class:`RestoreError` naming the key: nothing is created in its place, so
    the next attempt can still restore it."""
    if not backs_up_files(pipeline):
        return None  # the database keeps PostgreSQL state: nothing is restored from file backups
    handles = pipeline.connectors()
    missing = not pipeline.state.path.exists() or any(
        h.connector_id is None or not pipeline.store.connector_path(pipeline.name, h.connector_id).exists()
        for h in handles
    )
    if not missing:
        return None
    report = run_restore_missing(pipeline, clients)
    if not report.ok:
        raise RestoreError(
            f"pipeline {pipeline.name}: a missing state database could not be restored from {report.store}: "
            + "; ".join(report.errors)
        )
    return report


def list_backups(pipeline: Pipeline, store: BackupStore, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """The backups of the pipeline's prefix (``connectors backups P``): key, database, bytes, age in hours; one
    listing. Empty while the pipeline database does not exist."""
    now = _utc(now)
    pipeline_id = pipeline.pipeline_id if pipeline.state.open_if_created() else None
    if pipeline_id is None:
        return []
    labels = {d.key: d.label for d in _databases(pipeline, pipeline_id)}
    listed = store.list(pipeline_prefix(pipeline.spec.org_slug, pipeline_id))
    return [
        {
            "key": key,
            "database": labels.get(key, "(not in the project file)"),
            "bytes": found.size,
            "age_hours": round(found.age_hours(now), 3),
            "taken_at": found.modified.isoformat(timespec="seconds"),
        }
        for key, found in sorted(listed.items())
    ]


# ------------------------------------------------------------------------------------------------ restores
@dataclass
class RestoredDatabase(_Entry):
    """What a restore did for one database."""

    restored: bool = False
    snapshot_time: str | None = None
    mark: Any = None  #: what ``move_mark`` answered (a restore onto other ids)


@dataclass
class RestoreReport(_Report):
    """The result of :func:`restore_missing`."""

    databases: list[RestoredDatabase] = field(default_factory=list)

    @property
    def restored(self) -> list[str]:
        """The databases put back."""
        return [d.database for d in self.databases if d.restored]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"pipeline": self.pipeline, "store": self.store, "databases": [asdict(d) for d in self.databases]}


def _fetch_verified(store: BackupStore, key: str, scratch: Path, expected: dict[str, str]) -> BackupObject:
    """Download ``key`` to ``scratch`` and check it: sha256 against its metadata, ``integrity_check``, and the ids it
    holds against ``expected`` (``kind``, ``pipeline_id``, ``connector_id``). :class:`RestoreError` naming the key
    otherwise (``scratch`` removed)."""
    try:
        found = store.get(key, scratch)
        if found.meta is None:
            raise RestoreError(f"backup {key} has no sha256/snapshot-time metadata: it cannot be verified; refused")
        actual = _file_sha256(scratch)
        if actual != found.meta.sha256:
            raise RestoreError(
                f"backup {key} is corrupt: its sha256 is {actual}, its metadata says {found.meta.sha256}; refused"
            )
        problems = integrity_problems(scratch)
        if problems:
            raise RestoreError(f"backup {key} fails integrity_check: {'; '.join(problems[:5])}; refused")
        try:
            ids = stored_ids(scratch)
        except StateError as exc:
            raise RestoreError(f"backup {key} is not a state database: {exc}; refused") from exc
        wrong = {name: ids.get(name) for name, value in expected.items() if ids.get(name) != value}
        if wrong:
            raise RestoreError(f"backup {key} holds {wrong}, expected {expected}; refused")
        return found
    except BackupStoreError as exc:
        scratch.unlink(missing_ok=True)
        raise RestoreError(f"cannot fetch backup {key}: {exc}") from exc
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise


def _restore_scratch(target: Path) -> Path:
    """A temporary name beside ``target`` (same file system: the restore ends with a link)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent / f".{target.name}.restore{_TEMP_MARK}{uuid.uuid4().hex}"


def _describe(found: BackupObject, store: BackupStore) -> str:
    assert found.meta is not None
    return (
        f"restored from backup {found.key} in {store.description}, snapshot taken "
        f"{found.meta.snapshot_time.isoformat(timespec='seconds')} (sha256 {found.meta.sha256})"
    )


def _place(scratch: Path, target: Path) -> bool:
    """Link ``scratch`` into place at ``target`` when no file is there (never overwriting one that appeared
    meanwhile); the stale ``-wal``/``-shm`` of a deleted database go first (SQLite would replay them onto the
    restored file). Whether it was placed."""
    if target.exists():
        return False
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    try:
        os.link(scratch, target)
    except FileExistsError:
        return False
    fsync_path(target.parent)
    return True


def _restore_one(
    store: BackupStore, found: BackupObject, target: Path, entry: RestoredDatabase, expected: dict[str, str]
) -> None:
    """Fetch, verify, record the event in, and place one missing database; fills ``entry``."""
    scratch = _restore_scratch(target)
    try:
        found = _fetch_verified(store, found.key, scratch, expected)
        message = _describe(found, store)
        assert found.meta is not None
        source = {"backup_key": found.key, "snapshot_time": found.meta.snapshot_time.isoformat()}
        if expected["kind"] == "pipeline":
            pipeline_state = SQLitePipelineState(scratch, create=False)
            try:
                with pipeline_state.transaction() as conn:
                    status = pipeline_state.get("status")
                    pipeline_state.add_event(conn, "restore", None, status, ResponseCode.OK, message, source)
            finally:
                pipeline_state.close()
        else:
            connector_state = SQLiteConnectorState(scratch, create=False)
            try:
                connector_state.record_event("restored", message)
            finally:
                connector_state.close()
        entry.restored = _place(scratch, target)
    except (RestoreError, StateError, OSError) as exc:
        entry.error = str(exc)
        entry.reason = "refused; nothing local changed"
        return
    finally:
        scratch.unlink(missing_ok=True)
    entry.snapshot_time = found.meta.snapshot_time.isoformat()
    entry.sha256, entry.bytes = found.meta.sha256, found.size
    entry.reason = message if entry.restored else "a database appeared at its place meanwhile; left alone"


def find_pipeline_backup(
    store: BackupStore, org_slug: str, pipeline_name: str, file_name: str = "pipeline.sqlite"
) -> BackupObject | None:
    """The backup of a pipeline database whose id is unknown: among ``{org_slug}/datahub/*/pipeline/{file_name}``
    (one listing, then a HEAD per candidate where the listing has no metadata), those whose ``pipeline-name``
    metadata is ``pipeline_name``; the newest snapshot wins."""
    pattern = re.compile(rf"{re.escape(org_slug)}/datahub/[^/]+/pipeline/{re.escape(file_name)}")
    best: BackupObject | None = None
    for key, found in store.list(f"{org_slug}/datahub/").items():
        if not pattern.fullmatch(key):
            continue
        if found.meta is None:
            found = store.head(key) or found
        if found.meta is not None and found.meta.pipeline_name == pipeline_name:
            if best is None or found.modified > best.modified:
                best = found
    return best


def restore_missing(pipeline: Pipeline, store: BackupStore) -> RestoreReport:
    """Put back every missing state database of ``pipeline`` that has a backup at its key (see the module doc):
    the pipeline database first (found by name when it is missing), then each connector whose id it keeps.

    No request reaches the store while nothing is missing. A refused backup (corrupt, wrong ids) or a store
    failure is the entry's ``error``, naming the key; nothing local changes for it. Call it before a procedure or
    a run writes (a restored pipeline database's ids are then used, instead of new ones being generated).
    """
    org = pipeline.spec.org_slug
    report = RestoreReport(pipeline.name, store.description)
    path = pipeline.state.path
    if not path.exists():
        entry = RestoredDatabase("pipeline", str(path))
        report.databases.append(entry)
        try:
            found = find_pipeline_backup(store, org, pipeline.name, path.name)
        except BackupStoreError as exc:
            entry.error = pipeline.redact(f"cannot look for a backup of pipeline {pipeline.name}: {exc}")
            return report
        if found is None:
            entry.reason = f"no backup of pipeline {pipeline.name} under {org}/datahub/"
            return report
        entry.key = found.key
        pipeline_id = found.key.split("/")[2]
        _restore_one(store, found, path, entry, {"kind": "pipeline", "pipeline_id": pipeline_id})
        if not pipeline.state.open_if_created():
            return report
    pipeline_id = pipeline.pipeline_id
    if pipeline_id is None:
        return report
    missing = [d for d in _databases(pipeline, pipeline_id)[1:] if not d.path.exists()]
    if not missing:
        return report
    try:
        listed = store.list(pipeline_prefix(org, pipeline_id))
    except BackupStoreError as exc:
        for database in missing:
            report.databases.append(
                RestoredDatabase(database.label, str(database.path), database.key, error=pipeline.redact(str(exc)))
            )
        return report
    for database in missing:
        entry = RestoredDatabase(database.label, str(database.path), database.key)
        report.databases.append(entry)
        found = listed.get(database.key)
        if found is None:
            entry.reason = "no backup at the key"
            continue
        assert database.handle is not None
        expected = {"kind": "connector", "pipeline_id": pipeline_id, "connector_id": str(database.handle.connector_id)}
        _restore_one(store, found, database.path, entry, expected)
    for entry in report.databases:
        entry.error = pipeline.redact(entry.error) if entry.error else None
    return report


#: ``move_mark(old_connector_id, new_connector_id, replace)``: the sink's mark move (see :func:`restore_connector`).
MoveMark = Callable[[str, str, bool], Any]


def restore_connector(
    pipeline: Pipeline,
    store: BackupStore,
    table: str,
    connector: str,
    *,
    from_pipeline_id: str,
    from_connector_id: str,
    move_mark: MoveMark,
    from_org: str | None = None,
    force: bool = False,
) -> RestoredDatabase:
    """Restore connector ``table.connector`` from the backup of another pipeline/connector id (``from_org``:
    another org's, default the pipeline's), ``connectors restore P T C --from-pipeline ID --from-connector ID``.

    The connector must be Paused and stays Paused. Its backup is fetched and verified, every id it keeps is
    rewritten to the current ones in one transaction and checked (:meth:`SQLiteConnectorState.rewrite_ids`), then
    ``move_mark(from_connector_id, connector_id, force)`` moves the sink's mark in one sink transaction (it refuses,
    raising, when the target already has a mark of its own and ``force`` is false; with ``force`` the target's own
    mark is replaced by the old one, if the old id has one), and last the database is swapped in (linked into place,
    or written into the existing database in one transaction). :class:`RestoreError` naming the key when anything
    is refused or fails before the swap: nothing local changed then.
    """
    handle = pipeline.connector(table, connector)
    if handle.state.run_state is not RunState.PAUSED:
        raise RestoreError(
            f"connector {handle.endpoint} is {handle.state.run_state}; pause it first "
            f"(`connectors connector {pipeline.name} {table} {connector} pause`): a restored connector comes back Paused"
        )
    pipeline.ensure_created()
    pipeline_id, connector_id = str(pipeline.pipeline_id), str(handle.connector_id)
    target = handle.state.path
    assert target is not None
    current = handle.state.identity()  # name, type, metadata and tags as this project writes them
    key = connector_key(from_org or pipeline.spec.org_slug, from_pipeline_id, from_connector_id, target.name)
    scratch = _restore_scratch(target)
    expected = {"kind": "connector", "pipeline_id": from_pipeline_id, "connector_id": from_connector_id}
    try:
        found = _fetch_verified(store, key, scratch, expected)
        assert found.meta is not None
        kept = stored_ids(scratch)["type"]
        if kept != current["type"]:
            raise RestoreError(
                f"backup {key} is a {kept} connector, {handle.endpoint} a {current['type']} one: its positions mean "
                "nothing there; refused"
            )
        message = f"{_describe(found, store)}; moved from pipeline {from_pipeline_id} connector {from_connector_id}"
        state = SQLiteConnectorState(scratch, create=False)
        try:
            state.rewrite_ids(pipeline_id, connector_id, current, message)
        finally:
            state.close()
        problems = integrity_problems(scratch)
        if problems:
            raise RestoreError(f"backup {key} after the id rewrite fails integrity_check: {'; '.join(problems[:5])}")
        try:
            mark = move_mark(from_connector_id, connector_id, force) if from_connector_id != connector_id else None
        except Exception as exc:
            raise RestoreError(f"restore of {handle.endpoint} from {key} refused by the sink: {exc}") from exc
        try:
            if not _place(scratch, target):
                replace_database(target, scratch)
        except (StateError, OSError) as exc:
            raise RestoreError(
                f"restore of {handle.endpoint} from {key}: the sink's mark was moved to {connector_id} but the "
                f"database could not be swapped in ({exc}); run the restore again with --force"
            ) from exc
    except StateError as exc:
        raise RestoreError(f"restore of {handle.endpoint} from {key} failed: {exc}; nothing changed") from exc
    finally:
        scratch.unlink(missing_ok=True)
    handle.state.open_if_created()
    return RestoredDatabase(
        handle.endpoint,
        str(target),
        key,
        restored=True,
        reason=message,
        snapshot_time=found.meta.snapshot_time.isoformat(),
        sha256=found.meta.sha256,
        bytes=found.size,
        mark=mark,
    )
