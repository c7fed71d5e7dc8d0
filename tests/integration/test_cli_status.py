"""``dicom-relay migrate`` and ``status`` against a real status database (a subprocess, as a person runs them)."""

import json

import pytest

from dicom_relay.status import Instance, StatusStore
from tests.support.cli import run_cli as relay

pytestmark = pytest.mark.integration


def test_status_lists_batches_without_folder_names(relay_db_url):
    store = StatusStore(relay_db_url)
    store.create_batch("20260101T000000-aaaaaa", "ACC-SECRET-FOLDER")
    store.add_instances("20260101T000000-aaaaaa", [Instance("20260101T000000-aaaaaa", "a.dcm", "NEW")])
    store.add_error("20260101T000000-aaaaaa", "import", "file q0001 is not a DICOM file; kept in quarantine", status=None)
    r = relay("status", "--json", env={"RELAY_DB_URL": relay_db_url})
    assert r.returncode == 0, r.stderr
    [batch] = json.loads(r.stdout)
    assert batch["batch_id"] == "20260101T000000-aaaaaa" and batch["instances"] == {"NEW": 1}
    assert batch["has_error"] is True
    text = relay("status", "--errors", env={"RELAY_DB_URL": relay_db_url})
    assert "q0001" in text.stdout
    assert "ACC-SECRET-FOLDER" not in r.stdout + text.stdout


def test_migrate_once_at_start_then_status_works(empty_db_url):
    """Commands do not migrate by themselves: before `dicom-relay migrate` they say to run it."""
    before = relay("status", env={"RELAY_DB_URL": empty_db_url})
    assert before.returncode == 2 and "dicom-relay migrate" in before.stderr
    migrated = relay("migrate", env={"RELAY_DB_URL": empty_db_url})
    assert migrated.returncode == 0, migrated.stderr
    after = relay("status", env={"RELAY_DB_URL": empty_db_url})
    assert after.returncode == 0 and "no batches yet" in after.stdout
