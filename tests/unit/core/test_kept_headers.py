"""The index's parsed headers, used by de-identification in the same process (dicom-relay deidentify)."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest

from dicom_relay.deid import Deidentifier, PatientIdentity
from dicom_relay.dicom_import import KeptHeaders, index_folder
from dicom_relay.folder_deid import deidentify_folder, instance_patient_key
from tests.support.samples import generate_ct_study


def _run(study, index, out: Path, headers) -> dict[str, bytes]:
    identities = {instance_patient_key(i): PatientIdentity("PSEUDO-K", 3, {study.accession_number: "ACC-K"})
                  for i in index.instances}
    d = Deidentifier("k-kept")
    run = deidentify_folder(study.folder, index.instances, identities, d, out, headers=headers)
    assert not run.leaks and d.raw_path_used == len(index.instances)
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.dcm"))}


@pytest.fixture(autouse=True)
def _settled_at_once(monkeypatch):
    """The files here were written a moment ago: kept at once (the one-second wait is tested on its own)."""
    monkeypatch.setattr(KeptHeaders, "SETTLED_NS", 0)


@pytest.mark.parametrize("limit, value", [
    ("SETTLED_NS", 1_000_000_000),  # a file changed within the last second is not kept
    ("LIMIT", 1),  # headers are kept within a limit of bytes
])
def test_headers_are_not_kept_for_fresh_files_nor_beyond_the_limit(tmp_path: Path, monkeypatch, limit, value) -> None:
    study = generate_ct_study(tmp_path / "in", n_instances=3, rows=8, columns=8)
    monkeypatch.setattr(KeptHeaders, limit, value)
    index = index_folder(study.folder, keep_headers=True)
    assert index.headers == {} and len(index.instances) == 3


def test_kept_headers_give_the_same_files(tmp_path: Path) -> None:
    study = generate_ct_study(tmp_path / "in", n_instances=4, rows=8, columns=8)
    index = index_folder(study.folder, keep_headers=True)
    assert isinstance(index.headers, KeptHeaders) and set(index.headers) == {i.relpath for i in index.instances}
    assert index_folder(study.folder).headers is None
    assert _run(study, index, tmp_path / "kept", index.headers) == _run(study, index, tmp_path / "read", None)


def test_a_file_changed_after_indexing_is_read_again(tmp_path: Path) -> None:
    """The kept parse is used only while the file is the one indexed: a change written in place (a kept attribute,
    Manufacturer) makes the engine read it again, so the output holds what the file holds now."""
    study = generate_ct_study(tmp_path / "in", n_instances=2, rows=8, columns=8)
    index = index_folder(study.folder, keep_headers=True)
    src = study.folder / index.instances[0].relpath
    ds = pydicom.dcmread(src)
    ds.Manufacturer = "KEPT HEADER CHANGED"
    inode = os.stat(src).st_ino
    ds.save_as(src)
    assert os.stat(src).st_ino == inode
    files = _run(study, index, tmp_path / "out", index.headers)
    assert any(b"KEPT HEADER CHANGED" in data for data in files.values())


def test_reread_and_deidentify_reads_each_instance_again_and_fails_closed(tmp_path: Path) -> None:
    """The pipeline's step: each instance read again as import read it, by the process that de-identifies it (here
    2 workers); the same files as deidentify_folder; a file cut short since import fails the call and leaves
    nothing in the output folder."""
    from dicom_relay.errors import PermanentError
    from dicom_relay.folder_deid import reread_and_deidentify

    study = generate_ct_study(tmp_path / "in", n_instances=6, rows=8, columns=8)
    index = index_folder(study.folder)
    identities = {instance_patient_key(i): PatientIdentity("PSEUDO-K", 3, {study.accession_number: "ACC-K"})
                  for i in index.instances}
    relpaths = [i.relpath for i in index.instances]
    run = reread_and_deidentify(study.folder, relpaths, identities, Deidentifier("k-kept"), tmp_path / "pool",
                                workers=2)
    assert [r.instance for r in run.instances] == index.instances and not run.leaks
    pooled = {p.name: p.read_bytes() for p in sorted((tmp_path / "pool").glob("*.dcm"))}
    assert pooled == _run(study, index, tmp_path / "folder", None)
    src = study.folder / relpaths[3]
    src.write_bytes(src.read_bytes()[:200])
    try:
        reread_and_deidentify(study.folder, relpaths, identities, Deidentifier("k-kept"), tmp_path / "cut", workers=2)
    except PermanentError as exc:
        assert "unreadable after import" in str(exc)
    else:
        raise AssertionError("a file cut short since import must fail the step")
    assert list((tmp_path / "cut").iterdir()) == []
