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
