"""Pixel codec: decode -> blank a box -> encode_into -> write -> read back, in every transfer syntax.

Inputs are pydicom / pydicom-data's own files and files transcoded here with DCMTK (dcmcjpeg, dcmcjpls, dcmcrle)
and pydicom's compress. Each round trip checks: the written transfer syntax is the documented one, the box holds
the stored value that displays black, every pixel outside the box is unchanged (lossless: exactly; lossy: the
error is measured and bounded), no attribute other than the pixel ones changed, offset tables address every frame,
and dciodvfy reports no error the input did not already have.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames, parse_basic_offsets
from pydicom.filebase import DicomBytesIO
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian as DEFLATED,
    ExplicitVRBigEndian as BE,
    ExplicitVRLittleEndian as LE,
    ImplicitVRLittleEndian as IMPLICIT,
    JPEG2000,
    JPEG2000Lossless as J2K,
    JPEGBaseline8Bit as JPEG,
    JPEGLSLossless as JLS,
    JPEGLSNearLossless as JLS_NEAR,
    RLELossless as RLE,
    UID,
)

from dicom_relay.deid.pixels.codec import Frames, PixelCodecError


PIXEL_KEYWORDS = {"PixelData", "PhotometricInterpretation", "PlanarConfiguration", "LossyImageCompression",
                  "LossyImageCompressionRatio", "LossyImageCompressionMethod", "ExtendedOffsetTable",
                  "ExtendedOffsetTableLengths"}

# (pydicom / pydicom-data file, transfer syntax written, lossless?)
CASES = [
    ("US1_UNCR.dcm", LE, True),  # RGB 640x480 ultrasound
    ("MR_small_implicit.dcm", IMPLICIT, True),  # signed 16-bit
    ("MR_small_bigendian.dcm", BE, True),
    ("SC_rgb_expb_2frame.dcm", BE, True),  # RGB, multi-frame, big endian
    ("image_dfl.dcm", DEFLATED, True),
    ("color-pl.dcm", LE, True),  # planar configuration 1
    ("SC_ybr_full_422_uncompressed.dcm", LE, True),
    ("SC_ybr_full_uncompressed.dcm", LE, True),
    ("RG3_UNCR.dcm", LE, True),  # MONOCHROME1, 10 of 16 bits
    ("emri_small.dcm", LE, True),  # 10 frames, 12 of 16 bits
    ("OBXXXX1A_2frame.dcm", LE, True),  # PALETTE COLOR 8-bit
    ("gdcm-US-ALOKA-16.dcm", IMPLICIT, True),  # PALETTE COLOR 16-bit
    ("SC_rgb_32bit_2frame.dcm", LE, True),
    ("SC_rgb_16bit.dcm", LE, True),
    ("liver_1frame.dcm", LE, True),  # 1-bit
    ("SC_rgb_rle_2frame.dcm", RLE, True),
    ("MR_small_RLE.dcm", RLE, True),
    ("OBXXXX1A_rle_2frame.dcm", RLE, True),
    ("SC_rgb_rle_32bit.dcm", RLE, True),
    ("emri_small_RLE.dcm", RLE, True),
    ("MR_small_jpeg_ls_lossless.dcm", JLS, True),
    ("emri_small_jpeg_ls_lossless.dcm", JLS, True),
    ("US1_J2KR.dcm", J2K, True),  # YBR_RCT
    ("GDCMJ2K_TextGBR.dcm", J2K, True),
    ("MR_small_jp2klossless.dcm", J2K, True),
    ("J2K_pixelrep_mismatch.dcm", J2K, True),
    ("JPEG-LL.dcm", JLS, True),  # JPEG Lossless SV1, signed 16-bit
    ("SC_rgb_jpeg_gdcm.dcm", JLS, True),  # JPEG Lossless SV1, RGB
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", JLS, True),
    ("JPGExtended.dcm", JLS, True),  # 12-bit lossy JPEG: no 12-bit encoder, written losslessly
    ("US1_J2KI.dcm", J2K, True),  # lossy JPEG 2000 (YBR_ICT): written losslessly, no second loss
    ("SC_rgb_gdcm_KY.dcm", J2K, True),
    ("examples_ybr_color.dcm", JPEG, False),  # 30 frames, YBR_FULL_422
    ("SC_rgb_jpeg_dcmtk.dcm", JPEG, False),  # YBR_FULL 4:4:4
    ("SC_jpeg_no_color_transform.dcm", JPEG, False),  # RGB components, no colour transform
    ("JPEGLSNearLossless_16.dcm", JLS_NEAR, False),
    ("SC_rgb_jls_lossy_line.dcm", JLS_NEAR, False),
]


def _dciodvfy_errors(path: Path) -> set[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return {re.sub(r"\s+", " ", line).strip() for line in (out.stdout + out.stderr).splitlines()
            if line.startswith("Error")}


def _box(frames: Frames) -> tuple[int, int, int, int]:
    rows, cols = frames.stored.shape[1:3]
    return cols // 4, rows // 4, cols // 2 + 1, rows // 2 + 1  # odd right edge: exercises 4:2:2 pairing


def _outside(shape, box, margin=0) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.ones(shape[:2], dtype=bool)
    mask[max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin] = False
    return mask


def _black_shown(frames: Frames) -> int:
    """Brightest display value of a frame blanked whole: 0, unless the window ends beyond the stored range."""
    keep = frames.stored[0].copy()
    frames.blank(0, [(0, 0, keep.shape[1], keep.shape[0])])
    shown = int(frames.display(0).max())
    frames.stored[0] = keep
    return shown


def round_trip(source: Path, out: Path, lossless: bool, expected: UID) -> dict:
    """Blank one box in the first and the last frame, write, read back, check; return measured figures."""
    ds = pydicom.dcmread(source)
    original = pydicom.dcmread(source)
    reference = Frames.decode(original)
    frames = Frames.decode(ds)
    box = _box(frames)
    if frames.source_photometric == "YBR_FULL_422" and not frames.source_syntax.is_compressed:
        box = (box[0] - box[0] % 2, box[1], box[2] + box[2] % 2, box[3])  # blank() keeps 4:2:2 chroma pairs whole
    edited = sorted({0, frames.count - 1})
    changed = sum(frames.blank(i, [box]) for i in edited)
    assert changed > 0
    written = frames.encode_into(ds)
    assert written == expected
    ds.save_as(out, enforce_file_format=True)

    back = pydicom.dcmread(out)
    assert back.file_meta.TransferSyntaxUID == expected
    assert back.get("NumberOfFrames") == original.get("NumberOfFrames")
    for elem in original:  # every attribute but the pixel ones kept as it was
        if elem.keyword not in PIXEL_KEYWORDS and elem.tag.element != 0:  # group lengths: pydicom's writer
            assert back[elem.tag].value == elem.value, elem.keyword
    assert not (set(e.keyword for e in back) - set(e.keyword for e in original) - PIXEL_KEYWORDS)

    result = Frames.decode(back)
    assert result.stored.shape == reference.stored.shape
    x0, y0, x1, y1 = box
    figures = {"ts": str(written), "pixels_blanked": changed}
    for i in range(frames.count):
        shown = result.display(i)
        before = reference.display(i)
        if i in edited:
            if lossless:
                assert np.all(result.stored[i, y0:y1, x0:x1] == frames.black if frames.stored.ndim == 4
                              else result.stored[i, y0:y1, x0:x1] == frames.black[0])
            darkest = int(shown[y0 + 8:y1 - 8, x0 + 8:x1 - 8].max(initial=0))
            assert darkest <= _black_shown(reference) + (0 if lossless else 12), darkest  # black (inner part for lossy: block edges ring)
            mask = _outside(shown.shape, box, 0 if lossless else 16)
        else:
            mask = np.ones(shown.shape[:2], dtype=bool)
        if lossless:
            assert np.array_equal(result.stored[i][mask], reference.stored[i][mask])
        else:
            error = np.abs(shown.astype(np.int16) - before.astype(np.int16))[mask]
            figures["mean_error"] = max(figures.get("mean_error", 0.0), float(error.mean()))
            figures["p99_error"] = max(figures.get("p99_error", 0), int(np.percentile(error, 99)))
            assert error.mean() <= 1.0 and np.percentile(error, 99) <= 8, figures
    if back.file_meta.TransferSyntaxUID.is_encapsulated and frames.count > 1:
        fp = DicomBytesIO(back.PixelData)
        fp.is_little_endian = True
        offsets = parse_basic_offsets(fp)
        assert len(offsets) == frames.count and offsets[0] == 0 and offsets == sorted(offsets)
        assert len(list(generate_frames(back.PixelData, number_of_frames=frames.count))) == frames.count
    return figures


@pytest.mark.parametrize("name, expected, lossless", CASES, ids=[c[0] for c in CASES])
def test_round_trip_pydicom_files(name, expected, lossless, tmp_path):
    source = Path(get_testdata_file(name))
    out = tmp_path / "out.dcm"
    round_trip(source, out, lossless, expected)
    assert _dciodvfy_errors(out) <= _dciodvfy_errors(source)


# DCMTK and pydicom transcodings: RGB ultrasound, a 10-frame 12-bit MR series, YBR_FULL, palette colour.
TRANSCODES = [
    ("dcmcjpeg", ["+e1"], "US1_UNCR.dcm", JLS, True),
    ("dcmcjpeg", ["+el"], "emri_small.dcm", JLS, True),  # JPEG Lossless .57, any predictor
    ("dcmcjpeg", ["+e1"], "emri_small.dcm", JLS, True),
    ("dcmcjpeg", ["+eb"], "US1_UNCR.dcm", JPEG, False),  # YBR_FULL_422
    ("dcmcjpeg", ["+eb", "+s4"], "US1_UNCR.dcm", JPEG, False),  # YBR_FULL
    ("dcmcjpeg", ["+ee"], "emri_small.dcm", JLS, True),  # 12-bit extended
    ("dcmcjpls", [], "US1_UNCR.dcm", JLS, True),
    ("dcmcjpls", ["+en"], "emri_small.dcm", JLS_NEAR, False),
    ("dcmcrle", [], "US1_UNCR.dcm", RLE, True),
    ("dcmcrle", [], "emri_small.dcm", RLE, True),
    ("dcmcrle", [], "SC_ybr_full_uncompressed.dcm", RLE, True),
    ("dcmcjpls", [], "SC_ybr_full_uncompressed.dcm", JLS, True),
    ("dcmcjpeg", ["+e1"], "OBXXXX1A_2frame.dcm", JLS, True),  # PALETTE COLOR, 2 frames
    ("dcmcjpls", [], "gdcm-US-ALOKA-16.dcm", JLS, True),  # PALETTE COLOR, 16-bit
    ("dcmcjpeg", ["+eb"], "SC_rgb_2frame.dcm", JPEG, False),
    ("compress", [JPEG2000], "emri_small.dcm", J2K, True),
    ("compress", [J2K], "US1_UNCR.dcm", J2K, True),
]


@pytest.mark.parametrize("tool, args, name, expected, lossless", TRANSCODES,
                         ids=[f"{t[0]}{''.join(t[1]) if t[0] != 'compress' else t[1][0].keyword}-{t[2]}"
                              for t in TRANSCODES])
def test_round_trip_transcoded(tool, args, name, expected, lossless, tmp_path):
    source = tmp_path / "in.dcm"
    if tool == "compress":
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.compress(args[0], j2k_cr=[10] if args[0] == JPEG2000 else None, generate_instance_uid=False)
        ds.save_as(source, enforce_file_format=True)
    else:
        subprocess.run([tool, *args, get_testdata_file(name), str(source)], check=True, timeout=60)
    out = tmp_path / "out.dcm"
    round_trip(source, out, lossless, expected)
    assert _dciodvfy_errors(out) <= _dciodvfy_errors(source)


def test_lossy_history_is_appended():
    """A second lossy step adds one Ratio and one Method value; an unrecorded source step is recorded first."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.LossyImageCompressionRatio = "17.4"
    frames = Frames.decode(ds)
    frames.blank(0, [(0, 0, 10, 10)])
    assert frames.encode_into(ds) == JPEG
    assert list(ds.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_10918_1"]
    assert len(ds.LossyImageCompressionRatio) == 2 and float(ds.LossyImageCompressionRatio[1]) > 1

    unrecorded = pydicom.dcmread(get_testdata_file("JPEGLSNearLossless_08.dcm"))
    for keyword in ("LossyImageCompression", "LossyImageCompressionMethod", "LossyImageCompressionRatio"):
        if keyword in unrecorded:
            del unrecorded[keyword]
    frames = Frames.decode(unrecorded)
    frames.blank(0, [(0, 0, 5, 5)])
    frames.encode_into(unrecorded)
    assert unrecorded.LossyImageCompression == "01"
    assert list(unrecorded.LossyImageCompressionMethod) == ["ISO_14495_1", "ISO_14495_1"]

    lossless_out = pydicom.dcmread(get_testdata_file("US1_J2KI.dcm"))
    Frames.decode(lossless_out).encode_into(lossless_out)  # written as JPEG 2000 Lossless: no new step
    assert lossless_out.LossyImageCompression == "01"
    assert lossless_out.PhotometricInterpretation == "YBR_RCT"


def test_frames_left_alone_keep_their_codestream():
    """Only the frames blank() changed are re-encoded: the others keep their source bytes (no second generation)."""
    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    source = list(generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))
    frames = Frames.decode(ds)
    frames.blank(3, [(0, 0, 40, 20)])
    assert frames.encode_into(ds) == JPEG
    written = list(generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))
    assert [i for i in range(ds.NumberOfFrames) if written[i] != source[i]] == [3]
    assert len(ds.LossyImageCompressionMethod) == 2  # the source's step (unrecorded) and this one

    untouched = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    Frames.decode(untouched).encode_into(untouched)  # nothing blanked: nothing re-encoded, no lossy step added
    assert untouched.LossyImageCompressionMethod == "ISO_10918_1"


