"""The shipped table against the standard, the verification pass, safe private, and the fast writer."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicom_relay.deid import Deidentifier, DeidOptions, PatientIdentity, find_leaks, provenance
from dicom_relay.deid import fastio
from dicom_relay.deid.table import load_table, safe_private, safe_private_table
from tests.support.samples import generate_ct_study

# PS3.15 Table E.1-1 as the standard's machine-readable extraction gives it, committed beside the tests with its
# source and licence (tests/reference/), so the check runs in a clone with nothing beside it.
REFERENCE = Path(__file__).resolve().parents[2] / "reference" / "ps315_table_e1_1.tsv"
COLUMNS = {
    "rtnSafePrivOpt": "retain_safe_private", "rtnUIDsOpt": "retain_uids", "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity", "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_full_dates", "rtnLongModifDatesOpt": "retain_modified_dates",
    "cleanDescOpt": "clean_descriptors", "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}


def _reference() -> tuple[str, list[dict[str, str]]]:
    """(header comment, rows) of the committed reference copy."""
    lines = REFERENCE.read_text().splitlines()
    comment = "\n".join(line for line in lines if line.startswith("#"))
    header, *body = [line for line in lines if not line.startswith("#")]
    names = header.split("\t")
    return comment, [dict(zip(names, line.split("\t"))) for line in body]


def test_table_matches_the_standard() -> None:
    comment, ref = _reference()
    prov = provenance()
    assert prov["source_sha256"] in comment and f"edition {prov['edition']}" in comment  # the same source
    assert (REFERENCE.parent / "LICENSE-innolitics-dicom-standard.txt").read_text().startswith("Copyright")
    _, rows = load_table()
    assert len(rows) == len(ref) == prov["row_count"] > 600
    ours = {r.tag.upper(): r for r in rows}
    for r in ref:
        tag = "(GGGG,EEEE)" if "GGGG" in r["tag"].upper() else r["tag"].upper()
        row = ours[tag]
        assert " ".join(row.name.split()) == r["name"], tag
        assert row.basic == r["basicProfile"], tag
        assert row.in_std_iod == (r["stdCompIOD"] == "Y"), tag
        for src, name in COLUMNS.items():
            assert row.options.get(name) == (r[src] or None), (tag, name)
    assert prov["edition"] and "PS3.15" in prov["standard"]


# Rows of PS3.15 Table E.3.10-1 read off the standard by hand: (creator, group, element, VR).
SAFE_PRIVATE_SAMPLE = [
    ("Philips PET Private Group", 0x7053, 0x00, "DS"),  # SUV Factor
    ("Philips PET Private Group", 0x7053, 0x09, "DS"),  # Activity Concentration Factor
    ("SIEMENS MR HEADER", 0x0019, 0x0C, "IS"),  # B_value
    ("GEMS_PARM_01", 0x0043, 0x39, "IS"),  # Slop_int_6... (b-value)
    ("GEMS_ACQU_01", 0x0019, 0x23, "DS"),  # Table Speed
    ("ELSCINT1", 0x00E1, 0x21, "DS"),  # DLP
]


def test_safe_private_table_is_the_standards_with_provenance() -> None:
    prov, rows = safe_private_table()
    assert "E.3.10-1" in prov["standard"] and prov["generated_by"] == "scripts/build_safe_private.py"
    assert prov["source"].startswith("dicom-standard 0.1.0") and len(prov["source_sha256"]) == 64 and prov["built"]
    assert prov["row_count"] == len(rows) == 130
    keys = safe_private()
    assert len(keys) == prov["distinct_key_count"] == len(rows)
    for row in rows:
        assert row.group % 2 == 1 and 0 <= row.element <= 0xFF and row.creator == row.creator.strip()
    by_key = {(r.creator, r.group, r.element): r for r in rows}
    for creator, group, element, vr in SAFE_PRIVATE_SAMPLE:
        assert by_key[(creator, group, element)].vr == vr
        assert (creator.upper(), group, element) in keys


def test_retain_safe_private_keeps_the_standards_rows_and_their_creators() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    pet = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    pet.add_new(0x00, "DS", "0.000571")  # SUV Factor: safe
    pet.add_new(0x01, "LO", "PHI in a private text")  # not listed
    ge = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
    ge.add_new(0x39, "IS", ["1000", "0", "0", "0"])  # b-value: safe
    out = Deidentifier("k", DeidOptions(retain_safe_private=True)).deidentify_dataset(ds, PatientIdentity("P", 0, {}))
    private = {int(e.tag): e.value for e in out if e.tag.is_private}
    assert private[0x70530010] == "Philips PET Private Group" and str(private[0x70531000]) == "0.000571"
    assert 0x70531001 not in private
    assert private[0x00430010] == "GEMS_PARM_01" and [str(v) for v in private[0x00431039]] == ["1000", "0", "0", "0"]


def _study(tmp_path: Path):
    study = generate_ct_study(tmp_path / "in", n_instances=2, rows=8, columns=8)
    identity = PatientIdentity("PSEUDO9", 11, {study.accession_number: "ACC9"})
    return study, identity


def test_find_leaks_finds_values_anywhere_and_reports_no_phi(tmp_path: Path) -> None:
    study, identity = _study(tmp_path)
    d = Deidentifier("k")
    src = sorted(study.folder.glob("*.dcm"))[0]
    values = d.identifying_values(pydicom.dcmread(src), identity)
    assert {study.patient_id, study.accession_number, study.study_instance_uid, "HOUSE^GREGORY"} <= values
    assert "F" not in values and "1" not in values  # short and small-number values are skipped
    r = d.deidentify_file(src, tmp_path / "out", identity)
    assert find_leaks(values | set(study.identifiers()), [r.path]) == []
    # Plant the patient ID four levels deep in a kept sequence and in the preamble: both are found.
    ds = pydicom.dcmread(r.path)
    inner = Dataset()
    inner.TextValue = f"see {study.patient_id}"
    item = inner
    for _ in range(3):
        outer = Dataset()
        outer.ContentSequence = [item]
        item = outer
    ds.DerivationCodeSequence = [item]
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    leaks = find_leaks([study.patient_id], [bad])
    assert any("TextValue" in leak.location for leak in leaks)
    assert all(study.patient_id not in leak.message for leak in leaks)
    raw = bytearray(r.path.read_bytes())
    raw[0:10] = study.patient_id.encode()
    pre = tmp_path / "pre.dcm"
    pre.write_bytes(bytes(raw))
    assert [leak.location for leak in find_leaks([study.patient_id], [pre])] == [
        "file bytes (preamble, pixel data or element framing)"
    ]


def test_uid_match_is_whole_uid(tmp_path: Path) -> None:
    study, identity = _study(tmp_path)
    r = Deidentifier("k").deidentify_file(next(study.folder.glob("*.dcm")), tmp_path / "o", identity)
    ds = pydicom.dcmread(r.path)
    prefix = ds.SOPInstanceUID[:-3]  # a prefix of a UID that is present is not "found"
    assert find_leaks([prefix], [r.path]) == []
    assert find_leaks([ds.SOPInstanceUID], [r.path])


def test_retain_safe_private_keeps_only_safe_listed_elements() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    safe = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    safe.add_new(0x0C, "IS", "1000")  # B_value: on the safe list
    safe.add_new(0x10, "LO", "PHI in a private text")  # not on it
    other = ds.private_block(0x0029, "ACME SECRET", create=True)
    other.add_new(0x01, "LO", "PHI")
    keep = Deidentifier("k", DeidOptions(retain_safe_private=True)).deidentify_dataset(ds, PatientIdentity("P", 0, {}))
    private = {e.tag: e.value for e in keep if e.tag.is_private}
    assert private == {0x00190010: "SIEMENS MR HEADER", 0x0019100C: "1000"}
    ds2 = Dataset()
    ds2.SOPInstanceUID = "1.2.3"
    ds2.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", "1000")
    gone = Deidentifier("k").deidentify_dataset(ds2, PatientIdentity("P", 0, {}))
    assert not [e for e in gone if e.tag.is_private]
    assert [c.CodeValue for c in keep.DeidentificationMethodCodeSequence] == ["113100", "113107", "113111"]


def test_fast_encoder_is_byte_identical_to_pydicom(tmp_path: Path) -> None:
    for name in ("CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "rtplan.dcm"):
        src = Path(get_testdata_file(name))
        h = fastio.read_header(src)
        Deidentifier("k").deidentify_dataset(h.ds, PatientIdentity("P", 2, {str(h.ds.get("AccessionNumber", "")): "A"}))
        ref = io.BytesIO()
        h.ds.save_as(ref, enforce_file_format=True)
        ts = pydicom.uid.UID(h.ds.file_meta.TransferSyntaxUID)
        mine = h.ds.preamble + b"DICM" + fastio.encode_file_meta(h.ds.file_meta)
        mine += fastio.encode_dataset(h.ds, ts.is_implicit_VR, ts.is_little_endian)
        assert mine == ref.getvalue(), name


def test_pixel_tail_is_copied_byte_for_byte(tmp_path: Path) -> None:
    for name in ("JPEG2000.dcm", "MR_small_RLE.dcm", "CT_small.dcm"):
        src = Path(get_testdata_file(name))
        h = fastio.read_header(src)
        assert h.tail is not None, name
        off, length = h.tail
        no_hold = DeidOptions(quarantine_modalities=(), quarantine_secondary_capture=False, quarantine_burned_in=False)
        r = Deidentifier("k", no_hold).deidentify_file(
            src, tmp_path / name, PatientIdentity("P", 2, {str(h.ds.get("AccessionNumber", "")): "A"})
        )
        data = r.path.read_bytes()
        assert data.endswith(src.read_bytes()[off : off + length])
        assert pydicom.dcmread(r.path).PixelData == pydicom.dcmread(src).PixelData


def test_clean_descriptors_removes_identifying_values_from_text(tmp_path: Path) -> None:
    study, identity = _study(tmp_path)
    ds = pydicom.dcmread(next(study.folder.glob("*.dcm")))
    ds.StudyDescription = f"CT for {study.patient_name} ({study.patient_id}) on 2024-03-14"
    out = Deidentifier("k", DeidOptions(clean_descriptors=True)).deidentify_dataset(ds, identity)
    assert out.StudyDescription.startswith("CT for") and study.patient_id not in out.StudyDescription
    assert "2024-03-14" not in out.StudyDescription and "JANE" not in out.StudyDescription
    ds = pydicom.dcmread(next(study.folder.glob("*.dcm")))
    assert "StudyDescription" not in Deidentifier("k").deidentify_dataset(ds, identity)
