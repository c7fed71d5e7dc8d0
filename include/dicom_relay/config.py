"""Every setting of dicom-relay: its name, its default, and where it comes from.

Settings are read from the process environment (``.env`` is loaded into the environment by ``make run``,
by docker compose and by the Airflow components). The names of the switches inherited from sendit are kept
(``DEIDENTIFY_RESTFUL``, ``SEND_TO_ORTHANC``, ``SEND_TO_GOOGLE``) so that existing deployments read naturally;
everything new is prefixed ``RELAY_``, ``ORTHANC_`` or ``GCS_``.

``Settings`` is a pydantic-settings model: each field names its environment variable (``validation_alias``) and
pydantic parses it (numbers, booleans, the JSON of ``RELAY_DEID_OPTIONS``). Secrets (``RELAY_SECRET_KEY``,
``ORTHANC_PASSWORD``, ``RELAY_IDENTIFIER_TOKEN``) are ``SecretStr``: ``repr``, ``str`` and dumps show asterisks,
and the code that needs the value asks for it (``settings.secret_key.get_secret_value()``) where it uses it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError
from pydantic_settings.sources.utils import parse_env_vars

# Defined without pydantic for the offline commands (dicom_relay.offline_settings); one definition, used here too.
from .offline_settings import PLACEHOLDERS, ConfigError, is_placeholder  # noqa: F401 - re-exported

_PLACEHOLDER_HINT = ("empty or a placeholder; set a long random value, e.g. "
                     "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")


#: How instances travel to Orthanc (dicom_relay.destinations.orthanc): POST /instances or C-STORE.
OrthancTransport = Literal["rest", "dicom"]
ORTHANC_TRANSPORTS: tuple[str, ...] = get_args(OrthancTransport)
#: rest: the verification needs the REST API and its login anyway, and it costs Orthanc and the relay less CPU per
#: instance than C-STORE; dicom stays for an Orthanc that routes by calling AE title or a REST account that may not
#: write.
ORTHANC_DEFAULT_TRANSPORT: OrthancTransport = "rest"
#: Threads sending POST /instances side by side (transport rest). Measured into a local Orthanc on 2 cores with
#: 512x512 CT slices (docs/MEASUREMENTS.md): 8 workers were faster than 4 in 9 of 12 alternating rounds (medians
#: 1.06-1.16x the 4-thread REST anchor, against 0.97-1.16x for 4 workers), with about the same CPU per instance on
#: both sides: while one request waits for Orthanc to write and index its file, others are parsed.
ORTHANC_DEFAULT_REST_WORKERS = 8


def _env(name: str, *default: Any, **kw: Any) -> Any:
    """A field read from the environment variable ``name``."""
    return Field(*default, validation_alias=name, **kw)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        # Fields are set by name in code (``Settings(inbox=...)``, ``with_overrides``) and by variable name from the
        # environment.
        validate_by_name=True,
        validate_by_alias=True,
        case_sensitive=True,
        # An empty value means "not set": a blank line in .env keeps the default.
        env_ignore_empty=True,
    )

    # Folders. The inbox is watched; the work area holds claimed batches (originals, staging, quarantine).
    inbox: Path = _env("RELAY_INBOX", Path("/data/inbox"))
    work_dir: Path = _env("RELAY_WORK_DIR", Path("/data/relay"))
    # Seconds a finished folder must be quiet (no file changed) before it is claimed: guards against a sender
    # that renames before it has finished writing.
    stable_seconds: float = _env("RELAY_STABLE_SECONDS", 2.0)
    poll_seconds: float = _env("RELAY_POLL_SECONDS", 0.5)

    # The relay's own status tables (not Airflow's metadata database). The URL may hold the password: it is left
    # out of ``repr`` and dumps like the SecretStr fields.
    db_url: str = _env("RELAY_DB_URL", "postgresql://relay@127.0.0.1:5432/relay", repr=False, exclude=True)

    # Switches inherited from sendit.
    deidentify: bool = _env("DEIDENTIFY_RESTFUL", True)
    send_orthanc: bool = _env("SEND_TO_ORTHANC", True)
    send_gcs: bool = _env("SEND_TO_GOOGLE", True)

    # Identifier service (DASHER-style REST). Empty URL: the embedded keyed local provider is used.
    identifier_url: str = _env("RELAY_IDENTIFIER_URL", "")
    identifier_token: SecretStr = _env("RELAY_IDENTIFIER_TOKEN", SecretStr(""))
    identifier_timeout: float = _env("RELAY_IDENTIFIER_TIMEOUT", 10.0)
    # Attempts after the first for one lookup (connection refused, timeouts, 5xx, 429), inside one task attempt.
    identifier_retries: int = _env("RELAY_IDENTIFIER_RETRIES", 3)
    identifier_id_source: str = _env("RELAY_IDENTIFIER_ID_SOURCE", "MRN")
    # Key of the local provider and of the UID hash (HMAC). Required: every step refuses to start while it is
    # empty or a placeholder (``require_secrets``).
    secret_key: SecretStr = _env("RELAY_SECRET_KEY", SecretStr(""))

    # Orthanc: instances travel over the ``transport`` (rest: POST /instances; dicom: C-STORE to the DICOM port);
    # receipt is verified over REST either way (dicom_relay.destinations.orthanc).
    orthanc_transport: OrthancTransport = _env("RELAY_ORTHANC_TRANSPORT", ORTHANC_DEFAULT_TRANSPORT)
    orthanc_rest_workers: int = _env("RELAY_ORTHANC_REST_WORKERS", ORTHANC_DEFAULT_REST_WORKERS, ge=1, le=64)
    orthanc_host: str = _env("ORTHANC_HOST", "127.0.0.1")
    orthanc_dicom_port: int = _env("ORTHANC_DICOM_PORT", 4242)
    orthanc_ae_title: str = _env("ORTHANC_AE_TITLE", "ORTHANC")
    calling_ae_title: str = _env("RELAY_AE_TITLE", "DICOMRELAY")
    orthanc_url: str = _env("ORTHANC_URL", "http://127.0.0.1:8042")
    orthanc_user: str = _env("ORTHANC_USER", "relay")
    orthanc_password: SecretStr = _env("ORTHANC_PASSWORD", SecretStr(""))

    # Google Cloud Storage (or an emulator through STORAGE_EMULATOR_HOST).
    gcs_bucket: str = _env("RELAY_GCS_BUCKET", "dicom-relay")
    gcs_project: str = _env("RELAY_GCS_PROJECT", "dicom-relay")
    gcs_prefix: str = _env("RELAY_GCS_PREFIX", "studies")
    # An emulator's URL (fake-gcs-server in make run and the tests): anonymous access to it; or a service-account
    # key file; neither: the machine's default credentials (google-auth's search).
    gcs_emulator_host: str = _env("STORAGE_EMULATOR_HOST", "")
    gcs_credentials_file: str = _env("GOOGLE_APPLICATION_CREDENTIALS", "")

    # PS3.15 profile options (dicom_relay.deid.DeidOptions fields) for every run, as a JSON object; a run's
    # ``deid_options`` param overrides them one by one.
    deid_options: dict = _env("RELAY_DEID_OPTIONS", default_factory=dict)
    # Whether a run's params may make de-identification weaker than the two settings above (deidentify=false,
    # a retain option, a weaker pixel policy...). Off: such a run fails at its first task and nothing is sent.
    # Anyone who may trigger a DAG run sets params; only the deployment decides this (dicom_relay.overrides).
    allow_unsafe_overrides: bool = _env("RELAY_ALLOW_UNSAFE_OVERRIDES", False)
    # Processes that de-identify a large study (0: one per core).
    deid_workers: int = _env("RELAY_DEID_WORKERS", 0)
    # Burned-in text in the pixels: clean | all-text | hold (dicom_relay.deid.pixels.policy). A run may make it
    # stricter, never weaker.
    pixel_policy: Literal["clean", "all-text", "hold"] = _env("RELAY_PIXEL_POLICY", "clean")

    # The one retry layer inside a task, per destination (Airflow's retries come on top, between attempts):
    # Orthanc calls are retried ``send_attempts`` times with doubling delays from ``send_backoff_seconds``;
    # google-cloud-storage retries each request by itself (5xx, dropped connections) for ``gcs_retry_seconds``.
    send_attempts: int = _env("RELAY_SEND_ATTEMPTS", 4)
    send_backoff_seconds: float = _env("RELAY_SEND_BACKOFF_SECONDS", 1.0)
    gcs_retry_seconds: float = _env("RELAY_GCS_RETRY_SECONDS", 60.0)

    # Airflow's retries of a process_study task, the first delay (doubling), and how many times the
    # rerun_errors DAG retries a batch whose errors are transient before leaving it for a person.
    task_retries: int = _env("RELAY_TASK_RETRIES", 3)
    task_retry_delay_seconds: float = _env("RELAY_TASK_RETRY_DELAY_SECONDS", 20.0)
    # The ``execution_timeout`` of every task: a hung attempt (a destination that accepts and never answers) is
    # killed and retried instead of holding its slot forever. Generous: a 5,000-instance study fits many times.
    task_timeout_seconds: float = _env("RELAY_TASK_TIMEOUT_SECONDS", 3600.0, gt=0)
    max_reruns: int = _env("RELAY_MAX_RERUNS", 3)
    # How long a review of held-back instances waits for an answer (Required Actions) before it keeps them held.
    review_timeout_seconds: float = _env("RELAY_REVIEW_TIMEOUT_SECONDS", 72 * 3600.0, gt=0)

    @field_validator("pixel_policy", "orthanc_transport", mode="before")
    @classmethod
    def _lower_word(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("max_reruns")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        return max(0, value)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        # ``Settings(...)`` is the defaults plus what the code passes; the environment is read by ``from_env`` only,
        # so a test's ``Settings()`` never depends on the shell it runs in.
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from an environment mapping (``os.environ`` by default)."""
        source = _MappingEnvSource(cls, os.environ if env is None else env)
        try:
            settings = cls(_build_sources=((source,), {}))
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None
        except SettingsError:
            # Only the JSON-valued settings are decoded before validation.
            raise ConfigError('RELAY_DEID_OPTIONS must be a JSON object, e.g. {"retain_safe_private": true}') from None
        if settings.deid_workers == 0:
            settings = settings.model_copy(update={"deid_workers": os.cpu_count() or 1})
        return settings

    def with_overrides(self, **overrides: Any) -> "Settings":
        """Return a copy with per-run overrides (DAG params); ``None`` means keep the configured value."""
        unknown = set(overrides) - set(type(self).model_fields)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        try:
            return type(self).model_validate({**dict(self), **changes})
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    @classmethod
    def variables(cls) -> tuple[str, ...]:
        """The environment variable of every setting, in field order."""
        return tuple(str(f.validation_alias) for f in cls.model_fields.values())

    @property
    def batches_dir(self) -> Path:
        return self.work_dir / "batches"

    def require_db_secret(self) -> None:
        """Raise ConfigError when RELAY_DB_URL carries an empty or placeholder password.

        A URL without a password is accepted: libpq then takes it from ``~/.pgpass`` or ``PGPASSWORD``, or the
        server authenticates a local socket by peer; the server refuses a wrong one either way.
        """
        from psycopg.conninfo import conninfo_to_dict

        try:
            password = conninfo_to_dict(self.db_url).get("password")
        except Exception:  # noqa: BLE001 - psycopg's message may quote the URL, password included
            raise ConfigError("RELAY_DB_URL is not a PostgreSQL URL or connection string") from None
        if password is not None and is_placeholder(str(password)):
            raise ConfigError(f"RELAY_DB_URL: {_PLACEHOLDER_HINT}")

    def require_secrets(self, *, deidentify: bool, send_orthanc: bool) -> None:
        """Raise ConfigError naming every secret a run needs that is empty or a known placeholder (``change-me``).

        Needed: RELAY_SECRET_KEY always (the UID hash and the embedded provider are keyed by it: without a real
        key anyone can compute them); the password in RELAY_DB_URL if it holds one; ORTHANC_PASSWORD when the
        run sends to Orthanc; RELAY_IDENTIFIER_TOKEN when RELAY_IDENTIFIER_URL is set. ``deidentify``
        is accepted for symmetry with the run's options; the key is required either way.
        """
        problems = []
        try:
            self.require_db_secret()
        except ConfigError as exc:
            problems.append(str(exc))
        needed = [("RELAY_SECRET_KEY", self.secret_key)]
        if send_orthanc:
            needed.append(("ORTHANC_PASSWORD", self.orthanc_password))
        if self.identifier_url:
            needed.append(("RELAY_IDENTIFIER_TOKEN", self.identifier_token))
        problems += [f"{name}: {_PLACEHOLDER_HINT}" for name, secret in needed
                     if is_placeholder(secret.get_secret_value())]
        if problems:
            raise ConfigError("; ".join(problems))


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (``from_env(env)``) instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]):
        self._mapping = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._mapping, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def _describe(exc: ValidationError) -> str:
    """Name each setting that does not parse by its environment variable; never quote a value (it may be a
    secret)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        name = str(error["loc"][0]) if error["loc"] else "settings"
        field = Settings.model_fields.get(name)
        variable = field.validation_alias if field is not None and isinstance(field.validation_alias, str) else name
        problems.append(f"{variable}: {error['msg']}")
    return "; ".join(problems)
