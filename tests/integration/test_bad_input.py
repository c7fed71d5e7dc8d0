"""Bad input at the inbox, driven through the pipeline steps against real PostgreSQL, Orthanc, GCS emulator and
identifier service (like test_pipeline.py): whatever is readable goes through, whatever is not is kept in
quarantine and named in the errors by label only; nothing is lost and nothing is sent twice.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from dicom_relay import cli, inbox, operations, pipeline
from dicom_relay.config import Settings
from dicom_relay.destinations.gcs import GcsDestination
from dicom_relay.errors import PermanentError
from tests.support.samples import generate_ct_study
from dicom_relay.status import StatusStore

pytestmark = pytest.mark.integration

STEPS = list(pipeline.STEPS.values())


@pytest.fixture
def settings(make_relay_env, monkeypatch) -> Settings:
    env = make_relay_env()
    for key, value in env.items():  # for the CLI, which reads the environment
        monkeypatch.setenv(key, value)
    return Settings.from_env(env)


def drop(source: Path, inbox_dir: Path, name: str) -> None:
    """The sender's way (copy as NAME.tmpXXXX, then rename), copying symbolic links as links."""
    staging = inbox_dir / f"{name}.tmp0001"
    shutil.copytree(source, staging, symlinks=True)
    os.rename(staging, inbox_dir / name)


def claim_one(settings: Settings, source: Path, name: str) -> str:
    drop(source, settings.inbox, name)
    runs = pipeline.claim_finished_folders(settings)
    assert len(runs) == 1
    batch_id = runs[0]["conf"]["batch_id"]
    pipeline.mark_dispatched(settings, [batch_id])
    return batch_id


def run_all(batch_id: str, settings: Settings) -> list[dict]:
    return [step(batch_id, settings) for step in STEPS]


def orthanc_find(orthanc, level: str, query: dict) -> list[dict]:
    r = requests.post(f"{orthanc.url}/tools/find", auth=orthanc.auth, timeout=30,
                      json={"Level": level, "Query": query, "Expand": True})
    r.raise_for_status()
    return r.json()


def orthanc_instance_count(orthanc) -> int:
    return len(requests.get(f"{orthanc.url}/instances", auth=orthanc.auth, timeout=30).json())


def quarantine_index(settings: Settings, batch_id: str) -> dict:
    return json.loads((settings.batches_dir / batch_id / "quarantine" / "index.json").read_text())


