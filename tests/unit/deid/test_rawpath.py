"""The raw fast path (rawpath.py) against the pydicom path: same files, same results, same verification values."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pydicom
import pytest
import pydicom.data
from pydicom.data import get_testdata_file
from pydicom.uid import ImplicitVRLittleEndian

from dicom_relay.deid import Deidentifier, DeidError, DeidOptions, PatientIdentity
from dicom_relay.deid import verify
from tests.support.samples import generate_ct_study

from .corpus import deep_planted_dataset, planted_dataset
from .test_profile import OPTION_SETS

def _scanned(ds) -> bool:
    from dicom_relay.deid.engine import _pixel_header

    return Deidentifier("k").pixel_scan_reason(*_pixel_header(ds)) is not None


NO_HOLD = dict(quarantine_secondary_capture=False, quarantine_modalities=(), quarantine_burned_in=False)
# Files of pydicom's test data the fast path must take (the rest, e.g. big endian or deflated, falls back).
MUST_BE_RAW = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "rtplan.dcm", "rtdose.dcm", "JPEG2000.dcm",
               "MR_small_RLE.dcm", "test-SR.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jpeg_ls_lossless.dcm"]


def _elements(ds, prefix=""):
    """Every element at every depth as (path, VR, value), values compared as pydicom decodes them."""
    out = []
    for elem in ds:
        where = f"{prefix}{elem.tag}"
        if elem.VR == "SQ":
            out.append((where, "SQ", len(elem.value)))
            for i, item in enumerate(elem.value):
                out += _elements(item, f"{where}[{i}].")
        else:
            out.append((where, elem.VR, elem.value))
    return out


def _compare(d: Deidentifier, src: Path, identity: PatientIdentity, tmp_path: Path, label: str) -> str:
    """Run both paths on ``src``; assert the same outcome; return "raw" or "fallback"."""
    try:
        fast = d._deidentify_raw(src, tmp_path / "raw" / label, identity)
    except DeidError as exc:
        with pytest.raises(DeidError, match=str(exc)):
            d._deidentify_file_pydicom(src, tmp_path / "ref" / label, identity)
        return "raw"
    if fast is None:
        return "fallback"
    ref = d._deidentify_file_pydicom(src, tmp_path / "ref" / label, identity)
    strip = lambda r: (r.sop_instance_uid, r.series_instance_uid, r.study_instance_uid, r.sop_class_uid, r.quarantine_reason)  # noqa: E731
    assert strip(fast) == strip(ref), label
    assert (fast.path is None) == (ref.path is None), label
    if fast.path is None:
        return "raw"
    a, b = fast.path.read_bytes(), ref.path.read_bytes()
    if a != b:  # byte equality is the norm; element-by-element equality is the contract
        da, db = pydicom.dcmread(io.BytesIO(a)), pydicom.dcmread(io.BytesIO(b))
        assert da.preamble == db.preamble, label
        assert _elements(da.file_meta) == _elements(db.file_meta), label
        assert _elements(da) == _elements(db), label
    return "raw"


def _undefined_lengths(ds) -> None:
    """Every sequence and item of ``ds`` written with undefined length and delimiters (as many devices do)."""
    for elem in ds:
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
                _undefined_lengths(item)


def _corpus_file(tmp_path: Path, implicit: bool, undefined: bool = False) -> tuple[Path, dict]:
    ds, planted = planted_dataset()
    if undefined:
        _undefined_lengths(ds)
    # Attributes after the pixel data (digital signatures, padding) send a file to the pydicom path; the
    # corpus without them exercises every other table row on the fast path.
    for tag in [t for t in ds.keys() if t > 0x7FE00010]:
        del ds[tag]
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    src = tmp_path / f"corpus-{'implicit' if implicit else 'explicit'}-{'undefined' if undefined else 'defined'}.dcm"
    ds.save_as(src, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return src, planted


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("undefined", [False, True], ids=["defined-lengths", "undefined-lengths"])
def test_fast_path_equals_pydicom_path_on_the_planted_corpus(name: str, implicit: bool, undefined: bool, tmp_path: Path) -> None:
    src, planted = _corpus_file(tmp_path, implicit, undefined)
    if undefined:
        assert src.read_bytes().count(b"\xfe\xff\xdd\xe0") > 10  # sequence delimiters
    for jitter in (-3, 0, 400):
        d = Deidentifier("k", OPTION_SETS[name])
        identity = PatientIdentity("PSEUDO-1", jitter, {planted[0x00080050]: "ACC-PSEUDO"})
        if not d._raw_ok:
            # Option sets needing the text cleaner or the safe-private list always take the pydicom path.
            d.deidentify_file(src, tmp_path / f"o{jitter}", identity)
            assert d.raw_path_used == 0
            continue
        assert _compare(d, src, identity, tmp_path, f"{name}{jitter}") == "raw", name


def _as_primary(src: Path, dst_dir: Path) -> Path:
    """A copy of ``src`` that the pixel policy does not read (ORIGINAL\\PRIMARY, not secondary capture), so that
    the fast path is compared on its encapsulated syntaxes too (scanned images always take the pydicom path)."""
    ds = pydicom.dcmread(src)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if "Secondary Capture" in ds.SOPClassUID.name:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.20"  # NM Image
        ds.Modality = "NM"
    dst_dir.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst_dir / src.name)
    return dst_dir / src.name


def test_fast_path_equals_pydicom_path_on_pydicom_test_files(tmp_path: Path) -> None:
    # The files that ship inside pydicom (get_testdata_files would also try to download more).
    files = sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))
    raw = []
    unscanned = set()
    for i, src in enumerate(files):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(src, stop_before_pixels=True, force=True)
        except Exception:
            continue
        if src.name in MUST_BE_RAW and Deidentifier("k").quarantine_reason(ds) is None and _scanned(ds):
            # Its pixels are read (secondary capture, ImageType SECONDARY): the fast path must decline it ...
            assert Deidentifier("k")._deidentify_raw(src, tmp_path / "declined", PatientIdentity("P", 0)) is None
            src = _as_primary(src, tmp_path / "primary")  # ... and must take it once it is a primary image
            ds = pydicom.dcmread(src, stop_before_pixels=True)
        if not _scanned(ds):
            unscanned.add(src.name)
        accession = str(ds.get("AccessionNumber", "") or "").strip()
        identity = PatientIdentity("PSEUDO-2", -30, {accession: "ACC2"} if accession else {})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for options in (DeidOptions(**NO_HOLD), DeidOptions()):
                if _compare(Deidentifier("k", options), src, identity, tmp_path, f"{i}-{src.name}") == "raw":
                    raw.append(src.name)
    missing = set(MUST_BE_RAW) - set(raw)
    assert not missing, f"took the pydicom path: {sorted(missing)}"
    # Files whose pixels are read take the pydicom path; of the others, those not big endian, without file meta
    # or otherwise unusual take the fast path (18 of 35 with pydicom 3.0.2).
    assert len(set(raw) & unscanned) >= len(unscanned) // 2


def test_fast_path_is_taken_for_a_generated_study_and_errors_match(tmp_path: Path) -> None:
    study = generate_ct_study(tmp_path / "in", n_instances=3, rows=8, columns=8)
    d = Deidentifier("k")
    identity = PatientIdentity("P", 5, {study.accession_number: "A"})
    for src in sorted(study.folder.glob("*.dcm")):
        assert d.deidentify_file(src, tmp_path / "out", identity).path is not None
    assert d.raw_path_used == 3
    # Fail closed the same way: an accession number without a pseudonym.
    with pytest.raises(DeidError, match="AccessionNumber"):
        d.deidentify_file(next(study.folder.glob("*.dcm")), tmp_path / "out2", PatientIdentity("P", 5, {}))
    assert not (tmp_path / "out2").exists() or not list((tmp_path / "out2").iterdir())
    with pytest.raises(DeidError, match="pseudonym is empty"):
        d.deidentify_file(next(study.folder.glob("*.dcm")), tmp_path / "out3", PatientIdentity("", 5, {}))
    with pytest.raises(DeidError, match="not a readable"):
        d.deidentify_file(tmp_path / "missing.dcm", tmp_path / "out3", identity)


@pytest.mark.parametrize("implicit", [False, True])
def test_raw_reading_of_originals_gives_the_same_values_as_pydicom(implicit: bool, tmp_path: Path) -> None:
    src, planted = _corpus_file(tmp_path, implicit, undefined=implicit)
    for name, options in OPTION_SETS.items():
        identity = PatientIdentity("P", -3, {})
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        family = verify.sop_family(str(ds.SOPClassUID))
        assert verify.collect(src, options, identity) == verify._classify(
            verify._pydicom_leaves(ds), options, family, -3, True
        ), name
    ct = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(ct, stop_before_pixels=True)
    assert verify.collect(ct, DeidOptions(), None) == verify.collect(ds, DeidOptions(), None)


@pytest.mark.parametrize("implicit", [False, True])
def test_fast_path_equals_pydicom_path_on_the_deep_corpus(implicit: bool, tmp_path: Path) -> None:
    # Dummied sequences four deep, coded concepts (standard and local codes), C on TimezoneOffsetFromUTC.
    ds, _ = deep_planted_dataset()
    for tag in [t for t in ds.keys() if t > 0x7FE00010]:
        del ds[tag]
    ds.TimezoneOffsetFromUTC = "+0100"  # a valid offset: C keeps it
    src = tmp_path / "deep.dcm"
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(src, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    accessions = {str(e.value): f"ACC-{i}" for i, e in enumerate(ds.iterall()) if e.tag == 0x00080050}
    raw = 0
    for name, options in OPTION_SETS.items():
        d = Deidentifier("k", options)
        if d._raw_ok:
            assert _compare(d, src, PatientIdentity("P", -3, accessions), tmp_path, f"deep-{name}") == "raw", name
            raw += 1
    assert raw >= 4
