"""The status tables on a real PostgreSQL."""

import concurrent.futures

import pytest

from dicom_relay.status import MIGRATIONS, Instance, StatusStore, StatusTablesMissing

pytestmark = pytest.mark.integration


def test_migrate_is_idempotent_and_concurrent(empty_db_url):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(lambda _: StatusStore(empty_db_url).migrate(), range(8)))
    assert set(versions) == {len(MIGRATIONS)}


def test_without_the_start_up_migration_the_store_says_what_to_run(empty_db_url):
    """Reads and writes do not migrate (that happens once at start); a missing table is a clear error."""
    with pytest.raises(StatusTablesMissing, match="dicom-relay migrate"):
        StatusStore(empty_db_url).list_batches()
    with pytest.raises(StatusTablesMissing):
        StatusStore(empty_db_url).create_batch("b0", "x")


def test_batch_and_instance_lifecycle(relay_db_url):
    store = StatusStore(relay_db_url)
    assert store.create_batch("b1", "ACC-SECRET-FOLDER") is True
    assert store.create_batch("b1", "ACC-SECRET-FOLDER") is False
    store.add_instances("b1", [Instance("b1", f"f{i}", "NEW") for i in range(3)])
    store.add_instances("b1", [Instance("b1", "f0", "NEW")])  # a rerun of import adds nothing
    store.set_instance_state("b1", "DONEPROCESSING", ["f0", "f1"])
    store.set_status("b1", "PROCESSING", run_id="batch__b1")
    store.add_error("b1", "import", "file q0001 is not a DICOM file; kept in quarantine", status=None)
    b = store.get_batch("b1")
    assert b.status == "PROCESSING" and b.has_error and b.run_id == "batch__b1"
    assert b.counts == {"NEW": 1, "DONEPROCESSING": 2}
    assert b.errors[0]["task"] == "import"
    public = b.public()
    assert "ACC-SECRET-FOLDER" not in str(public)
    with pytest.raises(ValueError):
        store.set_status("b1", "WHATEVER")
    with pytest.raises(KeyError):
        store.set_status("nope", "DONE")


def test_status_check_constraint(relay_db_url):
    import psycopg

    store = StatusStore(relay_db_url)
    store.create_batch("b2", "x")
    with pytest.raises(psycopg.errors.CheckViolation):
        with psycopg.connect(relay_db_url, autocommit=True) as conn:
            conn.execute("UPDATE relay_batch SET status = 'BOGUS' WHERE batch_id = 'b2'")
