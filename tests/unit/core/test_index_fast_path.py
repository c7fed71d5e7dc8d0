"""The index's raw fast path gives exactly what the pydicom path gives, on every file it accepts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pydicom.data

from dicom_relay import dicom_import
from tests.support.samples import generate_ct_study


def _full_path(monkeypatch, path: Path, relpath: str):
    with monkeypatch.context() as m:
        m.setattr(dicom_import, "_read_instance_raw", lambda *a: None)
        return dicom_import.read_instance(path, relpath)


def test_every_pydicom_test_file_indexes_the_same_on_both_paths(monkeypatch) -> None:
    files = [Path(f) for f in pydicom.data.get_testdata_files() if os.path.isfile(f)]
    fast_used = 0
    for path in files:
        fast = dicom_import._read_instance_raw(path, path.name, path.stat().st_size)
        full = _full_path(monkeypatch, path, path.name)
        if fast is not None:
            fast_used += 1
            assert fast == full, path.name
    assert fast_used > 100  # the common case takes the fast path


def test_a_cut_file_is_left_to_the_full_path(tmp_path: Path, monkeypatch) -> None:
    study = generate_ct_study(tmp_path / "s", n_instances=1, rows=16, columns=16)
    src = next(study.folder.glob("*.dcm"))
    assert dicom_import._read_instance_raw(src, "a.dcm", src.stat().st_size) == _full_path(monkeypatch, src, "a.dcm")
    for cut in (100, 400, src.stat().st_size - 10):  # inside the preamble, the header, the pixel data
        short = tmp_path / f"cut{cut}.dcm"
        short.write_bytes(src.read_bytes()[:cut])
        assert dicom_import._read_instance_raw(short, "x", cut) is None
        assert isinstance(dicom_import.read_instance(short, "x"), dicom_import.Rejected)
    multi = tmp_path / "multi.dcm"
    shutil.copy(src, multi)
    ds = pydicom.dcmread(multi)
    ds.PatientID = "A\\B"  # several values: pydicom decides how they read
    ds.save_as(multi)
    assert dicom_import._read_instance_raw(multi, "m", multi.stat().st_size) is None
