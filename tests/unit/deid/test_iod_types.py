"""Compound actions resolved per SOP class from data/iod_types.json (built from highdicom's PS3.3 tables)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_relay.deid import Deidentifier, DeidOptions, PatientIdentity
from dicom_relay.deid.table import (
    NESTED,
    attribute_type,
    iod_types_provenance,
    load_iod_types,
    load_table,
    resolve_compound,
    rules_for,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
UNKNOWN = "1.2.826.0.1.3680043.10.999.1"
TYPES = {"1", "1C", "2", "2C", "3", "?"}


def _compound_keywords() -> set[str]:
    return {
        r.keyword
        for r in load_table()[1]
        if r.pattern == "exact" and r.keyword and any("/" in a for a in (r.basic, *r.options.values()))
    }


def test_the_table_has_provenance() -> None:
    prov = iod_types_provenance()
    assert prov["highdicom_version"].startswith("0.28.")
    assert prov["dicom_edition"]  # highdicom states none; the file says so instead of guessing
    assert prov["generated_by"] == "scripts/build_iod_types.py"
    assert prov["built"] and len(prov["source_sha256"]) == 3
    raw = json.loads(resources.files("dicom_relay.deid").joinpath("data", "iod_types.json").read_text())
    assert prov["sop_class_count"] == len(raw["sop_classes"]) == len(load_iod_types()[1]) >= 150
    assert set(raw["sop_classes"].values()) <= set(raw["iods"])


def test_only_compound_attributes_are_listed_and_the_list_matches_the_shipped_table() -> None:
    compound = _compound_keywords()
    assert set(iod_types_provenance()["compound_keywords"]) == compound  # else rerun the build script
    for types in load_iod_types()[1].values():
        assert set(types) <= compound
        for value in types.values():
            kind, usage = value.split("@")
            assert kind in TYPES and usage in ("M", "C", "U")
    # AccessionNumber, PatientName, StudyDate have plain actions (Z, Z, Z) in Table E.1-1: no type needed.
    assert {"AccessionNumber", "PatientName", "StudyDate"}.isdisjoint(compound)


# (SOP class, keyword, Type in highdicom's module tables, module usage, our Table E.1-1 action, resolved).
SPOT_CHECKS = [
    (CT, "PatientID", "2", "M", "Z/D", "Z"),  # Patient module
    (CT, "ContentDate", "2C", "M", "Z/D", "Z"),  # General Image module
    (CT, "ContentTime", "2C", "M", "Z/D", "Z"),
    (CT, "AcquisitionDate", "3", "M", "X/Z", "X"),  # General Acquisition module
    (CT, "SeriesDate", "3", "M", "X/D", "X"),  # General Series module
    (CT, "InstitutionName", "3", "M", "X/Z/D", "X"),  # General Equipment module
    (CT, "DeviceSerialNumber", "3", "M", "X/Z/D", "X"),
    (CT, "ContrastBolusAgent", "2", "C", "Z/D", "Z"),  # Contrast/Bolus module (C): counts as required
    (CT, "PatientSexNeutered", "2C", "U", "X/Z", "Z"),  # Patient Study module (U): counts as required
    (CT, "ReferencedImageSequence", "3", "U", "X/Z/U*", "X"),  # General Reference module
    (ENHANCED_CT, "DeviceSerialNumber", "1", "M", "X/Z/D", "D"),  # Enhanced General Equipment module
    (ENHANCED_CT, "ContentDate", "1", "M", "Z/D", "D"),
    (ENHANCED_CT, "AcquisitionDateTime", "1C", "M", "X/Z/D", "D"),
    (COMPREHENSIVE_SR, "ContentDate", "1", "M", "Z/D", "D"),  # SR Document General module
    (COMPREHENSIVE_SR, "ReferencedPerformedProcedureStepSequence", "2", "M", "X/Z/D", "Z"),  # SR Document Series
    (RT_PLAN, "OperatorsName", "2", "M", "X/Z/D", "Z"),  # RT Series module
    (RT_PLAN, "RTPlanDate", "2", "M", "X/D", "D"),  # RT General Plan: Type 2, no Z branch -> D
    (GSPS, "ContentCreatorName", "3", "M", "Z/D", "Z"),  # Content Identification: Type 3, Z/D -> Z
]


@pytest.mark.parametrize("sop, keyword, kind, usage, action, expected", SPOT_CHECKS)
def test_spot_checks_against_the_module_tables(sop, keyword, kind, usage, action, expected) -> None:
    assert load_iod_types()[1][sop][keyword] == f"{kind}@{usage}"
    assert attribute_type(keyword, sop) == kind
    row = next(r for r in load_table()[1] if r.keyword == keyword)
    assert row.basic == action
    assert resolve_compound(action, keyword, sop) == expected


def test_attribute_absent_from_a_known_iod_is_not_required() -> None:
    # Institution Code Sequence is in no module of the CT Image IOD at the top level (only inside the Person
    # Identification macro): the IOD does not require it, so X.
    assert "InstitutionCodeSequence" not in load_iod_types()[1][CT]
    assert attribute_type("InstitutionCodeSequence", CT) == "3"
    assert resolve_compound("X/Z/D", "InstitutionCodeSequence", CT) == "X"
    assert resolve_compound("X/D", "TreatmentDate", CT) == "X"


@pytest.mark.parametrize("key", [UNKNOWN, NESTED])
def test_unknown_sop_class_and_nested_attributes_take_the_strongest_branch(key: str) -> None:
    assert attribute_type("ContentDate", key) is None
    assert resolve_compound("X/Z/D", "InstitutionName", key) == "D"
    assert resolve_compound("X/D", "SeriesDate", key) == "D"
    assert resolve_compound("Z/D", "ContentDate", key) == "D"
    assert resolve_compound("X/Z", "AcquisitionDate", key) == "Z"
    assert resolve_compound("X/Z/U*", "ReferencedImageSequence", key) == "U"
    assert resolve_compound("K", "InstitutionName", key) == "K"


def test_every_compound_rule_resolves_for_every_known_sop_class() -> None:
    rules = rules_for(DeidOptions())
    compound = [(act, kw) for act, _, kw, _ in rules.exact.values() if "/" in act]
    assert compound
    for sop in load_iod_types()[1]:
        for act, kw in compound:
            assert resolve_compound(act, kw, sop) in act.replace("*", "").split("/")


def _ct_with_nested(tmp_path: Path) -> Path:
    """A CT instance with OperatorsName at the top level (Type 3 in CT: X) and inside a sequence the table does
    not name (Referenced Series Sequence, kept and walked): there the IOD's type does not apply -> D."""
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN123456"
    ds.Modality = "CT"
    ds.OperatorsName = "Operator^Top"
    ds.ContentDate = "20240314"
    item = Dataset()
    item.SeriesInstanceUID = generate_uid()
    item.OperatorsName = "Operator^Nested"
    ds.ReferencedSeriesSequence = [item]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    src = tmp_path / "src.dcm"
    ds.save_as(src, enforce_file_format=True)
    return src


@pytest.mark.parametrize("fast", [True, False])
def test_top_level_type_applies_only_at_the_top_level(fast: bool, tmp_path: Path) -> None:
    src = _ct_with_nested(tmp_path)
    d = Deidentifier("k" * 32, DeidOptions(quarantine_modalities=()))
    identity = PatientIdentity("PSEUDO1", 0)
    if fast:
        result = d.deidentify_file(src, tmp_path / "out", identity)
        assert d.raw_path_used == 1
        out = pydicom.dcmread(result.path)
    else:
        out = d.deidentify_dataset(pydicom.dcmread(src), identity)
    assert "OperatorsName" not in out  # X/Z/D, Type 3 in the CT Image IOD
    assert out.ContentDate == "20240314"  # Z/D, but Modified Dates makes it C (shifted by 0 days)
    assert str(out.ReferencedSeriesSequence[0].OperatorsName) == "ANONYMIZED"  # nested: the safe D
