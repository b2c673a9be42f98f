"""The one secret rule of the project, used by the project file, the lifecycle and every front end.

A secret (a password, a token, a DSN, a key) is only ever written as a reference to an environment variable:
``{env: NAME}`` in the project file, ``env:NAME`` where a user types a value (``connectors ... --set``, the Dagster
Launchpad). Only the variable's *name* is stored, printed, logged or backed up; the value is read when a
connection is made. :func:`literal_secret_keys` finds values that break the rule, :func:`refusal` says how to give
them, :func:`mask_secrets` hides whatever reaches an output.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Keys that hold secrets whatever their spelling; any key containing one of :data:`SECRET_WORDS` does too.
SECRET_KEYS = frozenset({"password", "dsn", "aws_secret_access_key", "sasl.password", "ssl.key.password", "token"})
SECRET_WORDS = ("password", "secret", "token", "credential", "private")
MASK = "********"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SecretNotSetError(RuntimeError):
    """A ``{env: NAME}`` secret whose variable is not set."""


class EnvSecret(BaseModel):
    """A secret written as ``{env: NAME}``: only the variable's name is ever stored or printed."""

    model_config = ConfigDict(extra="forbid")

    env: str = Field(pattern=ENV_NAME.pattern, description="Environment variable holding the value.")

    def resolve(self) -> str:
        """Read the value from the environment at run time."""
        try:
            return os.environ[self.env]
        except KeyError:
            raise SecretNotSetError(f"environment variable {self.env} is not set") from None

    def __str__(self) -> str:
        return f"{{env: {self.env}}}"


def is_secret_key(key: str) -> bool:
    """Whether a configuration key holds a secret (only ``{env: NAME}`` references are accepted for it)."""
    lowered = key.lower()
    return lowered in SECRET_KEYS or any(word in lowered for word in SECRET_WORDS)


def is_env_reference(value: Any) -> bool:
    """Whether ``value`` is a secret reference: an :class:`EnvSecret` or its dump ``{"env": NAME}``."""
    return isinstance(value, EnvSecret) or (isinstance(value, Mapping) and set(value) == {"env"})


def literal_secret_keys(values: Mapping[str, Any]) -> list[str]:
    """The keys of ``values`` that hold a secret given as a value instead of a reference (sorted)."""
    return sorted(key for key, value in values.items() if is_secret_key(key) and not is_env_reference(value))


def refusal(keys: Iterable[str]) -> str:
    """Why secrets given as values are refused, and how to give them (the same words on every front end)."""
    names = ", ".join(keys)
    example = next(iter(keys), "KEY")
    return (
        f"Fields {names} hold secrets: give each as a reference to an environment variable, never as a value: "
        f"env:NAME on the command line (--set {example}=env:NAME) and in the Launchpad ({example}: env:NAME), "
        "{env: NAME} in connectors.yaml; then set the variable NAME where connectors and Dagster run. "
        "Nothing was stored."
    )


def mask_secrets(value: Any, key: str = "") -> Any:
    """A copy of a config with secret values replaced by ``********`` (a reference stays its variable's name)."""
    if isinstance(value, EnvSecret):
        return str(value)
    if isinstance(value, Mapping):
        if set(value) == {"env"}:
            return f"{{env: {value['env']}}}"
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_secrets(v, key) for v in value]
    if is_secret_key(key):
        return MASK
    return value
