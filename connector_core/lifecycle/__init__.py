"""Lifecycle procedures of a pipeline and of its connectors (DESIGN §3, §4).

Modules: ``engine`` (responses, hooks, the phases every procedure runs), ``wizard`` (prerequisites, configure,
connect, finalize, reset, setup), ``running`` (status, pause, resume, recover, start/pause a connector) and
``updates`` (update_connection, update_warehouse) and ``backups`` (backup, restore). :class:`Lifecycle` is all of them.

Every procedure answers a :class:`Response`; ``Response.as_dict()`` is the JSON object users see:
``{"response_code": "OK", "message": ...}`` or an error code with a message. A procedure runs these phases in
order, under a per-pipeline lock so that two processes racing on one pipeline run one after the other:

1. privileges validation: the state database is writable (``REQUIRED_PRIVILEGES_MISSING``);
2. status validation: ``status`` and ``configurationStatus`` allow the procedure (cannot be replaced);
3. state validation: the procedure's own checks (fields allowed, connections reachable...), then the
   replaceable ``<procedure>_validator`` hook;
4. intermediate status (STARTING/PAUSING, for resume and pause), committed with its event;
5. internal callback: the replaceable ``<procedure>_callback`` hook;
6. scheduling switch (the orchestration sensor stops or starts launching runs) and
7. final status — 6 and 7 commit in one transaction together with any configuration the step stores.

A callback that answers ``ROLLBACK_CODE`` (or any other non-OK code) or raises puts the status back and the
answer is ``ROLLBACK_CODE`` (or its own code) with its message. When putting the status back fails too, the
pipeline goes to ERROR and the answer is ``UNKNOWN_ERROR_CODE``, naming ``recover`` as the way out.
"""

from __future__ import annotations

from connector_core.lifecycle.backups import BackupProcedures, RestoreSource
from connector_core.lifecycle.engine import Hook, HookContext, Response, run_procedure
from connector_core.lifecycle.running import RunningProcedures
from connector_core.lifecycle.updates import UpdateProcedures
from connector_core.lifecycle.wizard import WizardProcedures

__all__ = ["Hook", "HookContext", "Lifecycle", "Response", "RestoreSource", "run_procedure"]


class Lifecycle(WizardProcedures, RunningProcedures, UpdateProcedures, BackupProcedures):
    """The procedures of one pipeline: ``Lifecycle(pipeline, clients=None, hooks=None)``.

    ``clients`` reach the pipeline's connections (needed by connect, finalize and the updates); ``hooks`` maps
    ``<procedure>_validator`` / ``<procedure>_callback`` to callables and wins over the project file's ``hooks``.
    """
