"""The rerun rules of dicom_relay.operations on a real PostgreSQL: what is rerun, what waits, what is left."""

from __future__ import annotations

import json
import time

import pytest

from dicom_relay import operations
from dicom_relay.status import StatusStore

pytestmark = pytest.mark.integration

FOLDER = "ACC-SECRET-4711"  # folder names are PHI: never in a decision


@pytest.fixture
def store(relay_db_url) -> StatusStore:
    s = StatusStore(relay_db_url)
    return s


def failed_run(store: StatusStore, batch_id: str, *failures: tuple[str, bool], run_id: str | None = None,
               notes: int = 0) -> None:
    """One run of the batch: it starts (PROCESSING), records quarantine notes, then fails with ``failures``."""
    if store.get_batch(batch_id) is None:
        store.create_batch(batch_id, FOLDER)
    store.set_status(batch_id, "PROCESSING", run_id=run_id or f"batch__{batch_id}")
    for n in range(notes):
        store.add_error(batch_id, "import", f"file q{n + 1:04d} is not a DICOM file; kept in quarantine", status=None)
    for task, transient in failures:
        store.add_error(batch_id, task, f"{task} failed", transient=transient)


def decisions_by_batch(store, **kw) -> dict[str, operations.Decision]:
    return {d.batch_id: d for d in operations.decide_reruns(store, **kw)}


def test_transient_failure_is_rerun_once_per_attempt_and_recorded(store):
    failed_run(store, "b-trans", ("send_orthanc", True), ("send_orthanc", True), notes=2)
    d = decisions_by_batch(store, limit=3)["b-trans"]
    assert d.decision == "rerun" and d.run_id == "rerun__b-trans__1"
    assert "send_orthanc" in d.reason and "1 of 3" in d.reason
    batch = store.get_batch("b-trans")
    assert batch.rerun_count == 1
    assert batch.last_decision["decision"] == "rerun" and batch.last_decision["run_id"] == "rerun__b-trans__1"
    assert batch.public()["last_decision"]["run_id"] == "rerun__b-trans__1"
    # Next cycle, the run has not started yet: the same run id is asked for again; no attempt is spent.
    again = decisions_by_batch(store, limit=3)["b-trans"]
    assert again.decision == "wait" and again.run_id == "rerun__b-trans__1"
    assert store.get_batch("b-trans").rerun_count == 1
    assert operations.runs_to_request([again.public()]) == [
        {"trigger_run_id": "rerun__b-trans__1", "conf": {"batch_id": "b-trans"}}]


def test_rerun_that_fails_again_gets_the_next_number_until_out_of_reruns(store):
    failed_run(store, "b-again", ("send_gcs", True))
    for n in (1, 2):
        d = decisions_by_batch(store, limit=2)["b-again"]
        assert (d.decision, d.run_id) == ("rerun", f"rerun__b-again__{n}")
        time.sleep(0.01)
        failed_run(store, "b-again", ("send_gcs", True), run_id=d.run_id)
    d = decisions_by_batch(store, limit=2)["b-again"]
    assert d.decision == "leave" and d.run_id is None
    assert "out of reruns (2 of 2 used)" in d.reason
    assert store.get_batch("b-again").rerun_count == 2
    assert store.get_batch("b-again").last_decision["decision"] == "leave"


def test_permanent_failure_is_left_for_a_person(store):
    failed_run(store, "b-perm", ("replace_identifiers", False))
    d = decisions_by_batch(store, limit=3)["b-perm"]
    assert d.decision == "leave" and "permanent error in replace_identifiers" in d.reason
    assert store.get_batch("b-perm").rerun_count == 0


def test_mixed_failures_in_the_latest_run_are_left(store):
    failed_run(store, "b-mixed", ("send_orthanc", True), ("send_orthanc", False))
    assert decisions_by_batch(store, limit=3)["b-mixed"].decision == "leave"


def test_only_the_latest_run_counts(store):
    # First run: permanent failure. A person fixed it and requeued; that run failed only transiently.
    failed_run(store, "b-latest", ("get_identifiers", False))
    time.sleep(1.1)  # error times are kept to the second
    failed_run(store, "b-latest", ("send_orthanc", True), run_id="requeue__b-latest__1")
    d = decisions_by_batch(store, limit=3)["b-latest"]
    assert d.decision == "rerun", d.reason


def test_quarantine_notes_are_not_failures(store):
    store.create_batch("b-notes", FOLDER)
    store.set_status("b-notes", "PROCESSING")
    store.add_error("b-notes", "import", "file q0001 is not a DICOM file; kept in quarantine", status=None)
    store.set_status("b-notes", "ERROR")
    d = decisions_by_batch(store, limit=3)["b-notes"]
    assert d.decision == "leave" and "without a recorded failure" in d.reason


