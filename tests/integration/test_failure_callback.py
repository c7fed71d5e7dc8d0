"""A task that fails for good without the pipeline recording why still leaves the batch ERROR with a reason."""

import pytest

from dicom_relay.airflow.tasks import record_task_failure
from dicom_relay.status import StatusStore

pytestmark = pytest.mark.integration


class TaskInstance:
    task_id = "send_orthanc"


def test_unrecorded_failure_marks_batch_error_once(relay_db_url, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_RELAY_DB", relay_db_url)  # inside Airflow the status database is a Connection
    store = StatusStore(relay_db_url)
    store.create_batch("b-killed", "folder")
    store.set_status("b-killed", "PROCESSING")
    context = {"params": {"batch_id": "b-killed"}, "task_instance": TaskInstance()}
    record_task_failure(context)
    batch = store.get_batch("b-killed")
    assert batch.status == "ERROR" and batch.errors[-1]["transient"] is True
    assert batch.errors[-1]["task"] == "send_orthanc"
    record_task_failure(context)  # already ERROR: the reason the pipeline gave is not buried
    assert len(store.get_batch("b-killed").errors) == 1
