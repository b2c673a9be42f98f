"""The typed vocabulary of DESIGN §1/§3/§4: statuses, configuration statuses, connector states, response codes.

Every module compares and stores these members, never bare strings. They are ``StrEnum``s, so a member is equal to
its text (``Status.STARTED == "STARTED"``), is stored in the state databases as that text and prints as it in JSON.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A pipeline's lifecycle status."""

    CONFIGURING = "CONFIGURING"
    STARTING = "STARTING"
    STARTED = "STARTED"
    PAUSING = "PAUSING"
    PAUSED = "PAUSED"
    ERROR = "ERROR"


class ConfigurationStatus(StrEnum):
    """How far the setup wizard has come."""

    INSTALLED = "INSTALLED"
    PREREQUISITES_DONE = "PREREQUISITES_DONE"
    CONFIGURED = "CONFIGURED"
    CONNECTED = "CONNECTED"
    FINALIZED = "FINALIZED"


#: Wizard steps may run in these configuration statuses (everything before FINALIZED).
WIZARD_STEPS_BEFORE_FINAL = (
    ConfigurationStatus.INSTALLED,
    ConfigurationStatus.PREREQUISITES_DONE,
    ConfigurationStatus.CONFIGURED,
    ConfigurationStatus.CONNECTED,
)

#: The statuses ``recover`` may move a pipeline to.
RECOVER_TARGETS = (Status.STARTED, Status.PAUSED)


class RunState(StrEnum):
    """A connector's own runtime state."""

    RUNNING = "Running"
    PAUSED = "Paused"


class ResponseCode(StrEnum):
    """The ``response_code`` of every procedure's answer."""

    OK = "OK"
    INVALID_CONNECTOR_STATUS = "INVALID_CONNECTOR_STATUS"
    INVALID_CONNECTOR_CONFIGURATION_STATUS = "INVALID_CONNECTOR_CONFIGURATION_STATUS"
    CONNECTOR_STATUS_NOT_FOUND = "CONNECTOR_STATUS_NOT_FOUND"
    REQUIRED_PRIVILEGES_MISSING = "REQUIRED_PRIVILEGES_MISSING"
    ROLLBACK_CODE = "ROLLBACK_CODE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    UNKNOWN_ERROR_CODE = "UNKNOWN_ERROR_CODE"
    INVALID_NEW_CONNECTOR_STATUS = "INVALID_NEW_CONNECTOR_STATUS"
    PREREQUISITE_NOT_FOUND = "PREREQUISITE_NOT_FOUND"
    PREREQUISITES_INCOMPLETE = "PREREQUISITES_INCOMPLETE"
    CONNECTOR_CONFIGURATION_PARSING_ERROR = "CONNECTOR_CONFIGURATION_PARSING_ERROR"
    CONNECTION_FAILED = "CONNECTION_FAILED"
    INVALID_IDENTIFIER = "INVALID_IDENTIFIER"
    WAREHOUSE_ALREADY_USED = "WAREHOUSE_ALREADY_USED"
    INACCESSIBLE_WAREHOUSE = "INACCESSIBLE_WAREHOUSE"
    #: ``connectors run``: a connector this run ingested ended it with a fatal error.
    CONNECTOR_FATAL_ERROR = "CONNECTOR_FATAL_ERROR"
