"""The pipeline steps without Airflow, on real PostgreSQL, Orthanc, GCS emulator and identifier service.

These cover what the end-to-end test cannot cheaply: a destination that is down, a rerun that must not send twice,
the refusal to send identified data to the cloud, bad files in a batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from dicom_relay import pipeline
from dicom_relay.config import Settings
from dicom_relay.errors import PermanentError, TransientError
from tests.support.samples import drop_atomically, generate_ct_study
from dicom_relay.status import StatusStore

pytestmark = pytest.mark.integration

STEPS = list(pipeline.STEPS.values())


@pytest.fixture
def settings(relay_settings) -> Settings:
    return relay_settings


def claim_one(settings: Settings, source: Path, name: str) -> str:
    drop_atomically(source, settings.inbox, name)
    runs = pipeline.claim_finished_folders(settings)
    assert len(runs) == 1
    batch_id = runs[0]["conf"]["batch_id"]
    assert runs[0]["trigger_run_id"] == f"batch__{batch_id}"
    pipeline.mark_dispatched(settings, [batch_id])
    return batch_id


def run_all(batch_id: str, settings: Settings, options=None) -> list[dict]:
    return [step(batch_id, settings, options) for step in STEPS]


def test_claim_is_once_per_folder(settings, tmp_path):
    study = generate_ct_study(tmp_path / "src", n_instances=2, rows=16, columns=16)
    claim_one(settings, study.folder, "ACC-ONCE")
    # Nothing new: a second cycle (a restart) requests no run.
    assert pipeline.claim_finished_folders(settings) == []


def test_batch_with_bad_files_delivers_the_rest_and_quarantines(settings, tmp_path, orthanc):
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-PIPE-1", n_instances=4, rows=32, columns=32)
    (study.folder / "garbage.bin").write_bytes(b"\x00garbage" * 50)
    (study.folder / "zero.dcm").write_bytes(b"")
    batch_id = claim_one(settings, study.folder, "ACC-BAD-FILES")
    summaries = run_all(batch_id, settings)
    assert summaries[0]["instances"] == 4 and summaries[0]["quarantined"] == 2
    batch = StatusStore(settings.db_url).get_batch(batch_id)
    assert batch.status == "HELD_BACK" and batch.has_error is True
    assert len(batch.errors) == 2 and all("quarantine" in e["message"] for e in batch.errors)
    assert all("garbage" not in e["message"] and "zero" not in e["message"] for e in batch.errors)
    root = settings.batches_dir / batch_id
    index = json.loads((root / "quarantine" / "index.json").read_text())
    assert sorted(v["relpath"] for v in index.values()) == ["garbage.bin", "zero.dcm"]
    assert summaries[-1]["quarantined_kept"] == 2
    assert not (root / "incoming").exists()


def test_orthanc_down_keeps_every_file_and_rerun_completes(settings, tmp_path, orthanc):
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-PIPE-2", n_instances=3, rows=16, columns=16)
    batch_id = claim_one(settings, study.folder, "ACC-DOWN")
    for step in STEPS[:3]:
        step(batch_id, settings)
    down = settings.with_overrides(orthanc_dicom_port=1, orthanc_url="http://127.0.0.1:1")
    with pytest.raises(TransientError):
        pipeline.send_orthanc(batch_id, down)
    with pytest.raises(PermanentError, match="not verified"):
        pipeline.cleanup(batch_id, down)
    store = StatusStore(settings.db_url)
    batch = store.get_batch(batch_id)
    assert batch.status == "ERROR" and batch.errors[0]["transient"] is True
    root = settings.batches_dir / batch_id
    assert len(list((root / "incoming").iterdir())) == 3  # nothing lost
    # The destination is back: the rerun goes through and sends each instance once.
    run_all(batch_id, settings)
    assert store.get_batch(batch_id).status == "DONE"
    auth = (orthanc.user, orthanc.password)
    found = requests.post(f"{orthanc.url}/tools/find", auth=auth, timeout=30,
                          json={"Level": "Instance", "Query": {"PatientID": store.instances(batch_id)[0].patient_pseudonym}}).json()
    assert len(found) == 3


def test_rerun_after_partial_delivery_sends_nothing_twice(settings, tmp_path, gcs_bucket):
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-PIPE-3", n_instances=3, rows=16, columns=16)
    batch_id = claim_one(settings, study.folder, "ACC-PARTIAL")
    run_all(batch_id, settings, pipeline.RunOptions(send_gcs=True, send_orthanc=True))[:5]
    store = StatusStore(settings.db_url)
    assert store.get_batch(batch_id).status == "DONE"
    # A fresh batch, delivered to both, then every step run again before cleanup.
    study2 = generate_ct_study(tmp_path / "src2", patient_id="MRN-PIPE-3", n_instances=3, rows=16, columns=16,
                               study_date="20240505")
    b2 = claim_one(settings, study2.folder, "ACC-PARTIAL-2")
    for step in STEPS[:5]:
        step(b2, settings)
    again = [step(b2, settings) for step in STEPS[:5]]
    assert again[3]["stored"] == 0 and again[3]["already_present"] == 0  # verified before: not even asked again
    assert again[4]["uploaded"] == 0
    pipeline.cleanup(b2, settings)
    assert store.get_batch(b2).status == "DONE"


def test_gcs_refused_without_deidentification(settings, tmp_path):
    study = generate_ct_study(tmp_path / "src", n_instances=2, rows=16, columns=16)
    batch_id = claim_one(settings, study.folder, "ACC-NODEID")
    options = pipeline.RunOptions(deidentify=False, send_orthanc=False, send_gcs=True)
    for step in STEPS[:4]:
        step(batch_id, settings, options)
    with pytest.raises(PermanentError, match="without de-identification"):
        pipeline.send_gcs(batch_id, settings, options)
    assert len(list((settings.batches_dir / batch_id / "incoming").iterdir())) == 2


def test_missing_pseudonym_fails_closed(settings, tmp_path):
    from dicom_relay.identifiers import EntityResult

    class NoPseudonym:
        name = "broken"

        def lookup(self, study_name, entities):
            return [EntityResult(e.id, e.id_source, "", 0, None, ()) for e in entities]

    study = generate_ct_study(tmp_path / "src", patient_id="MRN-SECRET-99", n_instances=1, rows=16, columns=16)
    from dicom_relay.dicom_import import index_folder

    entities = pipeline.build_entities(index_folder(study.folder), "MRN")
    with pytest.raises(PermanentError) as info:
        pipeline.pseudonym_mapping(entities, NoPseudonym().lookup("b", entities))
    assert "MRN-SECRET-99" not in str(info.value) and "patient 1 of 1" in str(info.value)


def test_empty_folder_is_empty_not_lost(settings, tmp_path):
    (tmp_path / "empty").mkdir()
    batch_id = claim_one(settings, tmp_path / "empty", "ACC-EMPTY")
    with pytest.raises(PermanentError, match="no readable DICOM"):
        pipeline.import_batch(batch_id, settings)
    assert StatusStore(settings.db_url).get_batch(batch_id).status == "EMPTY"


def test_status_rows_lost_after_import_fail_the_step_not_report_zero(settings, tmp_path):
    import psycopg

    study = generate_ct_study(tmp_path / "src", patient_id="MRN-PIPE-LOST", n_instances=2, rows=16, columns=16)
    batch_id = claim_one(settings, study.folder, "ACC-LOST-ROWS")
    for step in STEPS[:2]:
        step(batch_id, settings)
    # A restored or re-created status database: the batch row is there, its instance rows are not.
    with psycopg.connect(settings.db_url) as conn:
        conn.execute("DELETE FROM relay_instance WHERE batch_id = %s", (batch_id,))
    with pytest.raises(PermanentError, match="rerun the run from import"):
        pipeline.replace_identifiers(batch_id, settings)
    assert len(list((settings.batches_dir / batch_id / "incoming").rglob("*.dcm"))) == 2  # nothing lost


def test_large_study_uses_a_process_pool_with_identical_output(settings, tmp_path):
    n = pipeline.DEID_POOL_MIN_INSTANCES + 10
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-POOL", n_instances=n, n_series=3, rows=8, columns=8)
    batch_id = claim_one(settings, study.folder, "ACC-POOL")
    for step in STEPS[:2]:
        step(batch_id, settings)
    deid_dir = settings.batches_dir / batch_id / "deid"
    pooled = settings.with_overrides(deid_workers=2)
    summary = pipeline.replace_identifiers(batch_id, pooled)
    assert summary["deidentified"] == n and summary["verified_no_leak"] is True
    first = {p.name: p.read_bytes() for p in deid_dir.iterdir()}
    pipeline.replace_identifiers(batch_id, settings.with_overrides(deid_workers=1))
    assert {p.name: p.read_bytes() for p in deid_dir.iterdir()} == first
    for data in first.values():
        for value in study.identifiers():
            assert value.encode() not in data


@pytest.mark.parametrize("params", [
    {"deidentify": False},
    {"deid_options": {"retain_uids": True}},
    {"deid_options": {"dates": "full"}},
], ids=["deidentify-false", "retain-uids", "full-dates"])
def test_a_weaker_run_fails_at_import_and_sends_nothing(settings, tmp_path, orthanc, params):
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-PIPE-WEAK", n_instances=2, rows=16, columns=16)
    batch_id = claim_one(settings, study.folder, "ACC-WEAKER")
    for step in STEPS:
        with pytest.raises(PermanentError, match="weaken de-identification.*RELAY_ALLOW_UNSAFE_OVERRIDES"):
            step(batch_id, settings, params=params)
    store = StatusStore(settings.db_url)
    batch = store.get_batch(batch_id)
    assert batch.status == "ERROR" and batch.errors[0]["task"] == "import"
    assert batch.errors[0]["transient"] is False  # rerun_errors leaves it for a person
    assert store.instances(batch_id) == []  # refused before the folder was even read
    assert not (settings.batches_dir / batch_id / "deid").exists()
    auth = (orthanc.user, orthanc.password)
    found = requests.post(f"{orthanc.url}/tools/find", auth=auth, timeout=30,
                          json={"Level": "Instance", "Query": {"PatientID": "MRN-PIPE-WEAK"}}).json()
    assert found == []
    assert len(list((settings.batches_dir / batch_id / "incoming").iterdir())) == 2  # nothing lost


def test_a_deployment_allowing_unsafe_overrides_accepts_a_weaker_run(make_relay_env, tmp_path):
    settings = Settings.from_env(make_relay_env(RELAY_ALLOW_UNSAFE_OVERRIDES="true"))
    study = generate_ct_study(tmp_path / "src", n_instances=2, rows=16, columns=16)
    batch_id = claim_one(settings, study.folder, "ACC-UNSAFE-OK")
    summary = pipeline.import_batch(batch_id, settings, params={"deid_options": {"retain_uids": True}})
    assert summary["instances"] == 2


def test_orthanc_password_is_checked_by_the_first_step_and_by_send_orthanc_only(settings, tmp_path, orthanc):
    # Under Airflow only import and send_orthanc read Orthanc's Connection (tasks.STEP_CONNECTIONS); the steps
    # between must not refuse to start for a password they do not hold, and the two that need it must.
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-PIPE-SECRET", n_instances=2, rows=16, columns=16)
    batch_id = claim_one(settings, study.folder, "ACC-SECRET")
    without = settings.with_overrides(orthanc_password="")
    with pytest.raises(PermanentError, match="ORTHANC_PASSWORD"):
        pipeline.import_batch(batch_id, without)
    pipeline.import_batch(batch_id, settings)
    pipeline.get_identifiers(batch_id, without)
    pipeline.replace_identifiers(batch_id, without)
    with pytest.raises(PermanentError, match="ORTHANC_PASSWORD"):
        pipeline.send_orthanc(batch_id, without)
    assert pipeline.send_orthanc(batch_id, settings)["verified"] == 2
