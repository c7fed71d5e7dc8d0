"""Verification of a batch (LeakCheck): shifted dates that equal other original dates, and what is searched."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import shutil
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import keyword_for_tag
from pydicom.uid import UID_dictionary

from dicom_relay.deid import Deidentifier, DeidOptions, LeakCheck, PatientIdentity, find_leaks, identifying_values
from dicom_relay.deid import table
from dicom_relay.dicom_import import index_folder
from dicom_relay.folder_deid import deidentify_folder
from dicom_relay.identifiers import LocalProvider
from dicom_relay.pipeline import build_entities, identities_from_mapping, pseudonym_mapping
from tests.support.samples import generate_ct_study

from .corpus import planted_dataset
from .test_profile import OPTION_SETS

JITTER = 10  # 20240314 + 10 days = 20240324, the date of the second study


def _two_studies_ten_days_apart(tmp_path: Path):
    """One patient, two studies in one batch: 20240314 and 20240324 (every date of an instance = its study date)."""
    a = generate_ct_study(tmp_path / "in" / "a", n_instances=2, rows=8, columns=8, study_date="20240314")
    b = generate_ct_study(tmp_path / "in" / "b", n_instances=2, rows=8, columns=8, study_date="20240324")
    identity = PatientIdentity("PSEUDO-7", JITTER, {a.accession_number: "ACC-A", b.accession_number: "ACC-B"})
    d = Deidentifier("k-leak")
    check = LeakCheck(d.options)
    flat: set[str] = set()
    outputs = {}
    for study in (a, b):
        for src in sorted(study.folder.glob("*.dcm")):
            r = d.deidentify_file(src, tmp_path / "out", identity)
            flat |= identifying_values(pydicom.dcmread(src, stop_before_pixels=True), d.options, identity)
            check.add(src, identity, r.path)
            outputs.setdefault(study.study_date, []).append(r.path)
    return check, flat, outputs, identity


def test_a_shifted_date_equal_to_another_instances_original_date_is_not_a_leak(tmp_path: Path) -> None:
    check, flat, outputs, _ = _two_studies_ten_days_apart(tmp_path)
    a_out = outputs["20240314"]
    assert pydicom.dcmread(a_out[0]).StudyDate == "20240324"  # the original date of study B
    # The flat set cannot tell where a date came from: it refuses this batch (fail-closed, but wrong).
    assert any("Date" in leak.location for leak in find_leaks(flat, a_out))
    # LeakCheck knows which output came from which original and where each date was: the batch passes.
    assert check.find_leaks() == []


def test_an_unshifted_date_is_still_caught(tmp_path: Path) -> None:
    check, _, outputs, _ = _two_studies_ten_days_apart(tmp_path)
    path = outputs["20240314"][0]
    ds = pydicom.dcmread(path)
    ds.ContentDate = "20240314"  # the engine "forgot" to shift this attribute
    ds.save_as(path)
    leaks = check.find_leaks()
    assert [(leak.file, leak.location) for leak in leaks] == [(path.name, "ContentDate")]
    assert "20240314" not in leaks[0].message


def test_an_original_date_in_free_text_or_a_uid_is_caught_in_any_output(tmp_path: Path) -> None:
    check, _, outputs, _ = _two_studies_ten_days_apart(tmp_path)
    path = outputs["20240324"][0]
    ds = pydicom.dcmread(path)
    ds.ImageComments = "follow-up of the exam of 20240314"  # study A's original date, in study B's output
    ds.save_as(path)
    assert [leak.location for leak in check.find_leaks()] == ["ImageComments"]


def test_names_ids_and_uids_stay_global(tmp_path: Path) -> None:
    check, _, outputs, identity = _two_studies_ten_days_apart(tmp_path)
    a_src = pydicom.dcmread(sorted((tmp_path / "in" / "a").glob("*.dcm"))[0])
    path = outputs["20240324"][1]
    ds = pydicom.dcmread(path)
    ds.ImageComments = f"prior {a_src.PatientID}"
    ds.ReferencedSOPInstanceUID = a_src.SOPInstanceUID  # an original UID of the other study
    ds.save_as(path)
    assert sorted(leak.location for leak in check.find_leaks()) == ["ImageComments", "ReferencedSOPInstanceUID"]


def test_an_output_not_registered_gets_the_strict_rule(tmp_path: Path) -> None:
    check, _, outputs, _ = _two_studies_ten_days_apart(tmp_path)
    stray = tmp_path / "stray.dcm"
    stray.write_bytes(outputs["20240314"][0].read_bytes())
    assert check.find_leaks([stray])  # 20240324 is an original date of study B: without a mapping, a leak
    assert check.find_leaks(outputs["20240314"]) == []


def test_jpeg_text_in_encapsulated_pixel_data_is_found_native_pixels_are_not_searched(tmp_path: Path) -> None:
    no_hold = DeidOptions(quarantine_secondary_capture=False, quarantine_modalities=(), quarantine_burned_in=False)
    d = Deidentifier("k", no_hold)
    src = Path(get_testdata_file("JPEG2000.dcm"))
    r = d.deidentify_file(src, tmp_path / "j", PatientIdentity("P", 3, {}))
    data = bytearray(r.path.read_bytes())
    secret = b"MRN0012345"
    at = len(data) - 200  # inside the last fragment of the codestream
    data[at : at + len(secret)] = secret
    r.path.write_bytes(bytes(data))
    assert [leak.location for leak in find_leaks([secret.decode()], [r.path])] == ["pixel data (encapsulated)"]
    # Short values are not searched in compressed bytes (they would match by chance).
    data[at : at + 4] = b"ABCD"
    r.path.write_bytes(bytes(data))
    assert find_leaks(["ABCD"], [r.path]) == []
    # Native pixel data is copied byte for byte from the original and holds samples, not text: not searched.
    study = generate_ct_study(tmp_path / "ct", n_instances=1, rows=8, columns=8)
    r = d.deidentify_file(next(study.folder.glob("*.dcm")), tmp_path / "c", PatientIdentity("P", 3, {study.accession_number: "A"}))
    data = bytearray(r.path.read_bytes())
    data[-16:-6] = secret
    r.path.write_bytes(bytes(data))
    assert find_leaks([secret.decode()], [r.path]) == []
    assert find_leaks([secret.decode()[:6]], [r.path]) == []


def test_inside_a_uid_only_a_whole_component_is_a_leak(tmp_path: Path) -> None:
    study = generate_ct_study(tmp_path / "in", n_instances=1, rows=8, columns=8)
    r = Deidentifier("k").deidentify_file(next(study.folder.glob("*.dcm")), tmp_path / "o", PatientIdentity("P", 3, {study.accession_number: "A"}))
    ds = pydicom.dcmread(r.path)
    digits = ds.SOPInstanceUID[10:16]  # six digits from the middle of a replacement UID: found by chance only
    assert digits.isdigit() and find_leaks([digits], [r.path]) == []
    ds.ReferencedSOPInstanceUID = f"1.2.{digits}.7"
    ds.save_as(r.path)
    assert [leak.location for leak in find_leaks([digits], [r.path])] == ["ReferencedSOPInstanceUID"]


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "CT_small.dcm"])
def test_find_leaks_reads_outputs_the_fast_reader_cannot(name: str, tmp_path: Path) -> None:
    src = Path(get_testdata_file(name))
    original = pydicom.dcmread(src)
    identity = PatientIdentity("P", 3, {str(original.get("AccessionNumber", "")): "A"})
    d = Deidentifier("k")
    r = d.deidentify_file(src, tmp_path / "o", identity)
    check = LeakCheck(d.options)
    check.add(src, identity, r.path)
    assert check.find_leaks() == []
    ds = pydicom.dcmread(r.path)
    ds.ImageComments = str(original.PatientName)
    ds.save_as(r.path)
    assert {leak.location for leak in check.find_leaks()} == {"ImageComments"}  # the name and its components


def test_deidentify_files_with_a_pool_gives_the_same_files_and_registers_outputs(tmp_path: Path) -> None:
    a = generate_ct_study(tmp_path / "in" / "a", n_instances=5, rows=8, columns=8, study_date="20240314")
    b = generate_ct_study(tmp_path / "in" / "b", n_instances=4, rows=8, columns=8, study_date="20240324")
    identity = PatientIdentity("PSEUDO-7", JITTER, {a.accession_number: "ACC-A", b.accession_number: "ACC-B"})
    jobs = [(src, identity) for study in (a, b) for src in sorted(study.folder.glob("*.dcm"))]
    d = Deidentifier("k-pool")
    results = {}
    for workers in (1, 2):
        check = LeakCheck(d.options)
        results[workers] = d.deidentify_files(jobs, tmp_path / f"out{workers}", workers=workers, check=check)
        assert check.find_leaks() == []  # the multi-day batch passes: outputs are registered with their originals
        assert len(check._outputs) == len(jobs)
    assert [r.sop_instance_uid for r in results[1]] == [r.sop_instance_uid for r in results[2]]
    for r1, r2 in zip(results[1], results[2]):
        assert r1.path.read_bytes() == r2.path.read_bytes()
    with pytest.raises(Exception, match="AccessionNumber"):
        d.deidentify_files([(src, PatientIdentity("P", 1, {})) for src, _ in jobs], tmp_path / "bad", workers=2)


@pytest.mark.parametrize("name", ["chrH31.dcm", "chrRuss.dcm", "chrX1.dcm", "chrGreek.dcm"])
def test_non_ascii_names_are_found_whatever_the_character_set(name: str, tmp_path: Path) -> None:
    src = Path(pydicom.data.__file__).parent / "charset_files" / name
    original = pydicom.dcmread(src)
    identity = PatientIdentity("P", 3, {str(original.get("AccessionNumber", "") or ""): "A"})
    d = Deidentifier("k", DeidOptions(quarantine_secondary_capture=False, quarantine_modalities=()))
    r = d.deidentify_file(src, tmp_path / "o", identity)
    check = LeakCheck(d.options)
    check.add(src, identity, r.path)
    assert check.find_leaks() == []
    name_value = str(original.PatientName)
    assert not name_value.isascii()
    ds = pydicom.dcmread(r.path)
    ds.ImageComments = f"prior: {name_value}"  # written in the file's own character set
    ds.save_as(r.path)
    leaks = check.find_leaks()
    assert "ImageComments" in {leak.location for leak in leaks}
    # The non-ASCII value itself (not only its ASCII components) is found, in whatever bytes the charset gives.
    assert any(not check.values[leak.value_index].isascii() for leak in leaks if leak.location == "ImageComments")


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_the_planted_corpus_passes_leakcheck_under_every_option_set(name: str, tmp_path: Path) -> None:
    ds, planted = planted_dataset()
    src = tmp_path / "src.dcm"
    ds.save_as(src, enforce_file_format=True)
    identity = PatientIdentity("PSEUDO", -3, {planted[0x00080050]: "ACC-PSEUDO"})
    d = Deidentifier("k", OPTION_SETS[name])
    r = d.deidentify_file(src, tmp_path / "out", identity)
    check = LeakCheck(d.options)
    check.add(src, identity, r.path)
    # Nested dates of the corpus collide after the shift (depth 4 shifted by -3 days = depth 1's original): the
    # per-place rule lets this pass, and still catches the one date put back unshifted below.
    assert check.find_leaks() == [], name
    if d.options.dates != "modified":
        return
    out = pydicom.dcmread(r.path)
    out.DerivationCodeSequence[0].AnatomicRegionSequence[0].StudyDate = ds.DerivationCodeSequence[0].AnatomicRegionSequence[0].StudyDate
    out.save_as(r.path)
    assert [leak.location for leak in check.find_leaks()] == ["DerivationCodeSequence[0].AnatomicRegionSequence[0].StudyDate"]


# --- real files, together in one folder: no false leak, and still no false negative --------------------------
REAL_FILES = ["eCT_Supplemental.dcm", "explicit_VR-UN.dcm", "rtdose.dcm", "rtplan.dcm", "rtstruct.dcm",
              "CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "test-SR.dcm", "waveform_ecg.dcm"]
NO_HOLD = DeidOptions(quarantine_secondary_capture=False, quarantine_modalities=(), quarantine_burned_in=False)


def _folder(tmp_path: Path, names: list[str]) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in names:
        shutil.copy(get_testdata_file(name), folder / name)
    return folder


def _deidentify(folder: Path, out: Path, options: DeidOptions = NO_HOLD):
    """What ``dicom-relay deidentify`` does: index, local pseudonyms, de-identify, verify (one library call)."""
    index = index_folder(folder)
    entities = build_entities(index, "MRN")
    identities = identities_from_mapping(pseudonym_mapping(entities, LocalProvider("k").lookup("t", entities)))
    return index, deidentify_folder(folder, index.instances, identities, Deidentifier("k", options), out)


@pytest.mark.parametrize("names", [["eCT_Supplemental.dcm"], ["explicit_VR-UN.dcm"], REAL_FILES],
                         ids=["eCT_Supplemental", "explicit_VR-UN", "together"])
def test_real_files_give_no_false_leak(names: list[str], tmp_path: Path) -> None:
    # Known false leaks before: "Perfusion" (a removed description) in the defined terms of ImageType;
    # "Pancreas" in BodyPartExamined (UN on disk: a kept CS); rtdose's ImagePositionPatient, PixelSpacing and
    # GridFrameOffsetVector (numbers) matching values of the other files of the folder.
    index, run = _deidentify(_folder(tmp_path, names), tmp_path / "out")
    assert len(run.instances) == len(names)
    assert [(i.instance.relpath, leak.location) for i in run.instances for leak in i.leaks] == []
    assert all(i.delivered for i in run.instances)


def test_retain_safe_private_gives_no_false_leak(tmp_path: Path) -> None:
    # Before: the kept Private Creators (GEMS_ACQU_01, ...) and safe elements of CT_small.dcm were "leaks".
    options = dataclasses.replace(NO_HOLD, retain_safe_private=True)
    _, run = _deidentify(_folder(tmp_path, REAL_FILES), tmp_path / "out", options)
    assert [(i.instance.relpath, leak.location) for i in run.instances for leak in i.leaks] == []
    ct = pydicom.dcmread(next(i.result.path for i in run.instances if i.instance.relpath == "CT_small.dcm"))
    assert ct.get((0x0019, 0x0010)) is not None  # the safe list did keep something of the GE blocks


def test_in_a_folder_another_files_values_are_found_where_they_identify(tmp_path: Path) -> None:
    _, run = _deidentify(_folder(tmp_path, REAL_FILES), tmp_path / "out")
    outputs = {i.instance.relpath: i.result.path for i in run.instances}
    plan = pydicom.dcmread(get_testdata_file("rtplan.dcm"), stop_before_pixels=True)
    dose = pydicom.dcmread(get_testdata_file("rtdose.dcm"), stop_before_pixels=True)
    check = LeakCheck(NO_HOLD)
    for relpath, i in ((i.instance.relpath, i) for i in run.instances):
        check.add(tmp_path / "in" / relpath, i.identity, i.result.path)
    assert check.find_leaks() == []
    ct = pydicom.dcmread(outputs["CT_small.dcm"])
    ct.ImageComments = f"see plan of {plan.PatientID}"  # another file's patient ID in free text: a leak
    ct.ReferencedSOPInstanceUID = dose.SOPInstanceUID  # another file's original UID: a leak
    ct.SliceLocation = "20030818.0"  # a number that spells part of rtdose's UID: numbers never match
    ct.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", str(plan.PatientID).upper()]  # CS, not its own place
    ct.save_as(outputs["CT_small.dcm"])
    assert sorted(leak.location for leak in check.find_leaks()) == ["ImageComments", "ReferencedSOPInstanceUID"]


def _keep_everything(options):
    rules = table.rules_for(options)
    return dataclasses.replace(rules, exact={t: ("K",) + r[1:] for t, r in rules.exact.items()})


def _leaves(ds, prefix=()):
    for elem in ds:
        name = keyword_for_tag(elem.tag) or f"({elem.tag.group:04X},{elem.tag.elem:04X})"
        if elem.VR == "SQ":
            for n, item in enumerate(elem.value or ()):
                yield from _leaves(item, prefix + (name, n))
        else:
            yield prefix + (name,), elem


def _location(path: tuple) -> str:
    out = []
    for k, x in enumerate(path):
        if k % 2:
            out[-1] += f"[{x}]"
        else:
            out.append(x)
    return ".".join(out)


STRING_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE", "UI", "DA", "DT", "AS", "CS"}


@pytest.mark.parametrize("broken", ["rules-keep-everything", "copy"])
def test_a_broken_profile_leaves_planted_values_and_every_one_is_found(broken: str, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """False negatives: de-identify the planted corpus with a deliberately broken engine; every planted string
    that the correct engine changes and the broken one leaves in place must be reported at its place."""
    ds, planted = planted_dataset()
    src = tmp_path / "src.dcm"
    ds.save_as(src, enforce_file_format=True)
    identity = PatientIdentity("PSEUDO", -3, {planted[0x00080050]: "ACC-PSEUDO"})
    good = pydicom.dcmread(Deidentifier("k").deidentify_file(src, tmp_path / "good", identity).path)
    if broken == "copy":  # an engine that writes its input unchanged
        (tmp_path / "bad").mkdir()
        out = tmp_path / "bad" / "copy.dcm"
        shutil.copy(src, out)
    else:  # every table row says K (the engine and its decision module, whichever holds the rules)
        for module in ("dicom_relay.deid.engine", "dicom_relay.deid.decide"):
            if importlib.util.find_spec(module) and hasattr(importlib.import_module(module), "rules_for"):
                monkeypatch.setattr(f"{module}.rules_for", _keep_everything)
        out = Deidentifier("k").deidentify_file(src, tmp_path / "bad", identity).path
    bad = pydicom.dcmread(out)
    good_values = {path: elem.value for path, elem in _leaves(good)}
    expected = set()
    for path, elem in _leaves(bad):
        value = elem.value
        text = str(value).strip() if value not in (None, "") and not isinstance(value, bytes) else ""
        if elem.VR not in STRING_VRS or len(text) < 4 or text in UID_dictionary:
            continue  # too short to search, or a well-known UID (a SOP class: identifies no one)
        original = dict(_leaves(ds)).get(path)
        if original is None or str(original.value).strip() != text or good_values.get(path) == value:
            continue  # not an original value, or one the correct engine keeps as well
        expected.add(_location(path))
    assert len(expected) > 100, "the broken engine must leave planted values"
    check = LeakCheck(DeidOptions())
    check.add(src, identity, out)
    found = {leak.location for leak in check.find_leaks()}
    assert expected - found == set()


def test_find_leaks_in_a_pool_finds_the_same_leaks_in_the_same_order(tmp_path: Path) -> None:
    from dicom_relay.deid.verify import POOL_MIN_OUTPUTS

    study = generate_ct_study(tmp_path / "in", n_instances=POOL_MIN_OUTPUTS + 6, rows=8, columns=8)
    identity = PatientIdentity("PSEUDO", 4, {study.accession_number: "ACC"})
    d = Deidentifier("k")
    check = LeakCheck(d.options)
    outputs = []
    for src in sorted(study.folder.glob("*.dcm")):
        outputs.append(d.deidentify_file(src, tmp_path / "out", identity).path)
        check.add(src, identity, outputs[-1])
    assert check.find_leaks(workers=2) == []
    for n in (3, 40):
        ds = pydicom.dcmread(outputs[n])
        ds.ImageComments = study.patient_id
        ds.ContentDate = study.study_date
        ds.save_as(outputs[n])
    serial = check.find_leaks()
    assert [leak.file for leak in serial] == [outputs[3].name] * 2 + [outputs[40].name] * 2
    assert check.find_leaks(workers=2) == serial
    # In a running pool that another stage used (deidentify_folder shares one), twice: needles prepared per search.
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as pool:
        assert check.find_leaks(workers=2, pool=pool) == serial
        clean = LeakCheck(d.options)
        for src in sorted(study.folder.glob("*.dcm")):
            clean.add(src, identity, None)
        assert clean.find_leaks(outputs, workers=2, pool=pool) != []  # strict rule: another search, other needles
        assert check.find_leaks(workers=2, pool=pool) == serial


def test_values_collected_from_the_engines_parse_equal_those_collected_from_the_file(tmp_path: Path) -> None:
    """deidentify_and_collect hands verification the original's values from the header the engine parsed: the
    same as LeakCheck.add reading the original again, on the planted-PHI files and on pydicom's test files."""
    from dicom_relay.deid.verify import collect

    d = Deidentifier("k", DeidOptions(quarantine_secondary_capture=False, quarantine_modalities=()))
    from tests.support.dicom_corpus import pydicom_testdata_files

    files = [Path(f) for f in pydicom_testdata_files("*.dcm")][:60]
    for n, src in enumerate(files):
        try:
            ds = pydicom.dcmread(src, stop_before_pixels=True)
            identity = PatientIdentity("P", 3, {str(ds.get("AccessionNumber", "") or "").strip(): "A"})
            result, collected = d.deidentify_and_collect(src, tmp_path / str(n), identity)
        except Exception:
            continue  # not a file the engine de-identifies: nothing to verify
        assert collected == collect(src, d.options, identity), src.name
    assert d.raw_path_used >= 5, "the engine's raw parse must serve some of these files"


