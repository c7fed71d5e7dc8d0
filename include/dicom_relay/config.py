"""Every setting of dicom-relay: its name, its default, and where it comes from.

Settings are read from the process environment (``.env`` is loaded into the environment by ``make run``,
by docker compose and by the Airflow components). The names of the switches inherited from sendit are kept
(``DEIDENTIFY_RESTFUL``, ``SEND_TO_ORTHANC``, ``SEND_TO_GOOGLE``) so that existing deployments read naturally;
everything new is prefixed ``RELAY_``, ``ORTHANC_`` or ``GCS_``.

Secrets (``RELAY_SECRET_KEY``, ``ORTHANC_PASSWORD``, ``RELAY_IDENTIFIER_TOKEN``) are never logged: ``Settings``
hides them from ``repr``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A setting is missing or does not parse; the message names the setting, never its secret value."""


def parse_bool(name: str, raw: str | None, default: bool) -> bool:
    # An empty value means "not set": a blank line in .env must not switch de-identification off.
    if raw is None or raw.strip() == "":
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _secret(**kw):
    return field(repr=False, **kw)


@dataclass(frozen=True)
class Settings:
    # Folders. The inbox is watched; the work area holds claimed batches (originals, staging, quarantine).
    inbox: Path = Path("/data/inbox")
    work_dir: Path = Path("/data/relay")
    # Seconds a finished folder must be quiet (no file changed) before it is claimed: guards against a sender
    # that renames before it has finished writing.
    stable_seconds: float = 2.0
    poll_seconds: float = 2.0

    # The relay's own status tables (not Airflow's metadata database).
    db_url: str = "postgresql://relay@127.0.0.1:5432/relay"

    # Switches inherited from sendit.
    deidentify: bool = True  # DEIDENTIFY_RESTFUL
    send_orthanc: bool = True  # SEND_TO_ORTHANC
    send_gcs: bool = True  # SEND_TO_GOOGLE

    # Identifier service (DASHER-style REST). Empty URL: the embedded keyed local provider is used.
    identifier_url: str = ""
    identifier_token: str = _secret(default="")
    identifier_timeout: float = 10.0
    identifier_retries: int = 3
    identifier_id_source: str = "MRN"
    # Key of the local provider and of the UID hash (HMAC). Must be set for real use; the default is only
    # good enough for a demo and the CLI warns about it.
    secret_key: str = _secret(default="")

    # Orthanc: DICOM for C-STORE, REST for verifying receipt.
    orthanc_host: str = "127.0.0.1"
    orthanc_dicom_port: int = 4242
    orthanc_ae_title: str = "ORTHANC"
    calling_ae_title: str = "DICOMRELAY"
    orthanc_url: str = "http://127.0.0.1:8042"
    orthanc_user: str = "relay"
    orthanc_password: str = _secret(default="")

    # Google Cloud Storage (or an emulator through STORAGE_EMULATOR_HOST).
    gcs_bucket: str = "dicom-relay"
    gcs_project: str = "dicom-relay"
    gcs_prefix: str = "studies"

    # PS3.15 profile options (dicom_relay.deid.DeidOptions fields) for every run; a run's
    # ``deid_options`` param overrides them one by one.
    deid_options: dict = field(default_factory=dict)
    # Processes that de-identify a large study (0: one per core).
    deid_workers: int = 0
    # Burned-in text in the pixels (RELAY_PIXEL_POLICY): clean | all-text | hold (dicom_relay.deid.pixels.policy).
    # A run may make it stricter, never weaker.
    pixel_policy: str = "clean"

    # Destination retry budget inside one task attempt (Airflow retries come on top).
    send_attempts: int = 4
    send_backoff_seconds: float = 1.0
    # How long google-cloud-storage keeps retrying one request (5xx, dropped connections) by itself.
    gcs_retry_seconds: float = 60.0

    # Airflow's retries of a process_study task, the first delay (doubling), and how many times the
    # rerun_errors DAG retries a batch whose errors are transient before leaving it for a person.
    task_retries: int = 3
    task_retry_delay_seconds: float = 20.0
    max_reruns: int = 3

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from an environment mapping (``os.environ`` by default)."""
        env = os.environ if env is None else env
        d = cls()

        def s(name: str, default: str) -> str:
            return env.get(name, default)

        def num(name: str, default, kind):
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return kind(raw)
            except ValueError as exc:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from exc

        raw_deid = env.get("RELAY_DEID_OPTIONS", "").strip() or "{}"
        try:
            deid_options = json.loads(raw_deid)
        except json.JSONDecodeError as exc:
            raise ConfigError("RELAY_DEID_OPTIONS must be a JSON object, e.g. {\"retain_safe_private\": true}") from exc
        if not isinstance(deid_options, dict):
            raise ConfigError("RELAY_DEID_OPTIONS must be a JSON object")

        pixel_policy = env.get("RELAY_PIXEL_POLICY", "").strip().lower() or d.pixel_policy
        if pixel_policy not in ("clean", "all-text", "hold"):
            raise ConfigError(f"RELAY_PIXEL_POLICY must be clean, all-text or hold, got {pixel_policy!r}")

        return cls(
            pixel_policy=pixel_policy,
            deid_options=deid_options,
            deid_workers=num("RELAY_DEID_WORKERS", d.deid_workers, int) or (os.cpu_count() or 1),
            inbox=Path(s("RELAY_INBOX", str(d.inbox))),
            work_dir=Path(s("RELAY_WORK_DIR", str(d.work_dir))),
            stable_seconds=num("RELAY_STABLE_SECONDS", d.stable_seconds, float),
            poll_seconds=num("RELAY_POLL_SECONDS", d.poll_seconds, float),
            db_url=s("RELAY_DB_URL", d.db_url),
            deidentify=parse_bool("DEIDENTIFY_RESTFUL", env.get("DEIDENTIFY_RESTFUL"), d.deidentify),
            send_orthanc=parse_bool("SEND_TO_ORTHANC", env.get("SEND_TO_ORTHANC"), d.send_orthanc),
            send_gcs=parse_bool("SEND_TO_GOOGLE", env.get("SEND_TO_GOOGLE"), d.send_gcs),
            identifier_url=s("RELAY_IDENTIFIER_URL", d.identifier_url),
            identifier_token=s("RELAY_IDENTIFIER_TOKEN", d.identifier_token),
            identifier_timeout=num("RELAY_IDENTIFIER_TIMEOUT", d.identifier_timeout, float),
            identifier_retries=num("RELAY_IDENTIFIER_RETRIES", d.identifier_retries, int),
            identifier_id_source=s("RELAY_IDENTIFIER_ID_SOURCE", d.identifier_id_source),
            secret_key=s("RELAY_SECRET_KEY", d.secret_key),
            orthanc_host=s("ORTHANC_HOST", d.orthanc_host),
            orthanc_dicom_port=num("ORTHANC_DICOM_PORT", d.orthanc_dicom_port, int),
            orthanc_ae_title=s("ORTHANC_AE_TITLE", d.orthanc_ae_title),
            calling_ae_title=s("RELAY_AE_TITLE", d.calling_ae_title),
            orthanc_url=s("ORTHANC_URL", d.orthanc_url),
            orthanc_user=s("ORTHANC_USER", d.orthanc_user),
            orthanc_password=s("ORTHANC_PASSWORD", d.orthanc_password),
            gcs_bucket=s("RELAY_GCS_BUCKET", d.gcs_bucket),
            gcs_project=s("RELAY_GCS_PROJECT", d.gcs_project),
            gcs_prefix=s("RELAY_GCS_PREFIX", d.gcs_prefix),
            send_attempts=num("RELAY_SEND_ATTEMPTS", d.send_attempts, int),
            send_backoff_seconds=num("RELAY_SEND_BACKOFF_SECONDS", d.send_backoff_seconds, float),
            gcs_retry_seconds=num("RELAY_GCS_RETRY_SECONDS", d.gcs_retry_seconds, float),
            task_retries=num("RELAY_TASK_RETRIES", d.task_retries, int),
            task_retry_delay_seconds=num("RELAY_TASK_RETRY_DELAY_SECONDS", d.task_retry_delay_seconds, float),
            max_reruns=max(0, num("RELAY_MAX_RERUNS", d.max_reruns, int)),
        )

    def with_overrides(self, **overrides) -> "Settings":
        """Return a copy with per-run overrides (DAG params); ``None`` means keep the configured value."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def batches_dir(self) -> Path:
        return self.work_dir / "batches"
