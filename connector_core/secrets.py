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
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Keys that hold secrets whatever their spelling; any key containing one of :data:`SECRET_WORDS` does too.
SECRET_KEYS = frozenset({"password", "dsn", "aws_secret_access_key", "sasl.password", "ssl.key.password", "token"})
SECRET_WORDS = ("password", "secret", "token", "credential", "private", "authorization", "api_key", "apikey")
MASK = "********"
#: Secret values shorter than this are not redacted from texts (they would blank out ordinary words).
MIN_REDACTED_CHARS = 4
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


def url_credentials(value: Any) -> bool:
    """Whether ``value`` is a URL carrying credentials (``scheme://user:password@host``): a secret too."""
    if not isinstance(value, str) or "@" not in value or "://" not in value:
        return False
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        return True  # unparsable, with an '@' after a scheme: treat it as credentials
    return parts.password is not None


def literal_secret_keys(values: Mapping[str, Any]) -> list[str]:
    """The keys of ``values`` that hold a secret given as a value instead of a reference (sorted): a secret key
    with a value, or any key whose value is a URL with credentials."""
    return sorted(
        key
        for key, value in values.items()
        if not is_env_reference(value) and (is_secret_key(key) or url_credentials(value))
    )


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
    if url_credentials(value):
        return _URL_PASSWORD.sub(r"\1" + MASK + "@", value)
    return value


_URL_PASSWORD = re.compile(r"(://[^/@:]*:)[^@]*@")
_CONNINFO_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def secret_forms(value: str) -> set[str]:
    """Every way a secret value may show up in a driver's message: the value itself, percent-decoded, and the
    credential parts of a URL or libpq DSN in it (``user:password`` and the password, raw and percent-decoded)."""
    forms = {value, urllib.parse.unquote(value)}
    try:
        parts = urllib.parse.urlsplit(value)
        password = parts.password
    except ValueError:
        password = None
    if password is None and "@" in value and "://" in value:  # a URL urllib refuses: take what is before '@'
        userinfo = value.split("://", 1)[1].rsplit("@", 1)[0]
        password = userinfo.split(":", 1)[1] if ":" in userinfo else None
    if password:
        forms |= {password, urllib.parse.unquote(password)}
    for quoted in _CONNINFO_PASSWORD.findall(value):
        password = quoted[1:-1].replace("\\'", "'").replace("\\\\", "\\") if quoted.startswith("'") else quoted
        forms |= {password, urllib.parse.unquote(password)}
    return {form for form in forms if len(form) >= MIN_REDACTED_CHARS}


def resolved_secrets(config: Any) -> list[str]:
    """The values of every ``{env: NAME}`` reference in ``config`` (a model dump, nested mappings and lists) whose
    variable is set."""
    if isinstance(config, EnvSecret):
        config = {"env": config.env}
    if isinstance(config, Mapping):
        if is_env_reference(config):
            value = os.environ.get(str(config["env"]))
            return [value] if value else []
        return [secret for item in config.values() for secret in resolved_secrets(item)]
    if isinstance(config, list | tuple):
        return [secret for item in config for secret in resolved_secrets(item)]
    return []


class Redactor:
    """Replaces every form of the given secret values (see :func:`secret_forms`) with ``********`` in a text: applied
    to every message before it is printed, stored, logged or attached (driver error texts may quote a password)."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.forms = frozenset(form for secret in secrets if secret for form in secret_forms(secret))
        ordered = sorted(self.forms, key=len, reverse=True)  # the longest form first: a DSN before its password
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        """``text`` without any secret."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def with_secrets(self, secrets: Iterable[str]) -> Redactor:
        """This redactor extended by more secret values (e.g. the new settings an update tests)."""
        redactor = Redactor()
        redactor.forms = self.forms | Redactor(secrets).forms
        ordered = sorted(redactor.forms, key=len, reverse=True)
        redactor._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        return redactor


#: Variables a child program (``command`` transport or processor) inherits; everything else it gets is named in
#: the connector's ``env`` (secrets as ``{env: NAME}``), so no other secret of the process reaches it.
CHILD_ENVIRONMENT = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "TERM",
    "PYTHONPATH", "VIRTUAL_ENV", "SYSTEMROOT",
)  # fmt: skip


def child_environment(configured: Mapping[str, Any]) -> dict[str, str]:
    """The environment of a child program: :data:`CHILD_ENVIRONMENT` and ``LC_*`` from this process, then the
    variables ``configured`` names (values, or ``{env: NAME}`` read now)."""
    inherited = {k: v for k, v in os.environ.items() if k in CHILD_ENVIRONMENT or k.startswith("LC_")}
    for name, value in configured.items():
        inherited[name] = EnvSecret.model_validate(value).resolve() if is_env_reference(value) else str(value)
    return inherited