def test_the_search_of_the_encoded_bytes_finds_what_the_full_reading_finds(tmp_path: Path) -> None:
    """An output of the raw path is searched in the bytes the relay encoded (``DeidResult.encoded_length``) when the
    rest is one native Pixel Data element ending the file. A leak in those bytes is found; anything else after
    them (an element appended after the pixel data, a length that does not match) sends the output to the full
    reading, which finds what was put there."""
    study = generate_ct_study(tmp_path / "in", n_instances=1, rows=8, columns=8)
    src = next(study.folder.glob("*.dcm"))
    identity = PatientIdentity("PSEUDO-E", 5, {study.accession_number: "ACC-E"})
    d = Deidentifier("k-encoded")
    result, collected = d.deidentify_and_collect(src, tmp_path / "out", identity)
    assert result.encoded_length and result.encoded_length < result.path.stat().st_size
    good = result.path.read_bytes()
    n = result.encoded_length

    def leaks(data: bytes, encoded_length: int | None = n) -> list:
        result.path.write_bytes(data)
        check = LeakCheck(d.options)
        check.add_collected(collected, result.path, encoded_length)
        return check.find_leaks()

    assert leaks(good) == []
    # The original study date written into the encoded bytes (over the pseudonym in Patient's Name, same
    # length; a date counts in any text element): found.
    name = study.patient_name.encode()
    at = good.index(b"PSEUDO-E")
    planted = good[:at] + study.study_date.encode() + good[at + 8 :]
    assert leaks(planted) != []
    # An element after the pixel data holding the name (Data Set Trailing Padding can carry anything): the output
    # no longer ends with its pixel element, the full reading runs and finds it.
    name += b" " * (len(name) % 2)
    trailing = b"\x09\x00\x10\x10LO" + len(name).to_bytes(2, "little") + name
    assert leaks(good + trailing) != []
    assert leaks(good + trailing, None) != []
    # A wrong length given (not the start of the pixel element): the full reading, nothing missed, nothing invented.
    assert leaks(good, n - 2) == [] and leaks(good, n + 2) == []
    assert leaks(planted, n - 40) != []
