"""The Relay batches page: what it shows, and that text from the status table is escaped."""

from dicom_relay.airflow.ui import render


def batch(**kw):
    base = {"batch_id": "20260101T000000-abcdef", "status": "ERROR", "instances": {"DONEPROCESSING": 3},
            "run_id": "batch__20260101T000000-abcdef", "updated_at": "2026-01-01T00:00:00+00:00",
            "errors": [{"task": "send_orthanc", "message": "Orthanc <b>down</b>"}],
            "last_decision": {"decision": "rerun", "reason": "transient error in send_orthanc; rerun 1 of 3"}}
    return {**base, **kw}


def test_page_shows_status_counts_errors_and_decision_escaped():
    page = render([batch()])
    assert "20260101T000000-abcdef" in page and "DONEPROCESSING=3" in page
    assert "Orthanc &lt;b&gt;down&lt;/b&gt;" in page and "<b>down</b>" not in page
    assert "rerun 1 of 3" in page


def test_empty_page_says_so():
    assert "No batches yet." in render([])


def test_rows_link_to_the_run_and_task_logs_and_mark_resolved_errors():
    b = batch(status="DONE", errors=[
        {"task": "send_orthanc", "message": "Orthanc down", "at": "2026-01-01T00:00:05+00:00", "attempt": 1,
         "resolved": True},
        {"task": "send_gcs", "message": "GCS down", "at": "2026-01-01T00:00:09+00:00", "attempt": 2,
         "resolved": False}])
    page = render([b], can_act=True, user="op")
    assert "href='../dags/process_study/runs/batch__20260101T000000-abcdef'" in page
    assert "runs/batch__20260101T000000-abcdef/tasks/send_orthanc?try_number=1'" in page
    assert "send_orthanc</a> attempt 1: Orthanc down — <span class='ok'>resolved by a later attempt" in page
    assert "send_gcs</a> attempt 2: GCS down — <span class='bad'>unresolved" in page
    assert "class='af'" in page and "window.top.history.pushState" in page  # followed by Airflow's router


def test_held_back_files_show_counts_reasons_and_the_review_link():
    b = batch(status="HELD_BACK", errors=[], held_back={"is empty (0 bytes)": ["q0002"], "is not a DICOM file": ["q0001"]})
    page = render([b], status="HELD_BACK")
    assert "<b>2</b>: 1 is empty (0 bytes) (q0002)<br>1 is not a DICOM file (q0001)" in page
    assert "runs/batch__20260101T000000-abcdef/tasks/review/required_actions" in page
    assert "<option value='HELD_BACK' selected>" in page and "id='refresh'" in page.replace('"', "'")


def test_only_users_who_may_act_get_the_requeue_button():
    assert "Requeue</button>" in render([batch()], can_act=True, user="op")
    viewer = render([batch()], can_act=False, user="viewer")
    assert "Requeue</button>" not in viewer and "needs the Op or Admin role" in viewer
