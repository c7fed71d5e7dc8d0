"""The relay's endpoints and secrets inside Airflow: Airflow Connections, read here and nowhere else.

Every Airflow component (tasks, the triggerer, the api-server page) builds its settings with :func:`task_settings`:
the environment gives folders, switches and options (``Settings.from_env``), the Connections give every endpoint
and secret. Outside Airflow (``dicom-relay`` on the command line) the same settings come from the environment.
A Connection can live anywhere Airflow looks: the metadata database (``airflow connections add``), an
``AIRFLOW_CONN_<ID>`` environment variable or any secrets backend (Vault, AWS/GCP secret managers...) — this
module only asks Airflow for it by id.

=========================== =========================== ======================================================
connection id               type                        holds
=========================== =========================== ======================================================
``relay_db``                ``postgres``                the status database, read through the Postgres
                                                        provider's ``PostgresHook`` (host, port, schema = the
                                                        database, login, password)
``orthanc_default``         ``http``                    Orthanc's REST API: host (and port, or a full URL in
                                                        host), login, password; extras ``ae_title`` (called AE,
                                                        default ORTHANC), ``dicom_port`` (default 4242),
                                                        ``dicom_host`` (default: the REST host), ``transport``
                                                        (``rest`` or ``dicom``; default:
                                                        RELAY_ORTHANC_TRANSPORT, itself default ``rest``)
``relay_gcs``               ``google_cloud_platform``   extras ``bucket``, ``project``, ``prefix`` (default
                                                        studies), and ``emulator_host`` (an emulator's URL) or
                                                        ``key_path`` (a service-account key file; neither: the
                                                        machine's default credentials)
``relay_identifier_service`` ``http``                   the identifier service: host (a URL), password = the
                                                        bearer token. Optional: without it (or without a host)
                                                        the embedded keyed provider is used (as with an empty
                                                        RELAY_IDENTIFIER_URL)
=========================== =========================== ======================================================

The hooks are small, as providers' hooks are: each turns one Connection into plain values for
``dicom_relay.config.Settings``; the library never sees a Connection.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from dicom_relay.config import ORTHANC_TRANSPORTS, ConfigError, Settings

RELAY_DB = "relay_db"
ORTHANC = "orthanc_default"
GCS = "relay_gcs"
IDENTIFIER_SERVICE = "relay_identifier_service"

#: How to create each Connection, for error messages and the README.
EXAMPLES = {
    RELAY_DB: "airflow connections add relay_db --conn-type postgres --conn-host HOST --conn-port 5432 "
              "--conn-schema relay --conn-login relay --conn-password PASSWORD",
    ORTHANC: "airflow connections add orthanc_default --conn-type http --conn-host HOST --conn-port 8042 "
             "--conn-login relay --conn-password PASSWORD "
             "--conn-extra '{\"transport\": \"rest\", \"ae_title\": \"ORTHANC\", \"dicom_port\": 4242}'",
    GCS: "airflow connections add relay_gcs --conn-type google_cloud_platform "
         "--conn-extra '{\"bucket\": \"dicom-relay\", \"project\": \"PROJECT\", \"key_path\": \"/path/key.json\"}'",
    IDENTIFIER_SERVICE: "airflow connections add relay_identifier_service --conn-type http "
                        "--conn-host http://HOST:8000 --conn-password TOKEN",
}


def _connection(conn_id: str, required: bool = True):
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        if not required:
            return None
        raise ConfigError(f"the Airflow Connection {conn_id!r} is not defined; create it, e.g.: {EXAMPLES[conn_id]}") from None


def _http_url(conn) -> str:
    """``scheme://host[:port]`` of an HTTP Connection whose host is a name or a full URL."""
    host = (conn.host or "").strip()
    if not host:
        raise ConfigError(f"the Airflow Connection {conn.conn_id!r} has no host")
    if "://" in host:
        parts = urlsplit(host)
        netloc = parts.netloc if parts.port or not conn.port else f"{parts.netloc}:{conn.port}"
        return f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")
    scheme = (conn.schema or "http").strip() if (conn.schema or "").strip() in ("http", "https") else "http"
    return f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")


class _RelayHook(BaseHook):
    """One Connection turned into plain ``Settings`` values. Subclasses declare, as providers' hooks do,
    ``default_conn_name``, ``conn_type`` and ``hook_name``, and implement :meth:`settings`."""

    conn_name_attr = "conn_id"
    default_conn_name: str

    def __init__(self, conn_id: str | None = None):
        super().__init__()
        self.conn_id = conn_id or self.default_conn_name

    def settings(self) -> dict[str, Any]:
        raise NotImplementedError