def test_black_is_what_displays_black():
    """MONOCHROME1 blanks high, signed MONOCHROME2 at or below the window, palette with its darkest entry."""
    mono1 = Frames.decode(pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm")))
    assert mono1.black[0] >= mono1.stored.max()
    mono1.blank(0, [(0, 0, 50, 50)])
    shown = mono1.display(0)
    # Window 550 / 1024 ends above the 10-bit range: the blanked box is as dark as anything this image can show.
    assert shown[:50, :50].max() == shown.min() and shown[:50, :50].max() <= 10

    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    frames = Frames.decode(ct)
    frames.blank(0, [(0, 0, 20, 20)])
    assert frames.black[0] <= frames.stored.min() and frames.display(0)[:20, :20].max() == 0

    palette = pydicom.dcmread(get_testdata_file("OBXXXX1A.dcm"))
    frames = Frames.decode(palette)
    frames.blank(0, [(0, 0, 30, 30)])
    shown = frames.display(0)
    assert shown.shape[-1] == 3
    assert shown[:30, :30].astype(int).sum(axis=-1).max() == shown.astype(int).sum(axis=-1).min()


def test_display_matches_pydicom():
    """YBR_FULL shown as pydicom converts it (within rounding); RGB and palette exactly."""
    ds = pydicom.dcmread(get_testdata_file("SC_ybr_full_uncompressed.dcm"))
    ours = Frames.decode(ds).display(0).astype(int)
    assert np.abs(ours - ds.pixel_array.astype(int)).max() <= 1
    ds = pydicom.dcmread(get_testdata_file("OBXXXX1A.dcm"))
    from pydicom.pixels import apply_color_lut

    expected = apply_color_lut(ds.pixel_array, ds)
    assert np.array_equal(Frames.decode(ds).display(0), (expected >> 8).astype(np.uint8)
                          if expected.max() > 255 else expected.astype(np.uint8))


def test_blank_counts_changed_pixels_once_and_clips():
    frames = Frames.decode(pydicom.dcmread(get_testdata_file("US1_UNCR.dcm")))
    first = frames.blank(0, [(-10, -10, 20, 20), (10, 10, 30, 30)])
    assert first <= 20 * 20 + 20 * 20 - 10 * 10
    assert frames.blank(0, [(0, 0, 30, 30)]) == 0  # already black
    assert frames.blank(0, [(700, 500, 900, 900), (5, 5, 5, 9)]) == 0  # outside the frame / empty


def test_errors_name_the_syntax_not_the_patient():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PatientName = "Doe^Jane"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    with pytest.raises(PixelCodecError, match="1.2.840.10008.1.2.4.100") as info:
        Frames.decode(ds)
    assert "Doe" not in str(info.value)
    truncated = pydicom.dcmread(get_testdata_file("MR_truncated.dcm"))
    with pytest.raises(PixelCodecError, match="Explicit VR Little Endian"):
        Frames.decode(truncated)
    del ds.PixelData
    with pytest.raises(PixelCodecError, match="Pixel Data"):
        Frames.decode(ds)


def test_enhanced_multiframe_uses_each_frames_window():
    """Per-Frame Functional Groups win over the Shared ones (PS3.3 C.7.6.16), frame by frame."""
    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    voi = pydicom.Dataset()
    voi.WindowCenter, voi.WindowWidth = 3000, 10  # above every value of the image: frame 1 shows all black
    ds.PerFrameFunctionalGroupsSequence[1].FrameVOILUTSequence = [voi]
    frames = Frames.decode(ds)
    assert frames.display(0).max() > 0
    assert frames.display(1).max() == 0
