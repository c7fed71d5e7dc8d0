"""Indexing a folder: readable instances go through; everything else is rejected with a reason and no PHI."""

import os

from pydicom.data import get_testdata_file

from dicom_relay.dicom_import import index_folder
from tests.support.samples import generate_ct_study


def test_index_real_and_bad_files(tmp_path):
    study = generate_ct_study(tmp_path / "in", n_instances=4, n_series=2, rows=16, columns=16)
    folder = study.folder
    (folder / "sub").mkdir()
    (folder / "sub" / "mr.dcm").write_bytes(open(get_testdata_file("MR_small.dcm"), "rb").read())
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "notes.txt").write_text("not dicom at all, really not")
    data = (folder / "IM000001.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(data[:300])
    (folder / "copy of IM1.dcm").write_bytes(data)
    os.symlink("/etc/passwd", folder / "link.dcm")
    idx = index_folder(folder)
    assert sorted(i.relpath for i in idx.instances) == [
        "IM000001.dcm", "IM000002.dcm", "IM000003.dcm", "IM000004.dcm", "sub/mr.dcm"]
    reasons = {r.relpath: r.reason for r in idx.rejected}
    assert set(reasons) == {"empty.dcm", "notes.txt", "truncated.dcm", "copy of IM1.dcm", "link.dcm"}
    assert "empty" in reasons["empty.dcm"]
    assert reasons["notes.txt"].startswith("is not a DICOM file")
    assert reasons["truncated.dcm"].startswith(("is truncated", "is not a usable DICOM instance"))
    assert "symbolic link" in reasons["link.dcm"]
    assert "repeats the SOP Instance UID" in reasons["copy of IM1.dcm"]
    assert len(idx.studies) == 2 and len(idx.series) == 3
    for reason in reasons.values():
        assert study.patient_id not in reason and "IM000001" not in reason


def test_dicomdir_is_rejected(tmp_path):
    src = get_testdata_file("DICOMDIR")
    (tmp_path / "DICOMDIR").write_bytes(open(src, "rb").read())
    idx = index_folder(tmp_path)
    assert idx.instances == [] and "DICOMDIR" in idx.rejected[0].reason
