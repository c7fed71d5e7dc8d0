"""Inside Airflow the endpoints and secrets come from Connections; here through AIRFLOW_CONN_* variables, Airflow's
environment secrets backend (any backend answers BaseHook.get_connection the same way)."""

import json

import pytest

from dicom_relay.airflow import connections
from dicom_relay.config import ConfigError

CONNS = {
    "RELAY_DB": {"conn_type": "postgres", "host": "db.internal", "port": 6432, "schema": "relay", "login": "relay",
                 "password": "p@ss/w:rd-7c6b5a"},
    "ORTHANC_DEFAULT": {"conn_type": "http", "host": "pacs.internal", "port": 8042, "login": "relay",
                        "password": "orthanc-91a8b7", "extra": {"ae_title": "PACS1", "dicom_port": 11112}},
    "RELAY_GCS": {"conn_type": "google_cloud_platform",
                  "extra": {"bucket": "b1", "project": "p1", "key_path": "/secrets/key.json"}},
    "RELAY_IDENTIFIER_SERVICE": {"conn_type": "http", "host": "https://ids.internal:8443", "password": "tok-0a1b2c"},
}


@pytest.fixture
def airflow_conns(monkeypatch):
    for name in ("RELAY_DB_URL", "ORTHANC_URL", "RELAY_IDENTIFIER_URL", "STORAGE_EMULATOR_HOST",
                 "RELAY_ORTHANC_TRANSPORT"):
        monkeypatch.delenv(name, raising=False)
    for key, conn in CONNS.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{key}", json.dumps(conn))
    return monkeypatch


def test_every_endpoint_and_secret_comes_from_its_connection(airflow_conns):
    s = connections.task_settings()
    assert s.db_url == "postgresql://relay:p%40ss%2Fw%3Ard-7c6b5a@db.internal:6432/relay"  # PostgresHook's URL, escaped
    assert (s.orthanc_url, s.orthanc_host, s.orthanc_dicom_port, s.orthanc_ae_title) == (
        "http://pacs.internal:8042", "pacs.internal", 11112, "PACS1")
    assert (s.orthanc_user, s.orthanc_password.get_secret_value()) == ("relay", "orthanc-91a8b7")
    assert (s.gcs_bucket, s.gcs_project, s.gcs_credentials_file, s.gcs_emulator_host) == (
        "b1", "p1", "/secrets/key.json", "")
    assert (s.identifier_url, s.identifier_token.get_secret_value()) == ("https://ids.internal:8443", "tok-0a1b2c")
    assert not any(secret in repr(s) for secret in ("p@ss", "orthanc-91a8b7", "tok-0a1b2c"))


def test_the_environment_does_not_override_a_connection(airflow_conns):
    airflow_conns.setenv("RELAY_DB_URL", "postgresql://other@elsewhere/relay")
    airflow_conns.setenv("ORTHANC_URL", "http://elsewhere:8042")
    s = connections.task_settings()
    assert "db.internal" in s.db_url and s.orthanc_url == "http://pacs.internal:8042"


@pytest.mark.parametrize("missing", ["RELAY_DB", "ORTHANC_DEFAULT", "RELAY_GCS"])
def test_a_missing_connection_is_named_with_how_to_add_it(airflow_conns, missing):
    airflow_conns.delenv(f"AIRFLOW_CONN_{missing}")
    with pytest.raises(ConfigError, match=rf"Connection '{missing.lower()}' is not defined.*airflow connections add"):
        connections.task_settings()


def test_without_an_identifier_connection_the_embedded_provider_is_used(airflow_conns):
    airflow_conns.delenv("AIRFLOW_CONN_RELAY_IDENTIFIER_SERVICE")
    airflow_conns.setenv("RELAY_IDENTIFIER_URL", "http://from-the-environment:8000")
    assert connections.task_settings().identifier_url == ""


def orthanc_conn(monkeypatch, **extra) -> None:
    conn = json.loads(json.dumps(CONNS["ORTHANC_DEFAULT"]))
    conn["extra"].update(extra)
    monkeypatch.setenv("AIRFLOW_CONN_ORTHANC_DEFAULT", json.dumps(conn))


def test_orthanc_transport_from_the_connection_extra_else_the_environment(airflow_conns):
    assert connections.task_settings().orthanc_transport == "rest"  # neither: the default
    airflow_conns.setenv("RELAY_ORTHANC_TRANSPORT", "dicom")
    assert connections.task_settings().orthanc_transport == "dicom"  # no extra: the environment decides
    orthanc_conn(airflow_conns, transport="REST")
    assert connections.task_settings().orthanc_transport == "rest"  # the Connection wins, as for every endpoint
    orthanc_conn(airflow_conns, transport="dicom")
    airflow_conns.delenv("RELAY_ORTHANC_TRANSPORT")
    assert connections.task_settings().orthanc_transport == "dicom"


def test_orthanc_transport_extra_must_be_rest_or_dicom(airflow_conns):
    orthanc_conn(airflow_conns, transport="https")
    with pytest.raises(ConfigError, match="'orthanc_default': extra transport must be one of rest, dicom"):
        connections.task_settings()


def test_gcs_connection_needs_bucket_and_project(airflow_conns):
    airflow_conns.setenv("AIRFLOW_CONN_RELAY_GCS", json.dumps({"conn_type": "google_cloud_platform",
                                                               "extra": {"emulator_host": "http://127.0.0.1:4443"}}))
    with pytest.raises(ConfigError, match="lacks extra bucket, project"):
        connections.task_settings()


def test_status_page_reads_only_the_database_connection(airflow_conns):
    airflow_conns.delenv("AIRFLOW_CONN_ORTHANC_DEFAULT")
    assert connections.status_db_url().startswith("postgresql://relay:")


def _reads(monkeypatch) -> list[str]:
    """The ids of the Connections read from now on (through Airflow's own lookup, which still answers)."""
    from airflow.sdk import BaseHook

    seen: list[str] = []
    real = BaseHook.get_connection.__func__

    def counting(cls, conn_id):
        seen.append(conn_id)
        return real(cls, conn_id)

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(counting))
    return seen


def test_each_connection_is_read_once(airflow_conns):
    reads = _reads(airflow_conns)
    connections.task_settings()
    assert sorted(reads) == sorted({"relay_db", "orthanc_default", "relay_gcs", "relay_identifier_service"})


@pytest.mark.parametrize("step, needs", [
    ("import", {"relay_db", "orthanc_default", "relay_gcs", "relay_identifier_service"}),
    ("get_identifiers", {"relay_db", "relay_identifier_service"}),
    ("replace_identifiers", {"relay_db"}),
    ("send_orthanc", {"relay_db", "orthanc_default"}),
    ("send_gcs", {"relay_db", "relay_gcs"}),
    ("cleanup", {"relay_db"}),
])
def test_a_step_reads_only_the_connections_it_uses(airflow_conns, step, needs):
    from dicom_relay.airflow.tasks import STEP_CONNECTIONS

    reads = _reads(airflow_conns)
    s = connections.task_settings(STEP_CONNECTIONS.get(step, connections.HOOKS))
    assert set(reads) == needs and len(reads) == len(needs)
    # ... and holds no secret of the others.
    if "orthanc_default" not in needs:
        assert s.orthanc_password.get_secret_value() != "orthanc-91a8b7"
    if "relay_identifier_service" not in needs:
        assert s.identifier_token.get_secret_value() != "tok-0a1b2c"
