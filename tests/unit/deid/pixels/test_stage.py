"""One instance through the pixel stage (stage.py, proof.py) and through the engine, with real Tesseract and the
real codec: what is blanked, what stays readable, the record, the marks, the policy."""

import numpy as np
import pydicom
import pytest

from dicom_relay.deid import Deidentifier, DeidOptions, PatientIdentity
from dicom_relay.deid.pixels import detect, rules, stage
from dicom_relay.deid.pixels.codec import Frames
from dicom_relay.deid.pixels.ocr import TesseractReader
from dicom_relay.deid.pixels.proof import prove
from tests.support.samples import generate_ct_study

from .render import DEVICE_LINES, IDENTIFYING_LINES, render, us_dataset

KEY = "k" * 32
IDENTITY = PatientIdentity("PSEUDO-7", 12, {"A77310": "ACC-PSEUDO"})


@pytest.fixture(scope="module")
def reader():
    return TesseractReader()


def _image(seed=3):
    # Large enough type that every line is read (the reader's accuracy is tested in test_ocr_detect).
    return render(seed, lines=IDENTIFYING_LINES[:4] + DEVICE_LINES[:2], sizes=(16, 22))


def _readable(frames_or_rgb, reader) -> str:
    rgb = frames_or_rgb.display(0) if isinstance(frames_or_rgb, Frames) else frames_or_rgb
    return " ".join(line.text for line in reader.read(rgb)).upper()


def _run(ds, policy, reader):
    return stage.clean_instance(ds, policy=policy, needles=tuple(detect.needles(ds)), rules=rules.load(),
                                scanned_because="modality US", reader=reader)


def test_clean_blanks_identifying_text_keeps_the_rest_and_proves_it(reader):
    img = _image()
    ds = us_dataset(img.rgb)
    record = _run(ds, "clean", reader)
    assert record.verdict == "clean" and record.reason is None, record
    after = Frames.decode(ds)
    text = _readable(after, reader)
    for value in ("DOE", "JANE", "84213377", "15-MAR-2024", "A77310"):  # labels such as "ID:" may stay
        assert value not in text
    assert "TIS" in text or "DEPTH" in text  # device text is kept under clean
    # Only pixels inside the recorded boxes changed.
    mask = np.zeros(img.rgb.shape[:2], bool)
    [group] = record.blanked
    for x0, y0, x1, y1 in group["boxes"]:
        mask[y0:y1, x0:x1] = True
    changed = (after.display(0) != img.rgb).any(axis=2)
    assert changed.any() and not (changed & ~mask).any()
    assert record.pixels_changed == int(changed.sum())
    assert set(group["why"]) >= {"ocr:PatientName", "ocr:PatientID", "ocr:StudyDate", "ocr:AccessionNumber"}
    assert record.engine["engine"] == "tesseract" and record.transfer_syntax == "1.2.840.10008.1.2.1"


def test_all_text_leaves_no_text_at_all(reader):
    ds = us_dataset(_image(4).rgb)
    record = _run(ds, "all-text", reader)
    assert record.verdict == "clean", record
    assert [line for line in reader.read(Frames.decode(ds).display(0)) if line.is_text] == []
    assert record.lines_left == 0


def test_a_cine_loop_records_its_boxes_once_for_all_frames(reader):
    ds = us_dataset(_image(5).rgb, frames=12)
    record = _run(ds, "clean", reader)
    assert record.verdict == "clean" and record.frames == 12
    assert len(record.blanked) == 1 and record.blanked[0]["frames"] == [[1, 12]]


def test_the_proof_names_the_attribute_and_the_frame_never_the_value(reader):
    ds = us_dataset(_image(6).rgb, frames=2)
    proof = prove(Frames.decode(ds), tuple(detect.needles(ds)), "clean", reader)  # nothing was cleaned
    assert proof.reason and "frame 1 of 2" in proof.reason
    assert not any(v in proof.reason.upper() for v in ("DOE", "JANE", "84213377", "A77310", "2024"))


