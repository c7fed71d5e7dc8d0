"""Compound and conditional actions resolved per SOP class and sequence path from data/iod_types.json.

The expected Types below are read off PS3.3 by hand (module and macro tables named in each comment).
"""

from __future__ import annotations

import json
import re
import subprocess
from importlib import resources
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_relay.deid import Deidentifier, DeidOptions, PatientIdentity
from dicom_relay.deid.table import (
    NESTED,
    attribute_type,
    conditional_action,
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
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
UNKNOWN = "1.2.826.0.1.3680043.10.999.1"
TYPES = {"1", "1C", "2", "2C", "3", "?"}


def _path(*keywords: str) -> tuple[int, ...]:
    return tuple(tag_for_keyword(k) for k in keywords)


def _keywords(plain: bool) -> set[str]:
    """Keywords with a compound action in any column (and, with ``plain``, an X or Z)."""
    return {
        r.keyword
        for r in load_table()[1]
        if r.pattern == "exact"
        and r.keyword
        and any("/" in a or (plain and a in ("X", "Z")) for a in (r.basic, *r.options.values()))
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
    assert prov["typed_path_count"] == sum(len(m) for m in raw["modules"].values())
    assert prov["nested_typed_path_count"] >= 2000  # types along sequence paths, not only the top level
    for modules in raw["iods"].values():
        for _module, usage in modules:
            assert usage in ("M", "C", "U")


def test_only_profile_attributes_are_typed_and_the_lists_match_the_shipped_table() -> None:
    prov = iod_types_provenance()
    assert set(prov["compound_keywords"]) == _keywords(plain=False)  # else rerun the build script
    assert set(prov["typed_keywords"]) == _keywords(plain=True)
    raw = json.loads(resources.files("dicom_relay.deid").joinpath("data", "iod_types.json").read_text())
    for types in raw["modules"].values():
        for key, kind in types.items():
            assert key.split(">")[-1] in prov["typed_keywords"] and kind in TYPES
            assert "ContentSequence" not in key.split(">")[:-1]  # the content tree is cut (recursive)
    # Keep (K) and U/D-only rows need no type: SOP Instance UID (U), Content Sequence (D).
    assert {"SOPInstanceUID", "ContentSequence"}.isdisjoint(prov["typed_keywords"])


# (SOP class, keyword, Type in PS3.3, our Table E.1-1 action, resolved) at the top level of the IOD.
SPOT_CHECKS = [
    (CT, "PatientID", "2", "Z/D", "Z"),  # Patient module
    (CT, "ContentDate", "2C", "Z/D", "Z"),  # General Image module
    (CT, "ContentTime", "2C", "Z/D", "Z"),
    (CT, "AcquisitionDate", "3", "X/Z", "X"),  # General Acquisition module
    (CT, "SeriesDate", "3", "X/D", "X"),  # General Series module
    (CT, "InstitutionName", "3", "X/Z/D", "X"),  # General Equipment module
    (CT, "DeviceSerialNumber", "3", "X/Z/D", "X"),
    (CT, "ContrastBolusAgent", "2", "Z/D", "Z"),  # Contrast/Bolus module (C): counts as required
    (CT, "PatientSexNeutered", "2C", "X/Z", "Z"),  # Patient Study module (U): counts as required
    (CT, "ReferencedImageSequence", "3", "X/Z/U*", "X"),  # General Reference module
    (CT, "ResponsiblePerson", "2C", "X", "Z"),  # Patient module: required if the patient is an animal
    (CT, "ResponsibleOrganization", "2C", "X", "Z"),
    (CT, "PatientBirthDate", "2", "Z", "Z"),
    (ENHANCED_CT, "DeviceSerialNumber", "1", "X/Z/D", "D"),  # Enhanced General Equipment module
    (ENHANCED_CT, "ContentDate", "1", "Z/D", "D"),
    (ENHANCED_CT, "AcquisitionDateTime", "1C", "X/Z/D", "D"),
    (COMPREHENSIVE_SR, "ContentDate", "1", "Z/D", "D"),  # SR Document General module
    (COMPREHENSIVE_SR, "ReferencedPerformedProcedureStepSequence", "2", "X/Z/D", "Z"),  # SR Document Series
    (RT_PLAN, "OperatorsName", "2", "X/Z/D", "Z"),  # RT Series module
    (RT_PLAN, "RTPlanDate", "2", "X/D", "D"),  # RT General Plan: Type 2, no Z branch -> D
    (GSPS, "ContentCreatorName", "3", "Z/D", "Z"),  # Content Identification: Type 3, Z/D -> Z
    (GSPS, "PresentationCreationDate", "1", "X", "D"),  # Presentation State Identification module
]


@pytest.mark.parametrize("sop, keyword, kind, action, expected", SPOT_CHECKS)
def test_spot_checks_against_the_module_tables(sop, keyword, kind, action, expected) -> None:
    assert load_iod_types()[1][sop][keyword] == kind
    assert attribute_type(keyword, sop) == kind
    row = next(r for r in load_table()[1] if r.keyword == keyword)
    assert row.basic == action
    assert resolve_compound(conditional_action(action, keyword), keyword, sop) == expected


# (SOP class, enclosing sequences, keyword, Type in PS3.3, our Table E.1-1 action, resolved) inside sequences.
PATH_CHECKS = [
    # SR Document General: Referenced Request Sequence items (Type 2 Accession Number, Referenced Study Sequence).
    (COMPREHENSIVE_SR, ("ReferencedRequestSequence",), "ReferencedStudySequence", "2", "X/Z", "Z"),
    (COMPREHENSIVE_SR, ("ReferencedRequestSequence",), "RequestedProcedureDescription", "2", "X/Z", "Z"),
    (COMPREHENSIVE_SR, ("ReferencedRequestSequence",), "RequestedProcedureID", "2", "X", "Z"),
    # SR Document General: Author Observer Sequence > Institution Name is Type 2 there, Type 3 at the top level.
    (COMPREHENSIVE_SR, ("AuthorObserverSequence",), "InstitutionName", "2", "X/Z/D", "Z"),
    (COMPREHENSIVE_SR, ("ParticipantSequence",), "DeviceSerialNumber", "3", "X/Z/D", "X"),
    # Hierarchical SOP Instance Reference macro inside the evidence sequences: Retrieve AE Title Type 3.
    (
        COMPREHENSIVE_SR,
        ("CurrentRequestedProcedureEvidenceSequence", "ReferencedSeriesSequence"),
        "RetrieveAETitle",
        "3",
        "X",
        "X",
    ),
    # SR content tree: every Content Sequence item is typed like the root (Observation DateTime 1C).
    (COMPREHENSIVE_SR, ("ContentSequence", "ContentSequence"), "ObservationDateTime", "1C", "X/D", "D"),
    # Enhanced CT functional groups: Referenced Image Sequence is Type 2 in the Referenced Image macro; a Type 2
    # reference sequence keeps its references with replaced UIDs (U), not emptied (Z).
    (ENHANCED_CT, ("SharedFunctionalGroupsSequence",), "ReferencedImageSequence", "2", "X/Z/U*", "U"),
    (ENHANCED_CT, ("PerFrameFunctionalGroupsSequence",), "ReferencedImageSequence", "2", "X/Z/U*", "U"),
    # Segmentation: Derivation Image macro, Source Image Sequence Type 2 (its Referenced Series Sequence in the
    # Common Instance Reference module must still find the references).
    (SEG, ("PerFrameFunctionalGroupsSequence", "DerivationImageSequence"), "SourceImageSequence", "2", "X/Z/U*", "U"),
]


@pytest.mark.parametrize("sop, path, keyword, kind, action, expected", PATH_CHECKS)
def test_types_along_sequence_paths(sop, path, keyword, kind, action, expected) -> None:
    tags = _path(*path)
    assert attribute_type(keyword, sop, tags) == kind
    row = next(r for r in load_table()[1] if r.keyword == keyword)
    assert row.basic == action
    assert resolve_compound(conditional_action(action, keyword), keyword, sop, tags) == expected


def test_undescribed_paths_take_the_safe_branch_and_plain_actions_stay() -> None:
    private_sq = (0x00091010,)
    # A compound inside a sequence the standard does not describe: the strongest branch (keeps references).
    assert attribute_type("ReferencedImageSequence", CT, private_sq) is None
    assert resolve_compound("X/Z/U*", "ReferencedImageSequence", CT, private_sq) == "U"
    # A conditional (plain X in the table) where nothing is known: the table's own X.
    assert resolve_compound(conditional_action("X", "ResponsiblePerson"), "ResponsiblePerson", UNKNOWN) == "X"
    assert resolve_compound(conditional_action("X", "ResponsiblePerson"), "ResponsiblePerson", CT, private_sq) == "X"
    # Attributes no IOD requires anywhere keep their plain action.
    assert conditional_action("X", "OtherPatientIDs") == "X"
    assert conditional_action("K", "ResponsiblePerson") == "K"
    # The old three-argument form is the top level.
    assert resolve_compound("X/Z/D", "InstitutionName", CT) == resolve_compound("X/Z/D", "InstitutionName", CT, ())


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
            assert resolve_compound(act, kw, sop) in act.replace("*", "").replace("|", "/").split("/")


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


# --- Whole instances checked by dciodvfy ------------------------------------------------------------------------
NUMBER_OR_UID = re.compile(r"\d+(\.\d+)*")


def _iod_errors(path: Path) -> set[str]:
    """dciodvfy's error lines, numbers and UIDs masked (the de-identified instance carries replaced UIDs)."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return {NUMBER_OR_UID.sub("#", line) for line in run.stderr.splitlines() if line.startswith("Error")}


def _item(**values) -> Dataset:
    item = Dataset()
    for k, v in values.items():
        setattr(item, k, v)
    return item


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _sr_with_evidence(tmp_path: Path) -> tuple[Path, str]:
    """A verified Comprehensive SR whose content tree cites an image listed in its evidence sequence."""
    image_uid, study_uid, series_uid = generate_uid(), generate_uid(), generate_uid()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = COMPREHENSIVE_SR, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "MRN123456", "19700101", "F"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240314", "101010", "S1", ""
    ds.ReferringPhysicianName = "Ref^Doc"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 1, 1
    ds.Manufacturer = "ACME"
    ds.ContentDate, ds.ContentTime = "20240314", "101500"
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "VERIFIED"
    ds.VerifyingObserverSequence = [
        _item(
            VerifyingOrganization="General Hospital",
            VerificationDateTime="20240314110000",
            VerifyingObserverName="Smith^Anna",
            VerifyingObserverIdentificationCodeSequence=[],
        )
    ]
    ds.CurrentRequestedProcedureEvidenceSequence = [
        _item(
            StudyInstanceUID=study_uid,
            ReferencedSeriesSequence=[
                _item(
                    SeriesInstanceUID=series_uid,
                    ReferencedSOPSequence=[_item(ReferencedSOPClassUID=CT, ReferencedSOPInstanceUID=image_uid)],
                )
            ],
        )
    ]
    ds.PerformedProcedureCodeSequence = []
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
    ds.ContentTemplateSequence = [_item(MappingResource="DCMR", TemplateIdentifier="2000")]
    image = _item(
        RelationshipType="CONTAINS",
        ValueType="IMAGE",
        ConceptNameCodeSequence=[_code("121233", "DCM", "Source image for segmentation")],
        ReferencedSOPSequence=[_item(ReferencedSOPClassUID=CT, ReferencedSOPInstanceUID=image_uid)],
    )
    text = _item(
        RelationshipType="CONTAINS",
        ValueType="TEXT",
        ConceptNameCodeSequence=[_code("121071", "DCM", "Finding")],
        TextValue="Nodule, reported by Smith",
    )
    ds.ContentSequence = [image, text]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = COMPREHENSIVE_SR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    src = tmp_path / "sr.dcm"
    ds.save_as(src, enforce_file_format=True)
    return src, image_uid


@pytest.mark.parametrize("fast", [True, False])
def test_sr_evidence_and_the_content_items_that_cite_it_stay_consistent(fast: bool, tmp_path: Path) -> None:
    src, image_uid = _sr_with_evidence(tmp_path)
    d = Deidentifier("k" * 32, DeidOptions(quarantine_modalities=()))
    identity = PatientIdentity("PSEUDO1", -3)
    if fast:
        path = d.deidentify_file(src, tmp_path / "out", identity).path
    else:
        path = tmp_path / "out.dcm"
        d.deidentify_dataset(pydicom.dcmread(src), identity).save_as(path, enforce_file_format=True)
    out = pydicom.dcmread(path)
    evidence = out.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    cited = out.ContentSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == cited.ReferencedSOPInstanceUID != image_uid  # one remapped UID
    assert out.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == out.StudyInstanceUID
    added = _iod_errors(path) - _iod_errors(src)
    assert not added, sorted(added)


def test_a_veterinary_patients_responsible_person_and_organization_stay_present(tmp_path: Path) -> None:
    """deid-data's cat.dcm: Responsible Person / Organization are Type 2C in the Patient module (required if the
    patient is an animal); Table E.1-1 says X, the IOD's Type 2C makes them Z (present, empty)."""
    import deid_data

    src = Path(deid_data.__file__).parent / "data" / "animals" / "cat.dcm"
    original = pydicom.dcmread(src)
    assert "ResponsiblePerson" in original and "ResponsibleOrganization" in original  # present (empty) there
    assert original.PatientSpeciesDescription  # an animal
    d = Deidentifier("k" * 32, DeidOptions(quarantine_modalities=()))
    result = d.deidentify_file(src, tmp_path / "out", PatientIdentity("PSEUDO1", 0))
    out = pydicom.dcmread(result.path)
    assert out.ResponsiblePerson == "" and out.ResponsibleOrganization == ""
    added = _iod_errors(result.path) - _iod_errors(src)
    assert not added, sorted(added)


# Real files of other toolkits whose IODs nest references and conditional attributes: Segmentation (Derivation
# Image functional group vs Common Instance Reference), SR, RT plan/dose/structure set, enhanced MR and CT.
REAL_FILES = [
    "liver_1frame.dcm",
    "test-SR.dcm",
    "reportsi.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "emri_small.dcm",
    "eCT_Supplemental.dcm",
]


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_gain_no_iod_error(name: str, tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file(name))
    original = pydicom.dcmread(src)
    accession = str(original.get("AccessionNumber", "") or "").strip()
    identity = PatientIdentity("PSEUDO1", -3, {accession: "ACC1"} if accession else {})
    d = Deidentifier("k" * 32, DeidOptions(quarantine_modalities=(), quarantine_secondary_capture=False))
    result = d.deidentify_file(src, tmp_path / "out", identity)
    added = _iod_errors(result.path) - _iod_errors(src)
    assert not added, sorted(added)
