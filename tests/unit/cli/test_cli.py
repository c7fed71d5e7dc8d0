"""The dicom-relay command as a person runs it: a real subprocess, real files (the commands that need the status
database are in tests/integration/test_cli_status.py)."""

import json
import shutil

import pydicom
import pytest

from tests.support.cli import run_cli as relay
from tests.support.samples import generate_ct_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return generate_ct_study(tmp_path_factory.mktemp("cli") / "ACC-CLI-1", patient_id="MRN-CLI-42",
                             n_instances=3, n_series=2, rows=32, columns=32)


def test_deidentify_offline_then_verify(study, tmp_path):
    out = tmp_path / "out"
    r = relay("deidentify", str(study.folder), str(out), env={"RELAY_SECRET_KEY": "cli-test-key"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == {"delivered": 3, "held_back": 0, "rejected": 0, "duplicates": 0,
                                                     "leaks": 0}
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 3
    ds = pydicom.dcmread(files[0])
    assert ds.PatientIdentityRemoved == "YES" and ds.PatientID != study.patient_id
    for f in files:
        data = f.read_bytes()
        for value in study.identifiers():
            assert value.encode() not in data
    # Same key, same pseudonyms and UIDs: a second run writes byte-identical files.
    again = tmp_path / "again"
    relay("deidentify", str(study.folder), str(again), env={"RELAY_SECRET_KEY": "cli-test-key"})
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in sorted(again.glob("*.dcm"))]
    assert relay("verify", str(study.folder), str(out)).returncode == 0
    keyed = relay("verify", str(study.folder), str(out), env={"RELAY_SECRET_KEY": "cli-test-key"})
    assert keyed.returncode == 0, keyed.stdout
    assert json.loads(keyed.stdout.splitlines()[-1]) == {"originals": 3, "checked": 3, "leaks": 0, "matched_by_key": True}
    # With the key, the date shifts are known: an original date put back unshifted is found.
    ds = pydicom.dcmread(files[1])
    ds.ContentDate = study.study_date
    ds.save_as(files[1])
    r = relay("verify", str(study.folder), str(out), env={"RELAY_SECRET_KEY": "cli-test-key"})
    assert r.returncode == 1 and f"{files[1].name}: original identifying value #" in r.stdout
    assert "ContentDate" in r.stdout and study.study_date not in r.stdout


def test_verify_finds_the_originals_in_a_copy(study, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(study.folder, copy)
    r = relay("verify", str(study.folder), str(copy))
    assert r.returncode == 1
    assert "LEAK" in r.stdout
    assert study.patient_id not in r.stdout  # the report names attributes, not the values


def test_deidentify_needs_a_key(study, tmp_path):
    r = relay("deidentify", str(study.folder), str(tmp_path / "o"))
    assert r.returncode == 2 and "RELAY_SECRET_KEY" in r.stderr


def test_deidentify_takes_profile_options(study, tmp_path):
    out = tmp_path / "full"
    r = relay("deidentify", str(study.folder), str(out), "--option", "dates=full",
              env={"RELAY_SECRET_KEY": "k"})
    assert r.returncode == 0, r.stderr
    ds = pydicom.dcmread(next(out.glob("*.dcm")))
    assert ds.StudyDate == study.study_date
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    bad = relay("deidentify", str(study.folder), str(out), "--option", "retain_everything=yes",
                env={"RELAY_SECRET_KEY": "k"})
    assert bad.returncode != 0


def test_report_maps_every_input_to_its_outcome_and_is_private(study, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(study.folder, src)
    first = sorted(src.glob("*.dcm"))[0]
    shutil.copy(first, src / "zz-copy-of-first.dcm")  # a repeated SOP Instance UID
    (src / "notes.txt").write_text("not DICOM")
    report = tmp_path / "report.json"
    r = relay("deidentify", str(src), str(tmp_path / "out"), "--report", str(report),
              env={"RELAY_SECRET_KEY": "cli-test-key"})
    assert r.returncode == 0, r.stderr
    summary = {"delivered": 3, "held_back": 0, "rejected": 1, "duplicates": 1, "leaks": 0}
    assert json.loads(r.stdout.splitlines()[-1]) == summary
    assert report.stat().st_mode & 0o777 == 0o600
    doc = json.loads(report.read_text())
    assert doc["summary"] == summary
    by_input = {f["input"]: f for f in doc["files"]}
    assert set(by_input) == {p.name for p in src.iterdir()}
    assert by_input["notes.txt"]["outcome"] == "rejected" and by_input["notes.txt"]["output"] is None
    assert by_input["zz-copy-of-first.dcm"]["outcome"] == "duplicate"
    delivered = [f for f in doc["files"] if f["outcome"] == "delivered"]
    assert sorted(f["output"] for f in delivered) == sorted(p.name for p in (tmp_path / "out").iterdir())
    assert all(f["reason"] is None for f in delivered)
    # The terminal never names an input file.
    assert "notes.txt" not in r.stdout + r.stderr and "zz-copy" not in r.stdout + r.stderr


def test_an_output_with_a_leak_is_removed_and_reported(study, tmp_path):
    """Fail closed: a profile that keeps the institution (retain_institution_identity) while the operator
    planted the patient's ID in InstitutionName. The engine keeps it, verification finds it, the output goes."""
    src = tmp_path / "in"
    shutil.copytree(study.folder, src)
    victim = sorted(src.glob("*.dcm"))[1]
    ds = pydicom.dcmread(victim)
    ds.InstitutionName = f"Ward of {study.patient_id}"
    ds.save_as(victim)
    out, report = tmp_path / "out", tmp_path / "r.json"
    r = relay("deidentify", str(src), str(out), "--report", str(report),
              "--option", "retain_institution_identity=true", env={"RELAY_SECRET_KEY": "cli-test-key"})
    assert r.returncode == 1
    assert json.loads(r.stdout.splitlines()[-1])["leaks"] == 1
    doc = json.loads(report.read_text())
    [leak] = [f for f in doc["files"] if f["outcome"] == "leak"]
    assert leak["input"] == victim.name and leak["output"] is None
    assert "InstitutionName" in leak["reason"] and study.patient_id not in leak["reason"]
    assert len(list(out.iterdir())) == 2  # the two clean instances stay, the leaking one is gone
    assert study.patient_id not in r.stdout + r.stderr + report.read_text()


def test_status_without_database_says_what_to_do():
    r = relay("status", env={"RELAY_DB_URL": "postgresql://relay:pw-not-shown@127.0.0.1:1/relay"})
    assert r.returncode == 2
    assert "stack.env" in r.stderr and "pw-not-shown" not in r.stderr


def test_deidentify_pixels_policy_and_the_pixel_record_in_the_report(tmp_path):
    from tests.unit.deid.pixels.render import render, us_dataset

    src = tmp_path / "in"
    src.mkdir()
    us_dataset(render(31, lines=["DOE, JANE", "ID: 84213377"], sizes=(16, 20)).rgb).save_as(
        src / "us.dcm", enforce_file_format=True)
    env = {"RELAY_SECRET_KEY": "cli-test-key"}
    r = relay("deidentify", str(src), str(tmp_path / "out"), "--report", str(tmp_path / "r.json"), env=env)
    assert r.returncode == 0, r.stderr
    [record] = json.loads((tmp_path / "r.json").read_text())["files"]
    assert record["outcome"] == "delivered"
    assert record["pixels"]["verdict"] == "clean" and record["pixels"]["policy"] == "clean"
    assert "ocr:PatientName" in record["pixels"]["blanked"][0]["why"]
    # --pixels hold: held back, unread.
    r = relay("deidentify", str(src), str(tmp_path / "held"), "--pixels", "hold", env=env)
    assert json.loads(r.stdout.splitlines()[-1])["held_back"] == 1 and "pixel policy hold" in r.stderr
    # A weaker policy than the deployment's is refused, before anything is written.
    r = relay("deidentify", str(src), str(tmp_path / "weak"), "--pixels", "clean",
              env={**env, "RELAY_PIXEL_POLICY": "all-text"})
    assert r.returncode == 2 and "weaker" in r.stderr and not (tmp_path / "weak").exists()