def test_rule_boxes_are_blanked_even_where_ocr_reads_nothing(reader):
    rgb = np.zeros((120, 160, 3), np.uint8)
    rgb[5:15, 5:100] = 180  # a grey bar no OCR calls text
    ds = us_dataset(rgb, Manufacturer="ACME")
    rs = rules.RuleSet.parse("version: 1\nrules:\n  - id: acme-top\n    match: {Manufacturer: ACME}\n"
                             "    boxes: [[0, 0, 160, 20]]\n")
    record = stage.clean_instance(ds, policy="clean", needles=(), rules=rs, scanned_because="t", reader=reader)
    assert record.rules == ["acme-top"] and record.pixels_changed == 95 * 10
    assert not Frames.decode(ds).display(0)[:20].any()


def test_text_wholly_inside_a_rule_box_is_blanked_unread_and_the_proof_still_reads(reader):
    img = _image(7)
    h, w = img.rgb.shape[:2]
    # The rule takes the top half; text there is blanked whatever it says, so it is not read first.
    rs = rules.RuleSet.parse("version: 1\nrules:\n  - id: acme-top\n    match: {Manufacturer: ACME}\n"
                             f"    boxes: [[0, 0, {w}, {h // 2}]]\n")
    top = [b for b in img.boxes if b[3] <= h // 2 - 4]
    bottom = [b for b in img.boxes if b[1] >= h // 2 + 4]
    assert top and bottom  # the scene has text on both sides of the rule's edge
    fresh = TesseractReader()
    ds = us_dataset(img.rgb, Manufacturer="ACME")
    record = stage.clean_instance(ds, policy="all-text", needles=tuple(detect.needles(ds)), rules=rs,
                                  scanned_because="t", reader=fresh)
    assert record.verdict == "clean", record
    after = Frames.decode(ds).display(0)
    assert not after[: h // 2].any()
    assert [line for line in reader.read(after) if line.is_text] == []  # bottom text blanked as read by OCR
    whys = {why for group in record.blanked for why in group["why"]}
    assert "acme-top" in whys and "ocr:text" in whys
    # The first pass skips the regions wholly inside the rule box (but those sharing rows with one outside it).
    skipping, everything = TesseractReader(), TesseractReader()
    kept = skipping.read(img.rgb, skip=[(0, 0, w, h // 2)])
    everything.read(img.rgb)
    assert 0 < skipping.regions_read < everything.regions_read
    outside = [line.box for line in kept if line.box[3] > h // 2]
    assert all(any(min(b[3], o[3]) > max(b[1], o[1]) for o in outside) for b in (line.box for line in kept))


def test_a_value_printed_across_a_rule_box_edge_is_still_blanked_outside_it():
    from PIL import Image, ImageDraw, ImageFont

    from .render import FONTS

    img = Image.new("RGB", (320, 80))
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(str(FONTS[0]), 20)
    draw.text((10, 30), "ID 842133", font=font, fill=(255, 255, 255))  # inside the rule box
    draw.text((142, 30), "77", font=font, fill=(255, 255, 255))  # outside it: the rest of the patient ID
    rgb = np.asarray(img).copy()
    tail = (140, 25, 175, 60)
    assert rgb[tail[1]:tail[3], tail[0]:tail[2]].any()
    ds = us_dataset(rgb, Manufacturer="ACME")
    rs = rules.RuleSet.parse("version: 1\nrules:\n  - id: acme-left\n    match: {Manufacturer: ACME}\n"
                             "    boxes: [[0, 0, 135, 80]]\n")
    record = stage.clean_instance(ds, policy="clean", needles=tuple(detect.needles(ds)), rules=rs,
                                  scanned_because="t", reader=TesseractReader())
    assert record.verdict == "clean", record
    whys = {why for group in record.blanked for why in group["why"]}
    assert whys == {"acme-left", "ocr:PatientID"}, whys  # "77" alone matches nothing: only the joined line does
    after = Frames.decode(ds).display(0)
    assert not after[tail[1]:tail[3], tail[0]:tail[2]].any()


def test_pixel_data_that_cannot_be_decoded_holds_the_instance_back(reader):
    ds = us_dataset(np.zeros((16, 16, 3), np.uint8))
    ds.PixelData = ds.PixelData[:100]  # truncated
    record = _run(ds, "clean", reader)
    assert record.held and record.reason.startswith("pixels could not be read")


# --- through the engine ---------------------------------------------------------------------------------

def _write(tmp_path, ds, name="in.dcm"):
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def test_engine_delivers_a_cleaned_ultrasound_image_marked(tmp_path):
    src = _write(tmp_path, us_dataset(_image(7).rgb))
    result = Deidentifier(KEY).deidentify_file(src, tmp_path / "out", IDENTITY)
    assert result.quarantine_reason is None and result.pixels["verdict"] == "clean"
    out = pydicom.dcmread(result.path)
    assert out.BurnedInAnnotation == "NO"
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100", "113107", "113101"]
    assert "Clean Pixel Data Option" in out.DeidentificationMethod
    assert out.PatientName == "PSEUDO-7"
    assert result.pixels["pixels_changed"] > 0


def test_engine_under_hold_holds_back_without_reading(tmp_path):
    src = _write(tmp_path, us_dataset(_image(8).rgb))
    result = Deidentifier(KEY, DeidOptions(pixels="hold")).deidentify_file(src, tmp_path / "out", IDENTITY)
    assert result.path is None and result.quarantine_reason == "pixel policy hold: modality US"
    assert result.pixels is None


def test_engine_holds_back_what_it_could_not_clean_with_the_record(tmp_path):
    ds = us_dataset(np.zeros((16, 16, 3), np.uint8))
    ds.PixelData = ds.PixelData[:100]
    result = Deidentifier(KEY).deidentify_file(_write(tmp_path, ds), tmp_path / "out", IDENTITY)
    assert result.path is None and result.quarantine_reason.startswith("pixels: pixels could not be read")
    assert result.pixels["verdict"] == "held" and not (tmp_path / "out").exists()


def test_ct_primary_images_are_not_read_and_keep_the_fast_path(tmp_path):
    study = generate_ct_study(tmp_path / "ct", n_instances=2, rows=64, columns=64)
    d = Deidentifier(KEY)
    src = sorted(study.folder.glob("*.dcm"))
    acc = str(pydicom.dcmread(src[0]).AccessionNumber)
    for s in src:
        r = d.deidentify_file(s, tmp_path / "out", PatientIdentity("P", 3, {acc: "A"}))
        assert r.pixels is None and "113101" not in [i.CodeValue for i in pydicom.dcmread(r.path).DeidentificationMethodCodeSequence]
    assert d.raw_path_used == 2  # the same path, at the same speed, as before pixel cleaning existed


def _recode(ds, kind):
    """The same picture in another pixel format: 16-bit MONOCHROME2 / MONOCHROME1, RGB planar configuration 1."""
    rgb = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns, 3)
    if kind == "rgb-planar":
        ds.PlanarConfiguration = 1
        ds.PixelData = np.ascontiguousarray(rgb.transpose(2, 0, 1)).tobytes()
        return ds
    grey = rgb.max(axis=2).astype(np.uint16) * 16  # 12 bits stored
    if kind == "mono1":
        grey = 4095 - grey
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if kind == "mono1" else "MONOCHROME2"
    del ds.PlanarConfiguration
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = grey.tobytes()
    return ds


@pytest.mark.parametrize("kind", ["rgb-planar", "mono2-16bit", "mono1"])
def test_identifying_text_is_cleaned_in_other_pixel_formats(kind, reader):
    ds = _recode(us_dataset(_image(9).rgb, Modality="OT"), kind)
    record = _run(ds, "clean", reader)
    assert record.verdict == "clean" and record.pixels_changed > 0, record
    text = _readable(Frames.decode(ds), reader)
    assert "DOE" not in text and "84213377" not in text
    assert ds.PhotometricInterpretation == ("MONOCHROME1" if kind == "mono1" else
                                            "MONOCHROME2" if kind == "mono2-16bit" else "RGB")
