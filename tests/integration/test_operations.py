"""Operations for the person on call (quarantine list / release, requeue refusals, status) on real services.

A requeue through a real Airflow is in tests/e2e/test_rerun_dag.py; here the run it starts is played by calling the
pipeline steps, the way test_pipeline.py does.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pydicom
import pytest
import requests

from dicom_relay import cli, operations, pipeline
from dicom_relay.airflow_client import AirflowClient
from dicom_relay.config import Settings
from dicom_relay.destinations.gcs import GcsDestination
from tests.support.samples import generate_ct_study
from dicom_relay.status import StatusStore

pytestmark = pytest.mark.integration

STEPS = list(pipeline.STEPS.values())


@pytest.fixture
def settings(make_relay_env, monkeypatch) -> Settings:
    env = make_relay_env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("AIRFLOW_URL", "AIRFLOW_USER", "AIRFLOW_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    return Settings.from_env(env)


def claim(settings: Settings, source: Path, name: str) -> str:
    staging = settings.inbox / f"{name}.tmp0001"
    shutil.copytree(source, staging)
    os.rename(staging, settings.inbox / name)
    runs = pipeline.claim_finished_folders(settings)
    assert len(runs) == 1
    batch_id = runs[0]["conf"]["batch_id"]
    pipeline.mark_dispatched(settings, [batch_id])
    return batch_id


def run_all(batch_id: str, settings: Settings, options: pipeline.RunOptions | None = None) -> list[dict]:
    return [step(batch_id, settings, options) for step in STEPS]


def instances_in_orthanc(orthanc, pseudonym: str) -> list[str]:
    found = requests.post(f"{orthanc.url}/tools/find", auth=orthanc.auth, timeout=30,
                          json={"Level": "Instance", "Query": {"PatientID": pseudonym}, "Expand": True}).json()
    return [i["MainDicomTags"]["SOPInstanceUID"] for i in found]


def index_of(settings: Settings, batch_id: str) -> dict:
    return json.loads((settings.batches_dir / batch_id / "quarantine" / "index.json").read_text())


def test_release_of_a_held_back_file_into_a_done_batch_then_requeue_delivers_it_once(settings, tmp_path, orthanc,
                                                                                      gcs_bucket, capsys):
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-OPS-BURNED", n_instances=3, rows=16, columns=16)
    burned = study.folder / "IM000003.dcm"
    ds = pydicom.dcmread(burned)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(burned)
    original_bytes = burned.read_bytes()
    batch_id = claim(settings, study.folder, "ACC-OPS-BURNED")
    run_all(batch_id, settings, pipeline.RunOptions(deid={"pixels": "hold"}))  # held back unread
    store = StatusStore(settings.db_url)
    batch = store.get_batch(batch_id)
    assert batch.status == "HELD_BACK" and batch.counts == {"DONE": 2, "ERROR": 1}
    pseudonym = store.instances(batch_id)[0].patient_pseudonym
    assert len(instances_in_orthanc(orthanc, pseudonym)) == 2

    entries = operations.quarantine_entries(settings, batch_id)
    assert [(e.label, "BurnedInAnnotation" in e.reason, e.size_bytes) for e in entries] == [
        ("q0001", True, len(original_bytes))]
    # A person checked the pixels, and releases the file.
    assert cli.main(["quarantine", "release", batch_id, "q0001"]) == 0
    out = capsys.readouterr().out
    assert f"dicom-relay requeue {batch_id}" in out and "IM000003" not in out
    root = settings.batches_dir / batch_id
    assert (root / "incoming" / "IM000003.dcm").read_bytes() == original_bytes
    assert not (root / "quarantine" / "q0001").exists()
    assert index_of(settings, batch_id)["q0001"]["released_at"]
    assert operations.quarantine_entries(settings, batch_id) == []
    assert [e.label for e in operations.quarantine_entries(settings, batch_id, include_released=True)] == ["q0001"]
    batch = store.get_batch(batch_id)
    assert batch.status == "NEW"  # it has a file to process again: a plain requeue will do
    assert batch.errors[-1]["message"].startswith("file q0001 released") and batch.errors[-1]["task"] == "quarantine"
    assert batch.counts == {"DONE": 2, "NEW": 1}

    # The requeued run, with the profile option the person chose for it.
    run_all(batch_id, settings, pipeline.RunOptions(deid={"quarantine_burned_in": False}))
    batch = store.get_batch(batch_id)
    assert batch.status == "DONE" and batch.counts == {"DONE": 3}
    uids = instances_in_orthanc(orthanc, pseudonym)
    assert len(uids) == 3 and len(set(uids)) == 3  # each instance once
    gcs = GcsDestination.from_settings(settings)
    dcm = [o.name for o in gcs.list_objects() if o.name.endswith(".dcm")]
    assert len(dcm) == 3
    study_uid = store.instances(batch_id)[0].deid_study_instance_uid
    manifest = json.loads(gcs.bucket.blob(f"{settings.gcs_prefix}/{pseudonym}/{study_uid}/manifest.json")
                          .download_as_bytes())
    assert len(manifest["instances"]) == 3
    assert not (root / "incoming").exists()


def test_released_unreadable_file_is_quarantined_again_under_a_new_label(settings, tmp_path, orthanc):
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-OPS-AGAIN", n_instances=2, rows=16, columns=16)
    (study.folder / "a-junk.bin").write_bytes(b"junk" * 10)
    (study.folder / "b-empty.dcm").write_bytes(b"")
    batch_id = claim(settings, study.folder, "ACC-OPS-AGAIN")
    store = StatusStore(settings.db_url)
    pipeline.import_batch(batch_id, settings)
    down = settings.with_overrides(orthanc_dicom_port=1, orthanc_url="http://127.0.0.1:1")
    for step in STEPS[1:3]:
        step(batch_id, settings)
    with pytest.raises(Exception):
        pipeline.send_orthanc(batch_id, down)
    assert store.get_batch(batch_id).status == "ERROR"
    assert sorted(index_of(settings, batch_id)) == ["q0001", "q0002"]
    operations.release(settings, store, batch_id, "q0001")
    assert store.get_batch(batch_id).status == "ERROR"  # not DONE: the status is left as it was
    run_all(batch_id, settings)
    index = index_of(settings, batch_id)
    # Nothing lost: the released file is held again under a new label; the other record is untouched.
    assert sorted(index) == ["q0001", "q0002", "q0003"]
    assert index["q0003"]["relpath"] == index["q0001"]["relpath"] == "a-junk.bin"
    assert index["q0002"]["relpath"] == "b-empty.dcm" and not index["q0002"].get("released_at")
    root = settings.batches_dir / batch_id / "quarantine"
    assert (root / "q0003" / "a-junk.bin").read_bytes() == b"junk" * 10
    assert (root / "q0002" / "b-empty.dcm").exists()
    assert store.get_batch(batch_id).status == "HELD_BACK"


def test_release_refusals(settings, tmp_path):
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-OPS-NO", n_instances=1, rows=16, columns=16)
    (study.folder / "junk.bin").write_bytes(b"junk")
    os.symlink("/etc/hostname", study.folder / "link.dcm")
    staging = settings.inbox / "ACC-OPS-NO.tmp1"
    shutil.copytree(study.folder, staging, symlinks=True)
    os.rename(staging, settings.inbox / "ACC-OPS-NO")
    batch_id = pipeline.claim_finished_folders(settings)[0]["conf"]["batch_id"]
    store = StatusStore(settings.db_url)
    pipeline.import_batch(batch_id, settings)
    labels = {v["relpath"]: k for k, v in index_of(settings, batch_id).items()}
    with pytest.raises(operations.OperationError, match="PROCESSING"):
        operations.release(settings, store, batch_id, labels["junk.bin"])  # a run is working on it
    store.set_status(batch_id, "ERROR")
    with pytest.raises(operations.OperationError, match="symbolic link"):
        operations.release(settings, store, batch_id, labels["link.dcm"])
    with pytest.raises(operations.OperationError, match="no quarantined file q0099"):
        operations.release(settings, store, batch_id, "q0099")
    with pytest.raises(operations.OperationError, match="looks like q0001"):
        operations.release(settings, store, batch_id, "../../etc")
    with pytest.raises(operations.OperationError, match="not a batch id"):
        operations.release(settings, store, "../" + batch_id, "q0001")
    (settings.batches_dir / batch_id / "incoming" / "junk.bin").write_bytes(b"a newer file")
    with pytest.raises(operations.OperationError, match="already exists"):
        operations.release(settings, store, batch_id, labels["junk.bin"])
    (settings.batches_dir / batch_id / "incoming" / "junk.bin").unlink()
    operations.release(settings, store, batch_id, labels["junk.bin"])
    with pytest.raises(operations.OperationError, match="released already"):
        operations.release(settings, store, batch_id, labels["junk.bin"])
    assert cli.main(["quarantine", "release", batch_id, "q0099"]) == 1
    assert cli.main(["quarantine", "list", "no-such-batch"]) == 1


def test_requeue_refusals_need_no_airflow(settings, tmp_path, capsys, monkeypatch):
    store = StatusStore(settings.db_url)
    store.create_batch("20260101T000000-aaaaaa", "ACC-SECRET")
    store.set_status("20260101T000000-aaaaaa", "DONE", finished=True)
    nowhere = AirflowClient("http://127.0.0.1:1", "admin", "x")  # never contacted for these refusals
    with pytest.raises(operations.OperationError, match="DONE"):
        operations.requeue(store, nowhere, "20260101T000000-aaaaaa")
    with pytest.raises(operations.OperationError, match="no batch"):
        operations.requeue(store, nowhere, "20260101T000000-bbbbbb")
    assert store.get_batch("20260101T000000-aaaaaa").requeue_count == 0
    # The command line: no Airflow settings, a clear message and exit 1.
    assert cli.main(["requeue", "20260101T000000-aaaaaa", "--force"]) == 1
    assert "AIRFLOW_URL" in capsys.readouterr().err
    for key, value in {"AIRFLOW_URL": "http://127.0.0.1:1", "AIRFLOW_USER": "admin", "AIRFLOW_PASSWORD": "x"}.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["requeue", "20260101T000000-aaaaaa"]) == 1
    assert "DONE" in capsys.readouterr().err
    assert cli.main(["requeue", "20260101T000000-aaaaaa", "--force"]) == 1
    assert "cannot reach Airflow" in capsys.readouterr().err


def test_status_shows_the_last_decision(settings, capsys):
    store = StatusStore(settings.db_url)
    store.create_batch("20260101T000000-cccccc", "ACC-SECRET-STATUS")
    store.set_status("20260101T000000-cccccc", "PROCESSING", run_id="batch__20260101T000000-cccccc")
    store.add_error("20260101T000000-cccccc", "send_orthanc", "Orthanc is down", transient=True)
    operations.decide_reruns(store, limit=3)
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "last decision: rerun" in out and "rerun__20260101T000000-cccccc__1" in out
    assert cli.main(["status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["last_decision"]["decision"] == "rerun" and data[0]["rerun_count"] == 1
    assert "ACC-SECRET-STATUS" not in json.dumps(data)
    assert cli.main(["status", "--batch", "20260101T000000-cccccc"]) == 0
    assert "(transient)" in capsys.readouterr().out