class RelayDbHook(_RelayHook):
    """The status database, through ``PostgresHook`` (so any Postgres Connection, IAM auth included, works)."""

    default_conn_name, conn_type, hook_name = RELAY_DB, "postgres", "dicom-relay status database"

    def settings(self) -> dict[str, Any]:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        conn = _connection(self.conn_id)  # a missing Connection is named with how to add it
        # Handed the Connection just read: PostgresHook would otherwise read it a second time.
        url = PostgresHook(postgres_conn_id=self.conn_id, connection=conn).sqlalchemy_url
        # PostgresHook speaks SQLAlchemy (postgresql+psycopg://); the relay connects with psycopg itself.
        return {"db_url": url.set(drivername="postgresql").render_as_string(hide_password=False)}


class OrthancHook(_RelayHook):
    """Orthanc: the REST URL and login, and from the extras the DICOM endpoint (AE title, host, port) and the
    ``transport`` (``rest``: POST /instances, or ``dicom``: C-STORE; when absent, RELAY_ORTHANC_TRANSPORT decides)."""

    default_conn_name, conn_type, hook_name = ORTHANC, "http", "Orthanc (dicom-relay)"

    def settings(self) -> dict[str, Any]:
        conn = _connection(self.conn_id)
        extra = conn.extra_dejson
        url = _http_url(conn)
        try:
            dicom_port = int(extra.get("dicom_port", 4242))
        except (TypeError, ValueError):
            raise ConfigError(f"the Airflow Connection {conn.conn_id!r}: extra dicom_port must be a number") from None
        transport = str(extra.get("transport") or "").strip().lower() or None  # None: keep RELAY_ORTHANC_TRANSPORT
        if transport not in (None, *ORTHANC_TRANSPORTS):
            raise ConfigError(f"the Airflow Connection {conn.conn_id!r}: extra transport must be one of "
                              f"{', '.join(ORTHANC_TRANSPORTS)}")
        return {
            "orthanc_url": url,
            "orthanc_user": conn.login or "",
            "orthanc_password": conn.password or "",
            "orthanc_host": str(extra.get("dicom_host") or urlsplit(url).hostname),
            "orthanc_dicom_port": dicom_port,
            "orthanc_ae_title": str(extra.get("ae_title") or "ORTHANC"),
            "orthanc_transport": transport,
        }


class RelayGcsHook(_RelayHook):
    """The GCS bucket: bucket, project, prefix and either an emulator URL or a key file, all from the extras."""

    default_conn_name, conn_type, hook_name = GCS, "google_cloud_platform", "GCS bucket (dicom-relay)"

    def settings(self) -> dict[str, Any]:
        conn = _connection(self.conn_id)
        extra = conn.extra_dejson
        missing = [k for k in ("bucket", "project") if not extra.get(k)]
        if missing:
            raise ConfigError(f"the Airflow Connection {conn.conn_id!r} lacks extra {', '.join(missing)}")
        return {
            "gcs_bucket": str(extra["bucket"]),
            "gcs_project": str(extra["project"]),
            "gcs_prefix": str(extra.get("prefix") or "studies"),
            "gcs_emulator_host": str(extra.get("emulator_host") or ""),
            "gcs_credentials_file": str(extra.get("key_path") or ""),
        }


class IdentifierServiceHook(_RelayHook):
    """The identifier service (optional): its URL and bearer token; without it the embedded keyed provider."""

    default_conn_name, conn_type, hook_name = IDENTIFIER_SERVICE, "http", "Identifier service (dicom-relay)"

    def settings(self) -> dict[str, Any]:
        conn = _connection(self.conn_id, required=False)
        if conn is None or not (conn.host or "").strip():
            return {"identifier_url": "", "identifier_token": ""}  # the embedded keyed provider
        return {"identifier_url": _http_url(conn), "identifier_token": conn.password or ""}


HOOKS = (RelayDbHook, OrthancHook, RelayGcsHook, IdentifierServiceHook)


def task_settings(hooks: tuple[type[_RelayHook], ...] = HOOKS) -> Settings:
    """The settings inside Airflow: the environment for everything but endpoints and secrets, which come from
    the Connections of ``hooks`` (all four by default; a missing required one is a ConfigError naming it and how
    to add it). Each Connection read is a request through the execution API, so a task reads only those it uses."""
    overrides: dict[str, Any] = {}
    for hook in hooks:
        overrides.update(hook().settings())
    return Settings.from_env().with_overrides(**overrides)


def status_db_url() -> str:
    """Only the status database (the api-server page, failure callbacks): one Connection read, not four."""
    return RelayDbHook().settings()["db_url"]
