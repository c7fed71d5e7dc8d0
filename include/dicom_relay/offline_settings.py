"""The settings of the offline commands (``dicom-relay deidentify`` and ``dicom-relay verify``), read without pydantic.

:class:`dicom_relay.config.Settings` (pydantic-settings) costs 0.15-0.2 CPU-s to import and build: about as much as
``dicom-relay deidentify`` spends de-identifying and verifying 200 CT instances. The offline commands need four
settings, read here from the same environment variables by the same rules as ``Settings.from_env``:

* a variable set to the empty string counts as unset (``env_ignore_empty``), names are case-sensitive;
* ``RELAY_SECRET_KEY`` (a secret: hidden in ``repr``), ``RELAY_IDENTIFIER_ID_SOURCE`` (default ``MRN``);
* ``RELAY_DEID_OPTIONS``: a JSON object, ``null`` for none (the same two errors as Settings: not JSON, not an
  object);
* ``RELAY_PIXEL_POLICY``: ``clean`` (default), ``all-text`` or ``hold``, spaces and case ignored.

The other settings (database, destinations, Airflow) are not read, so a wrong value there does not stop an
offline command that never uses it. ``tests/unit/core/test_offline_settings.py`` compares this reader with
``Settings.from_env`` (values, defaults, errors) so that the two cannot drift apart.

Also here, because both readers use them and this module must not import pydantic: :class:`ConfigError` and
:func:`is_placeholder` (``dicom_relay.config`` re-exports them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Mapping


class ConfigError(ValueError):
    """A setting is missing or does not parse; the message names the setting, never its secret value."""


#: Values shipped as placeholders (``.env``, docs, examples) or commonly left in: a secret equal to one of them,
#: or starting with ``change-me``, protects nothing.
PLACEHOLDERS = frozenset({
    "change-me", "changeme", "change_me", "change-me-to-a-long-random-string", "secret", "password", "passwd",
    "token", "placeholder", "example", "default", "todo", "xxx", "none", "null", "relay", "admin", "orthanc",
    "airflow",
})


def is_placeholder(value: str) -> bool:
    """Whether a secret is empty or a known placeholder (compared without case, spaces or angle brackets)."""
    word = value.strip().strip("<>").strip().lower()
    return not word or word in PLACEHOLDERS or word.replace("_", "-").startswith(("change-me", "changeme"))


class Secret:
    """A secret text: ``get_secret_value()`` gives it, ``repr`` and ``str`` do not (like pydantic's SecretStr)."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__


#: The policies of ``RELAY_PIXEL_POLICY`` (``Settings.pixel_policy``; dicom_relay.deid.pixels.policy.POLICIES).
PIXEL_POLICIES = ("clean", "all-text", "hold")


@dataclass(frozen=True)
class OfflineSettings:
    """What ``dicom-relay deidentify`` and ``verify`` read of the deployment's settings (names as in Settings)."""

    secret_key: Secret = field(default_factory=lambda: Secret(""))
    identifier_id_source: str = "MRN"
    deid_options: dict = field(default_factory=dict)
    pixel_policy: str = "clean"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "OfflineSettings":
        """Read the four settings from an environment mapping (``os.environ`` by default)."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value else None  # empty: unset, the default applies (env_ignore_empty)

        problems = []
        options: dict = {}
        raw = get("RELAY_DEID_OPTIONS")
        if raw is not None:
            try:
                options = json.loads(raw)
            except ValueError:
                raise ConfigError('RELAY_DEID_OPTIONS must be a JSON object, e.g. {"retain_safe_private": true}') from None
            if options is None:
                options = {}  # JSON null: unset, as pydantic-settings reads it
            elif not isinstance(options, dict):
                problems.append("RELAY_DEID_OPTIONS: Input should be a valid dictionary")
        policy = get("RELAY_PIXEL_POLICY")
        policy = "clean" if policy is None else policy.strip().lower()
        if policy not in PIXEL_POLICIES:
            problems.append("RELAY_PIXEL_POLICY: Input should be 'clean', 'all-text' or 'hold'")
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(
            secret_key=Secret(get("RELAY_SECRET_KEY") or ""),
            identifier_id_source=get("RELAY_IDENTIFIER_ID_SOURCE") or "MRN",
            deid_options=options,
            pixel_policy=policy,
        )
