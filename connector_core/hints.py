"""The way out of a refusal: the ``connectors`` command that fixes it, written once for every message.

Every non-OK answer (a procedure refused in the wrong status, a pipeline that is not STARTED, a connector given up)
ends with the command that gets the user past it. The Dagster jobs answer the same texts (their Launchpad forms
carry the same names: ``confirm_prerequisites`` is ``--confirm-prerequisites``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from connector_core.vocabulary import ConfigurationStatus, ResponseCode, Status

#: The wizard step that moves a pipeline on from each configuration status.
_NEXT_WIZARD_STEP = {
    ConfigurationStatus.INSTALLED: "prerequisites --all --complete",
    ConfigurationStatus.PREREQUISITES_DONE: "configure",
    ConfigurationStatus.CONFIGURED: "connect",
    ConfigurationStatus.CONNECTED: "finalize",
}


def setup_command(pipeline: str, prerequisites_open: bool = False) -> str:
    """``connectors setup P`` (with ``--confirm-prerequisites`` when prerequisites are still open)."""
    return f"connectors setup {pipeline}" + (" --confirm-prerequisites" if prerequisites_open else "")


def connector_start_command(pipeline: str, table: str, connector: str) -> str:
    """``connectors connector P T C start``: starts a connector again, clearing its fatal error."""
    return f"connectors connector {pipeline} {table} {connector} start"


def status_way_out(
    pipeline: str, current: str | None, wanted: Sequence[str] = (Status.STARTED,), prerequisites_open: bool = False
) -> str:
    """What to run when a pipeline is ``current`` and something needs one of the ``wanted`` statuses: a sentence
    naming the command ("" when no command leads there)."""
    wanted = [str(status) for status in wanted]
    if current == Status.CONFIGURING:
        flag = " (--confirm-prerequisites confirms its prerequisites are met)" if prerequisites_open else ""
        return f"Run `{setup_command(pipeline, prerequisites_open)}` to set it up first{flag}."
    if current in (Status.ERROR, Status.STARTING, Status.PAUSING):
        return f"Run `connectors pipeline {pipeline} recover --to STARTED|PAUSED` to leave {current}."
    if current in (Status.STARTED, Status.PAUSED) and Status.ERROR in wanted:
        return f"There is nothing to recover: it is {current} (`connectors pipeline {pipeline} status` shows it)."
    if current == Status.PAUSED and Status.PAUSING in wanted:
        return f"It is PAUSED already; `connectors pipeline {pipeline} resume` starts it again."
    if current == Status.PAUSED and Status.STARTED in wanted:
        return f"Run `connectors pipeline {pipeline} resume` first."
    if current == Status.STARTED and Status.STARTING in wanted:
        return f"It is STARTED already; `connectors pipeline {pipeline} pause` stops it."
    if current == Status.STARTED and Status.PAUSED in wanted:
        return f"Run `connectors pipeline {pipeline} pause` first."
    if current in (Status.STARTED, Status.PAUSED) and wanted == [Status.CONFIGURING]:
        return f"The pipeline is set up already (`connectors pipeline {pipeline} status` shows it); nothing to redo."
    return ""


def configuration_way_out(pipeline: str, current: str | None, wanted: Sequence[str]) -> str:
    """What to run when the wizard is at ``current`` and a step needs one of ``wanted``: the next wizard step, or
    ``reset`` to go back (a sentence; "" when nothing leads there)."""
    if current == ConfigurationStatus.FINALIZED:
        return (
            f"The wizard has finished (FINALIZED); nothing to redo (`connectors pipeline {pipeline} status` shows it)."
        )
    step = _NEXT_WIZARD_STEP.get(current)  # type: ignore[call-overload]
    if step is None:
        return ""
    order = list(ConfigurationStatus)
    if wanted and all(order.index(ConfigurationStatus(w)) < order.index(ConfigurationStatus(current)) for w in wanted):
        return f"Run `connectors wizard {pipeline} reset` to start the wizard again."
    return f"Run `connectors wizard {pipeline} {step}` next (or `{setup_command(pipeline)}` for every step)."


def unknown_key_message(key: str, allowed: Sequence[str] | None) -> str:
    """The refusal of an unknown ``key`` of the project file: the nearest of the ``allowed`` keys when one is close
    (``unknown key 'delimter'; did you mean 'delimiter'?``), else the allowed keys (``None``: not known)."""
    close = difflib.get_close_matches(key, list(allowed or ()), n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    known = "" if allowed is None else f" (allowed: {', '.join(allowed) or 'none'})"
    return f"unknown key {key!r}; remove it or check its spelling{known}"


def with_way_out(message: str, way_out: str) -> str:
    """``message`` followed by ``way_out`` (when there is one)."""
    return f"{message} {way_out}" if way_out else message


#: What each response code means and what fixes it (``docs/lifecycle.md`` shows this table).
RESPONSE_CODE_FIXES: dict[ResponseCode, tuple[str, str]] = {
    ResponseCode.OK: ("The procedure did what it was asked.", "Nothing."),
    ResponseCode.INVALID_CONNECTOR_STATUS: (
        "The pipeline's status does not allow the procedure (the message names the expected and current ones).",
        "The command the message names: `connectors setup P` while CONFIGURING (with `--confirm-prerequisites` "
        "when prerequisites are open), `connectors pipeline P resume` when PAUSED, `connectors pipeline P pause` "
        "before an update, `connectors pipeline P recover --to STARTED|PAUSED` in ERROR or a stuck "
        "STARTING/PAUSING.",
    ),
    ResponseCode.INVALID_CONNECTOR_CONFIGURATION_STATUS: (
        "The wizard is not at a step that allows this one.",
        "The next wizard step the message names (`connectors wizard P configure`, `connect`, `finalize`), or "
        "`connectors setup P` for every step; `connectors wizard P reset` to start again.",
    ),
    ResponseCode.CONNECTOR_STATUS_NOT_FOUND: (
        "No state record, or no such table or connector (the message lists what exists).",
        "Check the names (`connectors pipeline P status`); a pipeline gets its record at its first procedure.",
    ),
    ResponseCode.REQUIRED_PRIVILEGES_MISSING: (
        "This process cannot write the state database the message names.",
        "Run as the user that owns the state folder, or give it write access.",
    ),
    ResponseCode.ROLLBACK_CODE: (
        "The procedure's callback failed or asked to roll back; the status was put back.",
        "Fix the cause in the message (often the `<procedure>_callback` hook) and run the procedure again.",
    ),
    ResponseCode.INTERNAL_ERROR: (
        "A check, a hook or a state database failed (the message names it and the cause).",
        "Fix the cause named; a refused backup names its key (`connectors backups P` lists them).",
    ),
    ResponseCode.UNKNOWN_ERROR_CODE: (
        "A callback failed and putting the status back failed too: the pipeline is in ERROR.",
        "`connectors pipeline P recover --to STARTED|PAUSED`; `connectors run P --resume` recovers it to STARTED "
        "(printing the cause recorded) and ingests.",
    ),
    ResponseCode.INVALID_NEW_CONNECTOR_STATUS: (
        "`recover --to` names a status other than STARTED or PAUSED.",
        "`connectors pipeline P recover --to STARTED` (or `PAUSED`).",
    ),
    ResponseCode.PREREQUISITE_NOT_FOUND: (
        "`--done ID` names no prerequisite of the pipeline (the message lists them).",
        "`connectors wizard P prerequisites` lists the ids; use one of them.",
    ),
    ResponseCode.PREREQUISITES_INCOMPLETE: (
        "Completing the prerequisites (or `setup`) while some are open.",
        "`connectors wizard P prerequisites --done ID`, or `connectors setup P --confirm-prerequisites` once "
        "they are all met.",
    ),
    ResponseCode.CONNECTOR_CONFIGURATION_PARSING_ERROR: (
        "A `--set` field the sink or connection does not take, or a literal secret.",
        "Use the fields the message lists; give secrets as `env:NAME`.",
    ),
    ResponseCode.CONNECTION_FAILED: (
        "A connection or the sink could not be reached, or the sink tables not created.",
        "Fix what the driver's cause in the message says (the connection in the project file, its secret's "
        "variable, the server), then run the step again; once set up, `connectors pipeline P update-connection "
        "NAME --set ...` while PAUSED.",
    ),
    ResponseCode.INVALID_IDENTIFIER: (
        "A database, schema or warehouse name that is not an identifier.",
        "Use letters, digits, `_` and `$`, starting with a letter or `_`.",
    ),
    ResponseCode.WAREHOUSE_ALREADY_USED: (
        "`update-warehouse` names the warehouse already in use.",
        "Nothing to do, or name another warehouse.",
    ),
    ResponseCode.INACCESSIBLE_WAREHOUSE: (
        "The sink's role cannot use the warehouse `update-warehouse` names.",
        "Grant `USAGE` on it to the role, or name another warehouse.",
    ),
    ResponseCode.CONNECTOR_FATAL_ERROR: (
        "`connectors run`: a connector it ingested was given up after failed reads in a row.",
        "Fix the cause in the message, then `connectors connector P T C start` retries it.",
    ),
}


def response_codes_markdown() -> str:
    """The table of response codes, what each means and what fixes it (``docs/lifecycle.md``)."""
    rows = ["| code | meaning | what fixes it |", "|---|---|---|"]
    rows += [
        f"| `{code}` | {meaning} | {fix.replace('|', chr(92) + '|')} |"
        for code, (meaning, fix) in RESPONSE_CODE_FIXES.items()
    ]
    return "\n".join(rows) + "\n"
