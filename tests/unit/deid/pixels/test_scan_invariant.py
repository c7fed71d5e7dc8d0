"""The invariant: an image the pixel policy scans is never delivered unscanned, whatever its transfer syntax.

Before this test, a Deflated Explicit VR Little Endian file (pydicom's ``image_dfl.dcm``) was delivered without
being scanned and without its Pixel Data: reading the header with ``stop_before_pixels``, pydicom inflates the
whole rest of the file, so the file position (taken for "where the pixel data starts") was the end of the file
and the instance looked like one without pixels. Two guards here:

- the same image, with a name printed in it, in every transfer syntax the project reads (native little and
  big endian, implicit, deflated; RLE, JPEG-LS, JPEG 2000, JPEG lossless, JPEG baseline), through the engine:
  delivered scanned (record present, proof passed, marks set, the name blanked) and with its pixel data;
- every file pydicom, pydicom-data and deid-data ship: the engine's header read sees Pixel Data exactly when a
  full pydicom read does (that read decides whether the policy's scan happens).
"""

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
    JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, RLELossless,
)

from dicom_relay.deid import Deidentifier, DeidOptions, PatientIdentity, fastio
from dicom_relay.deid.pixels.ocr import TesseractReader

from .render import render, us_dataset

IDENTITY = PatientIdentity("PSEUDO-7", 12, {"A77310": "ACC-PSEUDO"})
NATIVE = {ExplicitVRLittleEndian: (False, True), ImplicitVRLittleEndian: (True, True),
          ExplicitVRBigEndian: (False, False), DeflatedExplicitVRLittleEndian: (False, True)}
DCMCJPEG = {JPEGLosslessSV1: "+e1", JPEGBaseline8Bit: "+eb"}
ENCAPSULATED = (RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1, JPEGBaseline8Bit)


@pytest.fixture(scope="module")
def image():
    # Small (fast OCR) greyscale SC-like ultrasound frame: one identifying line in large type.
    img = render(11, h=160, w=320, lines=["DOE, JANE"], sizes=(24, 24))
    return img.rgb.max(axis=2)  # the brightest channel: coloured text stays bright


def _instance(gray: np.ndarray, ts: str, path: Path) -> Path:
    ds = us_dataset(np.repeat(gray[..., None], 3, axis=2))
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    del ds.PlanarConfiguration
    ds.PixelData = np.ascontiguousarray(gray).tobytes()
    if ts in NATIVE:
        ds.file_meta.TransferSyntaxUID = ts
        implicit, little = NATIVE[ts]
        ds.save_as(path, implicit_vr=implicit, little_endian=little, enforce_file_format=True)
    elif ts in DCMCJPEG:  # pydicom has no JPEG process 1 / 14 encoder: dcmtk's
        ds.save_as(path.with_suffix(".native"), enforce_file_format=True)
        subprocess.run(["dcmcjpeg", DCMCJPEG[ts], str(path.with_suffix(".native")), str(path)], check=True)
    else:
        ds.compress(ts, **({"j2k_cr": [1]} if ts == JPEG2000Lossless else {}))
        ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("ts", [*NATIVE, *ENCAPSULATED], ids=lambda ts: pydicom.uid.UID(ts).keyword or ts)
def test_scanned_image_never_delivered_unscanned(ts, image, tmp_path):
    src = _instance(image, ts, tmp_path / "in.dcm")
    d = Deidentifier("k" * 32, DeidOptions())
    result = d.deidentify_file(src, tmp_path / "out", IDENTITY)
    assert result.path is not None, result.quarantine_reason
    assert result.pixels is not None, "delivered without its pixels being scanned"
    assert result.pixels["verdict"] == "clean" and result.pixels["blanked"], result.pixels
    out = pydicom.dcmread(result.path)
    assert out.BurnedInAnnotation == "NO"
    assert ("113101", "DCM") in {(c.CodeValue, c.CodingSchemeDesignator) for c in out.DeidentificationMethodCodeSequence}
    # The pixel data arrived, cleaned: same size, changed (the name was blanked) and not emptied.
    before, after = pydicom.dcmread(src).pixel_array.astype(int), out.pixel_array.astype(int)
    near = np.abs(after - before) <= 16  # JPEG baseline is re-encoded: small differences everywhere
    assert after.shape == image.shape and not near.all() and near.mean() > 0.8


def _shipped() -> list[Path]:
    from pydicom.data import get_testdata_files
    import deid_data

    return [Path(f) for f in get_testdata_files()] + sorted((Path(deid_data.__file__).parent / "data").rglob("*.dcm"))


def test_header_read_sees_pixel_data_in_every_shipped_file():
    missed, checked = [], 0
    for path in _shipped():
        try:
            full = pydicom.dcmread(path, force=True)
        except Exception:  # deliberately broken files: the engine rejects them (tested elsewhere)
            continue
        if "PixelData" not in full or "SOPClassUID" not in full:
            continue
        try:
            header = fastio.read_header(path)
        except Exception:
            continue
        checked += 1
        if header.tail is None and "PixelData" not in header.ds:
            missed.append(f"{path.name} ({full.file_meta.get('TransferSyntaxUID', '?')})")
    assert checked > 150
    assert not missed, f"the engine's header read does not see the pixel data of {missed}"
