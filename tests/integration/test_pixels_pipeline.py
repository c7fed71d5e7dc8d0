"""Burned-in text through the pipeline: an ultrasound image is cleaned and delivered with its pixel record in the
status table; a run may not weaken the deployment's pixel policy (real PostgreSQL, Orthanc, GCS emulator)."""

from __future__ import annotations

import pytest
import requests

from dicom_relay import pipeline
from dicom_relay.errors import PermanentError
from tests.support.samples import generate_ct_study
from dicom_relay.status import StatusStore
from tests.unit.deid.pixels.render import render, us_dataset

from .test_pipeline import claim_one, run_all

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(relay_settings):
    return relay_settings


def _folder(tmp_path, name):
    study = generate_ct_study(tmp_path / name, patient_id="MRN-PIX-1", n_instances=2, rows=16, columns=16)
    us = us_dataset(render(21, lines=["DOE, JANE", "ID: 84213377", "MI 0.8 TIS 0.3"], sizes=(16, 20)).rgb)
    us.save_as(study.folder / "US0001.dcm", enforce_file_format=True)
    return study.folder


def test_an_ultrasound_image_is_cleaned_delivered_and_recorded(settings, tmp_path, orthanc):
    batch_id = claim_one(settings, _folder(tmp_path, "src"), "ACC-PIX-1")
    summaries = run_all(batch_id, settings)
    store = StatusStore(settings.db_url)
    batch = store.get_batch(batch_id)
    assert batch.status == "DONE" and batch.counts == {"DONE": 3}, batch.errors
    deid = summaries[2]
    assert deid["pixel_policy"] == "clean" and deid["pixels_cleaned"] == 1 and deid["held_back"] == 0
    rows = {i.relpath: i for i in store.instances(batch_id)}
    record = rows["US0001.dcm"].pixels
    assert record["verdict"] == "clean" and record["engine"]["engine"] == "tesseract"
    assert {"ocr:PatientName", "ocr:PatientID"} <= set(record["blanked"][0]["why"])
    assert all(rows[p].pixels is None for p in rows if p != "US0001.dcm")  # CT primary: not read
    r = requests.post(f"{orthanc.url}/tools/find", auth=orthanc.auth, timeout=30, json={
        "Level": "Instance", "Query": {"PatientID": rows["US0001.dcm"].patient_pseudonym, "Modality": "US"}})
    [instance] = r.json()
    tags = requests.get(f"{orthanc.url}/instances/{instance}/simplified-tags", auth=orthanc.auth, timeout=30).json()
    assert tags["BurnedInAnnotation"] == "NO"


def test_a_run_cannot_weaken_the_deployments_pixel_policy(settings, tmp_path):
    strict = settings.with_overrides(pixel_policy="all-text")
    batch_id = claim_one(strict, _folder(tmp_path, "weak"), "ACC-PIX-2")
    with pytest.raises(PermanentError, match="weaker than the deployment's 'all-text'"):
        pipeline.import_batch(batch_id, strict, params={"pixel_policy": "clean"})
    errors = StatusStore(strict.db_url).get_batch(batch_id).errors
    assert errors[-1]["task"] == "import" and "weaker" in errors[-1]["message"]
