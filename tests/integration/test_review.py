"""Review of held-back files (dicom_relay.review) on real services: what is shown, release / discard / keep held.

The Airflow side (the HITL task under Required Actions, answered through the REST API) is in
tests/e2e/test_operator_view.py; here the new run a release requests is played by calling the pipeline steps.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from dicom_relay import review
from dicom_relay.status import StatusStore
from tests.integration.test_operations import claim, index_of, instances_in_orthanc, run_all, settings  # noqa: F401
from tests.support.samples import generate_ct_study

pytestmark = pytest.mark.integration


def held_batch(settings, tmp_path, name: str, patient: str) -> str:
    study = generate_ct_study(tmp_path / name, patient_id=patient, n_instances=2, rows=16, columns=16)
    (study.folder / "scan-notes.bin").write_bytes(b"not dicom" * 20)
    (study.folder / "empty.dcm").write_bytes(b"")
    batch_id = claim(settings, study.folder, name)
    run_all(batch_id, settings)
    return batch_id


def test_what_the_reviewer_sees_has_counts_and_reasons_by_label_only(settings, tmp_path):
    batch_id = held_batch(settings, tmp_path, "ACC-REVIEW-SHOW", "MRN-REVIEW-SHOW")
    store = StatusStore(settings.db_url)
    assert store.get_batch(batch_id).status == "HELD_BACK"
    shown = review.held_back(settings, store, batch_id)
    assert shown["held_back"] == 2 and shown["delivered"] == 2
    assert sorted(label for labels in shown["reasons"].values() for label in labels) == ["q0001", "q0002"]
    assert "is empty (0 bytes)" in shown["reasons"]
    text = json.dumps(shown) + review.summary_note(shown)
    for secret in ("scan-notes", "empty.dcm", "MRN-REVIEW-SHOW", "ACC-REVIEW-SHOW"):
        assert secret not in text
    assert review.summary_note(shown).startswith("HELD_BACK: 2 file(s) held back")


def test_discard_deletes_the_files_and_records_who_and_when(settings, tmp_path):
    batch_id = held_batch(settings, tmp_path, "ACC-REVIEW-DISCARD", "MRN-REVIEW-DISCARD")
    store = StatusStore(settings.db_url)
    at = dt.datetime(2026, 11, 29, 7, 30, tzinfo=dt.timezone.utc)
    result = review.apply(settings, store, batch_id, review.DISCARD, "op", at)
    assert result["labels"] == ["q0001", "q0002"] and result["rerun"] is False
    qdir = settings.batches_dir / batch_id / "quarantine"
    assert not (qdir / "q0001").exists() and not (qdir / "q0002").exists()
    index = index_of(settings, batch_id)
    assert index["q0001"]["discarded_by"] == "op" and index["q0001"]["discarded_at"]
    batch = store.get_batch(batch_id)
    assert batch.status == "DONE"
    assert [e["message"].startswith("file q000") and " discarded by op at " in e["message"]
            for e in batch.errors if e["task"] == "review"] == [True, True]
    assert review.held_back(settings, store, batch_id) is None


def test_keep_held_and_no_answer_leave_the_batch_held_back(settings, tmp_path):
    batch_id = held_batch(settings, tmp_path, "ACC-REVIEW-KEEP", "MRN-REVIEW-KEEP")
    store = StatusStore(settings.db_url)
    result = review.apply(settings, store, batch_id, review.KEEP_HELD, None)
    assert result["by"] == review.NO_ANSWER and result["status"] == "HELD_BACK"
    assert (settings.batches_dir / batch_id / "quarantine" / "q0001").exists()
    assert store.get_batch(batch_id).errors[-1]["message"].startswith("file q0001, q0002 kept held by nobody")
    with pytest.raises(Exception, match="one of release, discard, keep held"):
        review.apply(settings, store, batch_id, "delete everything", "op")


def test_release_then_the_new_run_delivers_the_repaired_file(settings, tmp_path, orthanc, gcs_bucket):
    """A file held back at import (truncated) is re-sent complete by its sender; release, and the new run
    de-identifies, verifies and delivers it."""
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-REVIEW-REL", n_instances=3, rows=16, columns=16)
    victim = sorted(study.folder.glob("*.dcm"))[-1]
    complete = victim.read_bytes()
    victim.write_bytes(complete[:-100])
    batch_id = claim(settings, study.folder, "ACC-REVIEW-REL")
    run_all(batch_id, settings)
    store = StatusStore(settings.db_url)
    assert store.get_batch(batch_id).status == "HELD_BACK"
    held = settings.batches_dir / batch_id / "quarantine" / "q0001" / victim.name
    held.write_bytes(complete)  # the sender re-sent the complete file
    result = review.apply(settings, store, batch_id, review.RELEASE, "admin")
    assert result["rerun"] is True and store.get_batch(batch_id).status == "NEW"
    assert store.get_batch(batch_id).errors[-1]["message"] == (
        "file q0001 released back into incoming by admin; a new run processes it")
    run_all(batch_id, settings)
    batch = store.get_batch(batch_id)
    assert batch.status == "DONE" and batch.counts == {"DONE": 3}
    pseudonym = store.instances(batch_id)[0].patient_pseudonym
    assert len(set(instances_in_orthanc(orthanc, pseudonym))) == 3