def write_dicomdir(path: Path) -> None:
    """A minimal DICOMDIR (Media Storage Directory Storage) with one empty directory record sequence."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.FileSetID = "RELAYTEST"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = Sequence([])
    ds.save_as(path, enforce_file_format=True)


ODD_NAMES = [
    "sub dir/Müller 患者.dcm",     # spaces, unicode, nested
    "deep/er/-rf --no-preserve-root.dcm",  # leading dash
    "100% %s%n.dcm",               # percent signs (format strings)
    "it's \"quoted\" `x`.dcm",     # quotes and backtick
    "new\nline.dcm",               # a newline in a file name
]


def test_mixed_bad_files_deliver_the_readable_and_quarantine_the_rest(settings, tmp_path, orthanc, gcs_bucket, capsys):
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-BAD-ODD", n_instances=len(ODD_NAMES), rows=16, columns=16)
    good = sorted(study.folder.glob("*.dcm"))
    for path, odd in zip(good, ODD_NAMES):
        (study.folder / odd).parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, study.folder / odd)
    (study.folder / "notes.txt").write_text("Patient MRN-BAD-ODD called, see report\n")
    (study.folder / "zero.dcm").write_bytes(b"")
    (study.folder / "sub dir" / "trunc_header.dcm").write_bytes((study.folder / ODD_NAMES[0]).read_bytes()[:300])
    write_dicomdir(study.folder / "DICOMDIR")
    # Symbolic links pointing outside the inbox: a readable instance and a folder of them. Never followed.
    outside = generate_ct_study(tmp_path / "outside", patient_id="MRN-OUTSIDE", n_instances=2, rows=16, columns=16)
    outside_bytes = {p.name: p.read_bytes() for p in outside.folder.iterdir()}
    os.symlink(outside.folder / "IM000001.dcm", study.folder / "link.dcm")
    os.symlink(outside.folder, study.folder / "linkdir")
    before = orthanc_instance_count(orthanc)

    folder_name = "ACC 0001 ü'%\"-x"
    batch_id = claim_one(settings, study.folder, folder_name)
    summaries = run_all(batch_id, settings)

    assert summaries[0]["instances"] == len(ODD_NAMES)
    assert summaries[0]["quarantined"] == 6
    store = StatusStore(settings.db_url)
    batch = store.get_batch(batch_id)
    assert batch.status == "HELD_BACK" and batch.counts == {"DONE": len(ODD_NAMES)}
    # Delivered: every readable file exactly once, in Orthanc and in the bucket; the outside study never.
    pseudonym = store.instances(batch_id)[0].patient_pseudonym
    assert len(orthanc_find(orthanc, "Instance", {"PatientID": pseudonym})) == len(ODD_NAMES)
    assert orthanc_instance_count(orthanc) - before == len(ODD_NAMES)
    objects = GcsDestination.from_settings(settings).list_objects()
    assert len([o for o in objects if o.name.endswith(".dcm")]) == len(ODD_NAMES)
    # Kept: every unreadable thing is in quarantine with a reason, the links as links.
    index = quarantine_index(settings, batch_id)
    reasons = {v["relpath"]: v["reason"] for v in index.values()}
    assert set(reasons) == {"notes.txt", "zero.dcm", "sub dir/trunc_header.dcm", "DICOMDIR", "link.dcm", "linkdir"}
    assert "empty" in reasons["zero.dcm"] and "DICOMDIR" in reasons["DICOMDIR"]
    assert "symbolic link" in reasons["link.dcm"] and "symbolic link" in reasons["linkdir"]
    qdir = settings.batches_dir / batch_id / "quarantine"
    for label, entry in index.items():
        assert (qdir / label / entry["relpath"]).is_symlink() or (qdir / label / entry["relpath"]).is_file()
    assert {p.name: p.read_bytes() for p in outside.folder.iterdir()} == outside_bytes  # the link target untouched
    # Errors name files by label only; nothing a person typed into a file or folder name reaches the tables.
    assert sorted(e["message"].split()[1] for e in batch.errors) == sorted(index)
    public = json.dumps(batch.public()) + json.dumps(batch.summary)
    for secret in [folder_name, "MRN-BAD-ODD", "notes", "zero", "trunc", "link.dcm", "linkdir", "Müller", "quoted", "line.dcm"]:
        assert secret not in public
    assert not (settings.batches_dir / batch_id / "incoming").exists()

    # The person on call: labels, sizes and reasons, no names, unless asked for paths.
    assert cli.main(["quarantine", "list", batch_id]) == 0
    listing = capsys.readouterr().out
    assert all(label in listing for label in index) and "symbolic link" in listing
    for secret in ["notes", "zero", "trunc", "link.dcm", "linkdir", "sub dir", "Müller"]:
        assert secret not in listing
    assert cli.main(["quarantine", "list", batch_id, "--show-paths"]) == 0
    assert "notes.txt" in capsys.readouterr().out
    entries = {e.label: e for e in operations.quarantine_entries(settings, batch_id)}
    zero = next(label for label, v in index.items() if v["relpath"] == "zero.dcm")
    notes = next(label for label, v in index.items() if v["relpath"] == "notes.txt")
    assert entries[zero].size_bytes == 0 and entries[notes].size_bytes == len("Patient MRN-BAD-ODD called, see report\n")


def test_truncated_pixel_data_is_held_back_and_the_rest_delivered(settings, tmp_path, orthanc):
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-BAD-TRUNC", n_instances=3, rows=64, columns=64)
    last = study.folder / "IM000003.dcm"
    last.write_bytes(last.read_bytes()[:-3000])  # the header is intact, the pixel data is cut short
    batch_id = claim_one(settings, study.folder, "ACC-TRUNC")
    store = StatusStore(settings.db_url)
    try:
        run_all(batch_id, settings)
    except PermanentError:
        pass
    batch = store.get_batch(batch_id)
    # Whatever the pipeline decides for the truncated file, it is never lost and never half-sent.
    root = settings.batches_dir / batch_id
    kept = [p for p in root.rglob("IM000003.dcm")]
    assert len(kept) == 1, "the truncated original must be kept (incoming or quarantine)"
    pseudonym = next((i.patient_pseudonym for i in store.instances(batch_id) if i.patient_pseudonym), None)
    sent = orthanc_find(orthanc, "Instance", {"PatientID": pseudonym}) if pseudonym else []
    assert batch.status == "HELD_BACK", f"one truncated file held the whole batch back (or the batch looks clean): {batch.errors}"
    assert len(sent) == 2
    assert "quarantine" in str(kept[0].relative_to(root)) or "held back" in json.dumps(batch.errors)


def test_empty_folder_is_empty_and_kept(settings, tmp_path):
    (tmp_path / "empty").mkdir()
    batch_id = claim_one(settings, tmp_path / "empty", "ACC-EMPTY")
    with pytest.raises(PermanentError, match="no readable DICOM"):
        pipeline.import_batch(batch_id, settings)
    store = StatusStore(settings.db_url)
    batch = store.get_batch(batch_id)
    assert batch.status == "EMPTY" and batch.errors[-1]["transient"] is False
    assert (settings.batches_dir / batch_id / "incoming").is_dir()  # kept for a person, not deleted
    assert operations.decide_reruns(store, limit=3) == []  # EMPTY is never rerun automatically


def test_folder_of_junk_only_is_empty_with_its_files_in_quarantine(settings, tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("hello")
    (tmp_path / "junk" / "b.dcm").write_bytes(b"")
    batch_id = claim_one(settings, tmp_path / "junk", "ACC-JUNK")
    with pytest.raises(PermanentError):
        pipeline.import_batch(batch_id, settings)
    assert StatusStore(settings.db_url).get_batch(batch_id).status == "EMPTY"
    assert sorted(v["relpath"] for v in quarantine_index(settings, batch_id).values()) == ["a.txt", "b.dcm"]


def test_several_patients_and_studies_in_one_folder_are_never_mixed(settings, tmp_path, orthanc, gcs_bucket):
    src = tmp_path / "multi"
    a1 = generate_ct_study(src / "A1", patient_id="MRN-MULTI-A", n_instances=2, rows=16, columns=16, study_date="20240101")
    a2 = generate_ct_study(src / "A2", patient_id="MRN-MULTI-A", n_instances=3, rows=16, columns=16, study_date="20240202")
    b1 = generate_ct_study(src / "B1", patient_id="MRN-MULTI-B", n_instances=2, rows=16, columns=16, study_date="20240101")
    patient_of = {"A1": "A", "A2": "A", "B1": "B"}
    batch_id = claim_one(settings, src, "ACC-MULTI")
    summaries = run_all(batch_id, settings)
    assert summaries[0]["patients"] == 2 and summaries[0]["studies"] == 3
    assert summaries[1]["patients"] == 2

    store = StatusStore(settings.db_url)
    assert store.get_batch(batch_id).status == "DONE"
    instances = store.instances(batch_id)
    assert len(instances) == 7
    pseudonyms: dict[str, set[str]] = {"A": set(), "B": set()}
    studies: dict[str, set[str]] = {}
    for inst in instances:
        folder = inst.relpath.split("/")[0]
        pseudonyms[patient_of[folder]].add(inst.patient_pseudonym)
        studies.setdefault(folder, set()).add(inst.deid_study_instance_uid)
    assert len(pseudonyms["A"]) == 1 and len(pseudonyms["B"]) == 1 and pseudonyms["A"] != pseudonyms["B"]
    # Each original study became exactly one de-identified study, and no two became the same one.
    assert all(len(uids) == 1 for uids in studies.values())
    deid_study = {folder: next(iter(uids)) for folder, uids in studies.items()}
    assert len(set(deid_study.values())) == 3
    assert not set(deid_study.values()) & {a1.study_instance_uid, a2.study_instance_uid, b1.study_instance_uid}
    (pa,), (pb,) = pseudonyms["A"], pseudonyms["B"]
    expected = {"A1": (pa, 2), "A2": (pa, 3), "B1": (pb, 2)}
    # Orthanc: each study under its own patient's pseudonym, with exactly its instances.
    for folder, (pseudonym, count) in expected.items():
        found = orthanc_find(orthanc, "Instance", {"StudyInstanceUID": deid_study[folder]})
        assert len(found) == count
        tags = requests.get(f"{orthanc.url}/instances/{found[0]['ID']}/simplified-tags", auth=orthanc.auth, timeout=30).json()
        assert tags["PatientID"] == pseudonym
    assert {s["MainDicomTags"]["StudyInstanceUID"] for s in orthanc_find(orthanc, "Study", {"PatientID": pa})} == {
        deid_study["A1"], deid_study["A2"]}
    assert {s["MainDicomTags"]["StudyInstanceUID"] for s in orthanc_find(orthanc, "Study", {"PatientID": pb})} == {
        deid_study["B1"]}
    # GCS: objects under <prefix>/<pseudonym>/<study>/, one manifest per study naming its own patient.
    gcs = GcsDestination.from_settings(settings)
    names = [o.name for o in gcs.list_objects()]
    for folder, (pseudonym, count) in expected.items():
        prefix = f"{settings.gcs_prefix}/{pseudonym}/{deid_study[folder]}/"
        assert len([n for n in names if n.startswith(prefix) and n.endswith(".dcm")]) == count
        manifest = json.loads(gcs.bucket.blob(prefix + "manifest.json").download_as_bytes())
        assert manifest["patient_pseudonym"] == pseudonym and len(manifest["instances"]) == count
    assert len([n for n in names if n.endswith(".dcm")]) == 7


def test_repeated_sop_instance_uid_quarantines_the_second(settings, tmp_path, orthanc):
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-BAD-DUP", n_instances=3, rows=16, columns=16)
    shutil.copy(study.folder / "IM000002.dcm", study.folder / "IM000002_copy.dcm")
    batch_id = claim_one(settings, study.folder, "ACC-DUP")
    summaries = run_all(batch_id, settings)
    assert summaries[0]["instances"] == 3 and summaries[0]["quarantined"] == 1
    index = quarantine_index(settings, batch_id)
    assert [(v["relpath"], "repeats the SOP Instance UID" in v["reason"]) for v in index.values()] == [
        ("IM000002_copy.dcm", True)]
    store = StatusStore(settings.db_url)
    pseudonym = store.instances(batch_id)[0].patient_pseudonym
    assert len(orthanc_find(orthanc, "Instance", {"PatientID": pseudonym})) == 3
    assert store.get_batch(batch_id).status == "HELD_BACK"


def test_same_folder_name_dropped_again_is_a_new_batch(settings, tmp_path, orthanc):
    first = generate_ct_study(tmp_path / "s1", patient_id="MRN-AGAIN", n_instances=2, rows=16, columns=16)
    b1 = claim_one(settings, first.folder, "ACC-AGAIN")
    run_all(b1, settings)
    second = generate_ct_study(tmp_path / "s2", patient_id="MRN-AGAIN", n_instances=3, rows=16, columns=16,
                               study_date="20240606")
    b2 = claim_one(settings, second.folder, "ACC-AGAIN")
    assert b2 != b1
    run_all(b2, settings)
    store = StatusStore(settings.db_url)
    one, two = store.get_batch(b1), store.get_batch(b2)
    assert (one.status, two.status) == ("DONE", "DONE")
    assert one.folder == two.folder == "ACC-AGAIN"
    assert one.counts == {"DONE": 2} and two.counts == {"DONE": 3}
    pseudonym = store.instances(b2)[0].patient_pseudonym
    assert pseudonym == store.instances(b1)[0].patient_pseudonym  # same patient, same pseudonym
    assert len(orthanc_find(orthanc, "Instance", {"PatientID": pseudonym})) == 5


def _snapshot(folder: Path) -> dict[str, tuple[bytes, float]]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"", p.lstat().st_mtime)
            for p in sorted(folder.rglob("*"))}


def test_tmp_and_hidden_folders_are_never_touched(settings, tmp_path):
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-TMP", n_instances=2, rows=16, columns=16)
    for name in ("ACC-WAIT.tmp1234", "ACC-WAIT2.TMPabc", ".hidden"):
        shutil.copytree(study.folder, settings.inbox / name)
    (settings.inbox / "a-file.dcm").write_bytes(b"not a folder")
    before = {name: _snapshot(settings.inbox / name) for name in ("ACC-WAIT.tmp1234", "ACC-WAIT2.TMPabc", ".hidden")}
    assert pipeline.claim_finished_folders(settings) == []
    assert sorted(p.name for p in settings.inbox.iterdir()) == [".hidden", "ACC-WAIT.tmp1234", "ACC-WAIT2.TMPabc",
                                                               "a-file.dcm"]
    assert {name: _snapshot(settings.inbox / name) for name in before} == before
    assert not settings.batches_dir.exists() or list(settings.batches_dir.iterdir()) == []
    assert StatusStore(settings.db_url).list_batches() == []


def _age(folder: Path, seconds: float) -> None:
    old = time.time() - seconds
    for p in [folder, *folder.rglob("*")]:
        os.utime(p, (old, old), follow_symlinks=False)


def test_folder_renamed_while_still_being_written_waits_for_the_stability_window(settings, tmp_path):
    guarded = settings.with_overrides(stable_seconds=30.0)
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-SLOW", n_instances=3, rows=16, columns=16)
    # The sender renamed early: the folder looks finished while its last file is still being written.
    early = settings.inbox / "ACC-SLOW"
    shutil.copytree(study.folder, early)
    (early / "sub").mkdir()
    _age(early, 60)
    (early / "sub" / "IM000004.dcm").write_bytes((study.folder / "IM000001.dcm").read_bytes()[:200])
    assert inbox.finished_folders(settings.inbox, 30.0) == []
    assert pipeline.claim_finished_folders(guarded) == []
    assert early.is_dir()
    # Still being written, deep inside: the window starts again.
    (early / "sub" / "IM000004.dcm").write_bytes((study.folder / "IM000001.dcm").read_bytes())
    assert inbox.finished_folders(settings.inbox, 30.0, now=time.time() + 29) == []
    assert inbox.finished_folders(settings.inbox, 30.0, now=time.time() + 31) == ["ACC-SLOW"]
    assert pipeline.claim_finished_folders(guarded) == []
    # Quiet for the whole window: claimed, once, with every file.
    _age(early, 31)
    runs = pipeline.claim_finished_folders(guarded)
    assert len(runs) == 1 and not early.exists()
    batch_id = runs[0]["conf"]["batch_id"]
    incoming = settings.batches_dir / batch_id / "incoming"
    assert sorted(str(p.relative_to(incoming)) for p in incoming.rglob("*.dcm")) == [
        "IM000001.dcm", "IM000002.dcm", "IM000003.dcm", "sub/IM000004.dcm"]
