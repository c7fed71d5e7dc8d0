"""The Relay batches page against a real status database: it reads, it never migrates."""

import pytest
from airflow.api_fastapi.core_api.security import get_user
from fastapi.testclient import TestClient

from dicom_relay.airflow.ui import app, render
from dicom_relay.status import StatusStore

pytestmark = pytest.mark.integration


@pytest.fixture
def client():
    app.dependency_overrides[get_user] = lambda: None  # authentication is Airflow's, tested with a real Airflow (e2e)
    try:
        yield TestClient(app)
    finally:
        app.dependency_overrides.clear()


def test_page_before_the_start_up_migration_says_what_to_run(client, empty_db_url, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_RELAY_DB", empty_db_url)  # the page reads the relay_db Connection
    answer = client.get("/batches.json")
    assert answer.status_code == 503 and "dicom-relay migrate" in answer.text


def test_page_lists_batches_of_a_migrated_database(client, relay_db_url, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_RELAY_DB", relay_db_url)
    StatusStore(relay_db_url).create_batch("20260101T000000-abcdef", "ACC-SECRET-FOLDER")
    answer = client.get("/batches.json")
    assert answer.status_code == 200
    assert [b["batch_id"] for b in answer.json()] == ["20260101T000000-abcdef"]
    # The HTML page authenticates itself (get_user, not a dependency: the e2e tests it with a real Airflow); what
    # it renders from these rows must not show the folder either.
    assert "ACC-SECRET-FOLDER" not in answer.text
    assert "ACC-SECRET-FOLDER" not in render(answer.json())