def test_only_error_batches_are_considered(store):
    failed_run(store, "b-done", ("send_orthanc", True))
    store.set_status("b-done", "DONE", finished=True)
    store.create_batch("b-empty", FOLDER)
    store.add_error("b-empty", "import", "the folder holds no readable DICOM instance", status="EMPTY")
    store.create_batch("b-new", FOLDER)
    assert decisions_by_batch(store, limit=3) == {}


def test_active_run_waits(store):
    failed_run(store, "b-active", ("send_orthanc", True))
    states = {"batch__b-active": "running"}
    d = decisions_by_batch(store, limit=3, run_state=states.get)["b-active"]
    assert d.decision == "wait" and d.run_id is None and "still active" in d.reason
    assert store.get_batch("b-active").rerun_count == 0
    states["batch__b-active"] = "failed"
    assert decisions_by_batch(store, limit=3, run_state=states.get)["b-active"].decision == "rerun"


def test_requested_run_that_ended_without_starting_is_left(store):
    failed_run(store, "b-lost", ("send_orthanc", True))
    first = decisions_by_batch(store, limit=3)["b-lost"]
    states = {first.run_id: "failed"}
    d = decisions_by_batch(store, limit=3, run_state=states.get)["b-lost"]
    assert d.decision == "leave" and "ended without starting" in d.reason


def test_limit_comes_from_the_environment(store, monkeypatch):
    failed_run(store, "b-env", ("send_orthanc", True))
    monkeypatch.setenv("RELAY_MAX_RERUNS", "0")
    d = decisions_by_batch(store)["b-env"]
    assert d.decision == "leave" and "0 of 0" in d.reason
    monkeypatch.setenv("RELAY_MAX_RERUNS", "many")
    with pytest.raises(operations.OperationError, match="RELAY_MAX_RERUNS"):
        operations.decide_reruns(store)
    monkeypatch.delenv("RELAY_MAX_RERUNS")
    assert operations.max_reruns() == 3


def test_leave_decision_is_recorded_once(store):
    failed_run(store, "b-once", ("cleanup", False))
    decisions_by_batch(store, limit=3)
    at = store.get_batch("b-once").last_decision["at"]
    decisions_by_batch(store, limit=3)
    assert store.get_batch("b-once").last_decision["at"] == at


def test_two_deciders_cannot_spend_the_same_attempt(store):
    failed_run(store, "b-race", ("send_orthanc", True))
    stale = store.get_batch("b-race")
    operations.decide_reruns(store, limit=3)
    # A second decider that read the batch before the first one recorded its decision:
    assert store.record_decision("b-race", {"decision": "rerun"}, expect_rerun_count=stale.rerun_count,
                                 count_rerun=True) is None
    assert store.get_batch("b-race").rerun_count == 1


def test_decisions_hold_no_folder_name(store):
    failed_run(store, "b-phi1", ("send_orthanc", True))
    failed_run(store, "b-phi2", ("replace_identifiers", False))
    blob = json.dumps([d.public() for d in operations.decide_reruns(store, limit=3)])
    blob += json.dumps([b.public() for b in store.list_batches()])
    assert FOLDER not in blob


def test_run_started_at_follows_each_run(store):
    store.create_batch("b-start", FOLDER)
    assert store.get_batch("b-start").run_started_at is None
    store.set_status("b-start", "PROCESSING")
    first = store.get_batch("b-start").run_started_at
    store.set_status("b-start", "DONEPROCESSING")
    store.set_status("b-start", "ERROR")
    assert store.get_batch("b-start").run_started_at == first
    store.set_status("b-start", "PROCESSING")
    assert store.get_batch("b-start").run_started_at > first


def test_batch_left_in_flight_by_a_failed_run_is_marked_and_rerun(store):
    store.create_batch("b-stuck", FOLDER)
    store.set_status("b-stuck", "PROCESSING", run_id="batch__b-stuck")  # then the worker and the database went away
    store.create_batch("b-queued", FOLDER)  # NEW, its run not created yet
    store.create_batch("b-running", FOLDER)
    store.set_status("b-running", "PROCESSING", run_id="batch__b-running")
    states = {"batch__b-stuck": "failed", "batch__b-running": "running"}
    decisions = decisions_by_batch(store, limit=3, run_state=states.get)
    assert decisions["b-stuck"].decision == "rerun"
    batch = store.get_batch("b-stuck")
    assert batch.status == "ERROR" and batch.errors[-1]["transient"] is True
    assert "b-queued" not in decisions and "b-running" not in decisions
    assert store.get_batch("b-queued").status == "NEW" and store.get_batch("b-running").status == "PROCESSING"
    assert FOLDER not in json.dumps(batch.errors)
