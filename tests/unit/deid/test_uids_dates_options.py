"""UIDs, dates, options, quarantine, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage

from dicom_relay.deid import Deidentifier, DeidError, DeidOptions, PatientIdentity, remap_uid
from dicom_relay.deid.dates import shift_value
from dicom_relay.errors import PermanentError
from tests.support.samples import generate_ct_study

KEY = "k-uids"


def test_remap_uid_format_and_keyed() -> None:
    uid = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    new = remap_uid(uid, KEY)
    assert new.startswith("2.25.") and len(new) <= 64 and new[5:].isdigit() and not new[5:].startswith("0")
    assert pydicom.uid.UID(new).is_valid
    assert remap_uid(uid, KEY) == new
    assert remap_uid(uid, "other key") != new
    assert remap_uid(uid + "1", KEY) != new


def test_remap_uid_is_the_same_in_another_process() -> None:
    uid = "1.2.3.4.5.6.7.8.9"
    code = f"from dicom_relay.deid import remap_uid; print(remap_uid({uid!r}, {KEY!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == remap_uid(uid, KEY)


def test_references_between_instances_and_series_stay_consistent(tmp_path: Path) -> None:
    study = generate_ct_study(tmp_path / "in", n_instances=4, n_series=2, rows=8, columns=8)
    identity = PatientIdentity("P1", 5, {study.accession_number: "A1"})
    d = Deidentifier(KEY)
    results = [d.deidentify_file(p, tmp_path / "out", identity) for p in sorted(study.folder.glob("*.dcm"))]
    outs = [pydicom.dcmread(r.path) for r in results]
    assert len({o.StudyInstanceUID for o in outs}) == 1
    assert len({o.SeriesInstanceUID for o in outs}) == 2
    assert len({o.FrameOfReferenceUID for o in outs}) == 1
    assert outs[0].FrameOfReferenceUID == remap_uid(study.frame_of_reference_uid, KEY)
    assert [r.sop_instance_uid for r in results] == [remap_uid(u, KEY) for u in study.sop_instance_uids]
    # A reference inside a kept sequence points at the new UID of the referenced instance.
    src = pydicom.dcmread(sorted(study.folder.glob("*.dcm"))[1])
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = study.sop_instance_uids[0]
    src.DerivationCodeSequence = Sequence([Dataset()])
    src.DerivationCodeSequence[0].ReferencedImageSequence = Sequence([item])  # nested: X at top level only
    src.ContributingEquipmentSequence = Sequence([Dataset()])
    out = d.deidentify_dataset(src, identity)
    assert out.SOPClassUID == CTImageStorage
    assert out.file_meta.MediaStorageSOPInstanceUID == results[1].sop_instance_uid


def test_well_known_uids_are_never_changed() -> None:
    d = Deidentifier(KEY)
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.3.99"
    ds.StudyInstanceUID = CTImageStorage  # absurd, but a well-known UID must survive whatever holds it
    d.deidentify_dataset(ds, PatientIdentity("P", 0, {}))
    assert ds.StudyInstanceUID == CTImageStorage and ds.SOPClassUID == CTImageStorage
    assert ds.SOPInstanceUID == remap_uid("1.2.3.99", KEY)


@pytest.mark.parametrize(
    "vr,value,days,expected",
    [
        ("DA", "20240314", -10, "20240304"),
        ("DA", "20240301", -1, "20240229"),
        ("DA", "2024.03.14", 1, "20240315"),
        ("DA", "20240314\\20240315", 1, "20240315\\20240316"),
        ("DT", "20240314101500.123+0100", 20, "20240403101500.123+0100"),
        ("DT", "202403", 31, "202404"),
        ("TM", "101500.5", 300, "101500.5"),
        ("DA", "20241345", 1, None),
        ("DA", "yesterday", 1, None),
        ("DT", "2024031425", 1, None),
        ("TM", "25:99", 1, None),
    ],
)
def test_date_shift(vr, value, days, expected) -> None:
    assert shift_value(vr, value, days) == expected


def test_unparseable_date_is_removed_never_kept() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    ds.StudyDate = "NOTADATE"  # Z in the basic profile: kept present, emptied
    ds.add_new(0x00181202, "DA", "BADDATE1")  # DateOfLastCalibration: basic X -> removed
    Deidentifier(KEY).deidentify_dataset(ds, PatientIdentity("P", 3, {}))
    assert "StudyDate" in ds and ds.StudyDate in ("", None) and 0x00181202 not in ds


def test_options_round_trip_and_validation() -> None:
    o = DeidOptions.from_mapping({"dates": "FULL", "clean_descriptors": "yes", "quarantine_modalities": "us, xa"})
    assert o.dates == "full" and o.clean_descriptors and o.quarantine_modalities == ("US", "XA")
    assert DeidOptions.from_mapping(o.to_dict()) == o
    assert DeidOptions.from_mapping({}) == DeidOptions()
    with pytest.raises(DeidError):
        DeidOptions.from_mapping({"retain_everything": True})
    with pytest.raises(DeidError):
        DeidOptions.from_mapping({"clean_graphics": "maybe"})
    with pytest.raises(DeidError):
        DeidOptions(dates="sometimes")
    d = DeidOptions()
    assert d.dates == "modified" and not any(
        getattr(d, n) for n in ("retain_uids", "retain_safe_private", "clean_descriptors", "retain_device_identity")
    )
    with pytest.raises(Exception):
        d.dates = "full"  # frozen


def _image(tmp_path: Path, **attrs) -> Path:
    study = generate_ct_study(tmp_path / "q", n_instances=1, rows=4, columns=4)
    path = next(study.folder.glob("*.dcm"))
    ds = pydicom.dcmread(path)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(path)
    return path


HOLD = DeidOptions(pixels="hold")


@pytest.mark.parametrize(
    "attrs,options,held",
    [
        ({"BurnedInAnnotation": "YES"}, HOLD, True),
        ({"BurnedInAnnotation": "YES"}, DeidOptions(quarantine_burned_in=True), True),
        ({"BurnedInAnnotation": "YES"}, DeidOptions(), False),  # read, cleaned, proved, delivered
        ({"Modality": "US"}, HOLD, True),
        ({"Modality": "US"}, DeidOptions(quarantine_modalities=("US",)), True),
        ({"Modality": "US"}, DeidOptions(), False),
        ({"SOPClassUID": SecondaryCaptureImageStorage}, HOLD, True),
        ({"SOPClassUID": SecondaryCaptureImageStorage}, DeidOptions(quarantine_secondary_capture=True), True),
        ({"SOPClassUID": SecondaryCaptureImageStorage}, DeidOptions(), False),
        ({}, HOLD, False),  # a CT primary image: its pixels are not read, whatever the policy
        ({}, DeidOptions(), False),
    ],
)
def test_burned_in_policy(tmp_path: Path, attrs, options, held) -> None:
    src = _image(tmp_path, **attrs)
    acc = str(pydicom.dcmread(src).AccessionNumber)
    out = tmp_path / "out"
    r = Deidentifier(KEY, options).deidentify_file(src, out, PatientIdentity("P", 1, {acc: "A"}))
    if held:
        assert r.path is None and r.quarantine_reason and not list(out.glob("*"))
        assert r.sop_instance_uid.startswith("2.25.")
    else:
        assert r.quarantine_reason is None and r.path.exists()
        # Read images carry the stage's record and the marks of a verified cleaning; the others neither.
        marked = pydicom.dcmread(r.path, stop_before_pixels=True)
        codes = [i.CodeValue for i in marked.DeidentificationMethodCodeSequence]
        if attrs:
            assert r.pixels["verdict"] == "clean" and marked.BurnedInAnnotation == "NO" and "113101" in codes
        else:
            assert r.pixels is None and "113101" not in codes


def test_unmapped_accession_fails_closed_without_phi(tmp_path: Path) -> None:
    src = _image(tmp_path, AccessionNumber="ACCSECRET77")
    with pytest.raises(PermanentError) as exc:
        Deidentifier(KEY).deidentify_file(src, tmp_path / "out", PatientIdentity("P", 1, {}))
    assert "ACCSECRET77" not in str(exc.value) and "AccessionNumber" in str(exc.value)
    assert not list((tmp_path / "out").glob("*.dcm")) if (tmp_path / "out").exists() else True


def test_unreadable_input_error_has_no_path(tmp_path: Path) -> None:
    folder = tmp_path / "DOE^JOHN 1970"
    folder.mkdir()
    bad = folder / "x.dcm"
    bad.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(DeidError) as exc:
        Deidentifier(KEY).deidentify_file(bad, tmp_path / "out", PatientIdentity("P", 1, {}))
    assert "DOE" not in str(exc.value) and exc.value.__cause__ is None
