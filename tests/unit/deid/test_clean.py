"""C means cleaned: a value kept under action C is valid for its VR and holds no identifying value of the
instance; otherwise it is removed or replaced. Every attribute whose action is C under some option is tried."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from dicom_relay.deid import Deidentifier, DeidOptions, PatientIdentity
from dicom_relay.deid.dates import shift_value
from dicom_relay.deid.table import load_table
from dicom_relay.deid.text import utc_offset
from dicom_relay.deid.vr import valid_text

from .corpus import tag_of

NAME = "SMITHSON^JOHANNA"  # the instance's PatientName: an identifying value the cleaner must remove
# Table option column -> the DeidOptions that enables it.
OPTION = {
    "retain_modified_dates": DeidOptions(),
    "retain_patient_characteristics": DeidOptions(retain_patient_characteristics=True),
    "retain_device_identity": DeidOptions(retain_device_identity=True),
    "clean_descriptors": DeidOptions(clean_descriptors=True),
    "clean_structured_content": DeidOptions(clean_structured_content=True),
    "clean_graphics": DeidOptions(clean_graphics=True),
}
GOOD = {  # a valid value holding the patient's name where the VR allows text
    "AE": "SMITHSON", "CS": "CORRECT", "LO": f"seen by {NAME}", "SH": "SMITHSON", "ST": f"note on {NAME}",
    "LT": f"long note on {NAME}", "UT": f"text on {NAME}", "DA": "20200304", "DT": "20200304101112",
    "TM": "101112", "OB": b"BLOB",
}
BAD = {  # not valid for the VR: never kept as it is
    "AE": "A\x01B", "CS": "lower case", "LO": "x" * 65, "SH": "y" * 17, "ST": "bad\x00text", "LT": "bad\x07",
    "UT": "bad\x02", "DA": "20201399", "DT": "2020130", "TM": "256000", "OB": b"BLOB",
}


def _c_rows():
    """(option column, row, tag, VR) of every exact row whose action is C under an option."""
    out = []
    for row in load_table()[1]:
        if row.pattern != "exact":
            continue
        for column, act in row.options.items():
            if act == "C" and column in OPTION:
                out.append((column, row, tag_of(row), row.vr.split(" or ")[0]))
    return out


def _dataset() -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID = NAME, "ID12345678"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "1.2.999.9.1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.999.9.2", "1.2.999.9.3", "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _run(ds: Dataset, options: DeidOptions, tmp_path: Path, label: str) -> Dataset:
    src = tmp_path / f"{label}.dcm"
    ds.save_as(src, enforce_file_format=True)
    result = Deidentifier("k", options).deidentify_file(src, tmp_path / label, PatientIdentity("P", -3, {}))
    return pydicom.dcmread(result.path)


@pytest.mark.parametrize("column", sorted(OPTION))
def test_every_c_attribute_is_kept_only_clean_and_valid(column: str, tmp_path: Path) -> None:
    rows = [r for r in _c_rows() if r[0] == column]
    assert rows
    for variant, values in (("good", GOOD), ("bad", BAD)):
        ds = _dataset()
        planted = {}
        for _, row, tag, vr in rows:
            if vr in values:
                ds.add_new(tag, vr, values[vr])
                planted[tag] = (row, vr)
        out = _run(ds, OPTION[column], tmp_path, f"{column}-{variant}")
        wrong = []
        for tag, (row, vr) in planted.items():
            elem = out.get(tag)
            value = None if elem is None or elem.value in (None, "", b"") else elem.value
            text = "\\".join(map(str, value)) if isinstance(value, pydicom.multival.MultiValue) else value
            if value is None:
                continue  # removed or emptied: nothing kept
            if vr == "OB":
                wrong.append(f"{row.keyword}: a binary value kept under C")
            elif vr in ("DA", "DT", "TM"):
                if variant == "bad" or (vr != "TM" and text != shift_value(vr, GOOD[vr], -3)):
                    wrong.append(f"{row.keyword}: {text!r}")
            elif row.keyword == "TimezoneOffsetFromUTC":
                if not utc_offset(text):
                    wrong.append(f"{row.keyword}: {text!r} is no UTC offset")
            elif not valid_text(vr, text) or "SMITHSON" in text.upper() or "JOHANNA" in text.upper():
                wrong.append(f"{row.keyword} ({vr}): {text!r}")
            elif variant == "bad" and text == BAD[vr]:
                wrong.append(f"{row.keyword} ({vr}): the invalid value was kept")
        assert not wrong, f"{column}/{variant}:\n" + "\n".join(wrong[:20])


@pytest.mark.parametrize("implicit", [False, True])
def test_timezone_offset_is_kept_only_as_an_offset(implicit: bool, tmp_path: Path) -> None:
    # Modified Dates (the default) is C: kept when it is an offset, on the raw path as on the pydicom path.
    for value, kept in (("+0100", True), ("-0530", True), ("+1400", True), ("-1200", True), ("PHI0001X", False),
                        ("+2500", False), ("0100", False), ("+01:00", False), ("+0160", False), ("-1300", False)):
        ds = _dataset()
        ds.TimezoneOffsetFromUTC = value
        if implicit:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        src = tmp_path / "tz.dcm"
        ds.save_as(src, enforce_file_format=True, implicit_vr=implicit)
        d = Deidentifier("k")
        out = pydicom.dcmread(d.deidentify_file(src, tmp_path / value, PatientIdentity("P", 3, {})).path)
        assert d.raw_path_used == 1
        assert ("TimezoneOffsetFromUTC" in out) == kept, value
        if kept:
            assert out.TimezoneOffsetFromUTC == value
        ref = pydicom.dcmread(d._deidentify_file_pydicom(src, tmp_path / f"ref{value}", PatientIdentity("P", 3, {})).path)
        assert ref.get("TimezoneOffsetFromUTC") == out.get("TimezoneOffsetFromUTC"), value
    # Full Dates keeps it (K); without a date option it is removed (X).
    ds = _dataset()
    ds.TimezoneOffsetFromUTC = "+0100"
    assert _run(ds, DeidOptions(dates="full"), tmp_path, "full").TimezoneOffsetFromUTC == "+0100"
    assert "TimezoneOffsetFromUTC" not in _run(ds, DeidOptions(dates="remove"), tmp_path, "remove")


def test_valid_text_follows_ps3_5() -> None:
    assert valid_text("LO", "a" * 64) and not valid_text("LO", "a" * 65)
    assert valid_text("LO", "one\\two") and not valid_text("SH", "x\ny")
    assert valid_text("LT", "line one\r\nline two\tend") and not valid_text("LT", "bell\x07")
    assert valid_text("CS", "ORIGINAL\\PRIMARY") and not valid_text("CS", "lower")
    assert valid_text("AE", "STORESCP") and not valid_text("AE", "   ") and not valid_text("AE", "A" * 17)
    assert valid_text("PN", "DOE^JANE^^^") and not valid_text("PN", "A^B^C^D^E^F")
    assert not valid_text("DS", "1.5")  # not a text VR a cleaner keeps
