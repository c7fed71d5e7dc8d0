"""A burned-in-text corpus the project builds itself: every file's text, tokens and text boxes are known.

Text is rendered with Pillow (DejaVu, Liberation and FreeFont faces from Debian's font packages; several sizes,
colours and positions; over black bars, over ultrasound speckle and over CT tissue) into

- US: 640x480 single-frame RGB, PALETTE COLOR and MONOCHROME2; a dense vendor layout (13-15 px narrow and
  italic faces in grey, a colour-flow box); a 3-frame RGB cine whose last frame carries one
  more line than the others (a stage that scans only the first frame misses it); YBR_FULL_422 the way scanners
  write it (JPEG baseline, 4:2:2) and uncompressed 4:2:2; YBR_FULL colour-by-plane (Planar Configuration 1),
  native and RLE; JPEG 2000 as YBR_RCT;
- SC (Secondary Capture, a workstation screenshot): RGB and MONOCHROME2;
- CT: 512x512, 16 bits allocated, 12 stored, MONOCHROME2 and MONOCHROME1, BurnedInAnnotation YES (a dose
  screen / annotated key image);

each in the transfer syntaxes the pixel stage must handle (uncompressed, RLE, JPEG-LS lossless, JPEG 2000
lossless, JPEG lossless process 14 (.57) and its selection value 1 (.70) written by dcmtk's ``dcmcjpeg``, JPEG
baseline by ``dcmcjpeg``) where DICOM allows the combination. The header carries the same identifying values that
are burned in: patient name, ID, birth date, accession number, institution and study date, the dates printed in
several forms (``1961-04-07``, ``07.04.1961``, ``04/07/1961``, ``07 APR 1961``, ``19610407``).

The build is deterministic (seeded noise, UIDs derived from the seed) and takes a few seconds. Each
:class:`CorpusFile` lists its rendered lines: the text, the identifying tokens in it, the frames it is on, its
ink box and its *zone* (the box with a margin of a quarter of the font size, at least 3 pixels: what a person
would draw around the line). Pixels outside every zone are background that a cleaning stage must leave alone.

:func:`shipped_files` adds the ultrasound and Secondary Capture files that pydicom, pydicom-data and deid-data
ship (whose burned-in text is not known in advance).

To look at it: ``python -m tests.support.pixel_corpus DEST`` (from the checkout root, PYTHONPATH=include:.).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

FONT_DIR = Path("/usr/share/fonts/truetype")
# Faces of three Debian font packages (fonts-dejavu-core, fonts-liberation, fonts-freefont-ttf): sans, serif
# and monospace, the kinds scanner and workstation overlays use.
FONTS = (
    "dejavu/DejaVuSans.ttf",
    "dejavu/DejaVuSansMono-Bold.ttf",
    "dejavu/DejaVuSerif.ttf",
    "liberation/LiberationSans-Regular.ttf",
    "liberation/LiberationMono-Regular.ttf",
    "liberation/LiberationSerif-Bold.ttf",
    "freefont/FreeSans.ttf",
    "freefont/FreeMonoBold.ttf",
    "freefont/FreeSerif.ttf",
)

# The transfer syntaxes of issue 8 item 4, by short name (the short name is part of each file name).
TRANSFER_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "j2k": JPEG2000Lossless,
    "jpeg57": JPEGLossless,
    "jpeg70": JPEGLosslessSV1,
    "baseline": JPEGBaseline8Bit,
}
LOSSY = {JPEGBaseline8Bit}
_DCMCJPEG_FLAG = {JPEGLossless: "+el", JPEGLosslessSV1: "+e1", JPEGBaseline8Bit: "+eb"}

FAMILY = ("KOWALCZYK", "HAVERBROOK", "MONTGOMERIE", "ABERNATHY", "VANDERMEER", "OKONKWO", "FITZWILLIAM", "LINDQVIST")
GIVEN = ("ROSALIND", "BARTHOLOMEW", "GWENDOLYN", "MAXIMILIAN", "FREDERIKA", "CORNELIUS", "EVANGELINE", "THADDEUS")
INSTITUTIONS = ("ST BARNABY GENERAL HOSPITAL", "NORTHFIELD ROYAL INFIRMARY", "MERIDIAN VALLEY CLINIC",
                "WESTBROOK UNIVERSITY MEDICAL")
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


@dataclass(frozen=True)
class Patient:
    """The identifying values of one scene: in the header and burned into the pixels."""

    family: str
    given: str
    patient_id: str
    birth_date: dt.date
    accession: str
    institution: str
    study_date: dt.date

    @property
    def dicom_name(self) -> str:
        return f"{self.family}^{self.given}"


def printed_dates(d: dt.date) -> list[str]:
    """The forms in which scanners and workstations print a date."""
    return [d.strftime("%Y-%m-%d"), d.strftime("%d.%m.%Y"), d.strftime("%m/%d/%Y"),
            f"{d.day:02d} {MONTHS[d.month - 1]} {d.year}", d.strftime("%Y%m%d")]


@dataclass(frozen=True)
class TextLine:
    """One rendered line of text.

    ``tokens`` are the identifying values in it, as printed (a name's components separately); ``words`` every
    word of 4 characters or more, identifying or not (what policy ``all-text`` must remove). ``frames`` is
    None when the line is on every frame. ``box`` is the ink box (x0, y0, x1, y1, end exclusive), ``zone`` the
    box with the margin.
    """

    text: str
    tokens: tuple[str, ...]
    words: tuple[str, ...]
    font: str
    size: int
    box: tuple[int, int, int, int]
    zone: tuple[int, int, int, int]
    frames: tuple[int, ...] | None = None


@dataclass
class CorpusFile:
    """One generated DICOM file and what is burned into it."""

    path: Path
    scene: str  # files of one scene share pixels (up to the codec) and header values
    modality: str
    sop_class: str
    transfer_syntax: str
    photometric: str
    frames: int
    rows: int
    columns: int
    bits_allocated: int
    lines: list[TextLine] = field(default_factory=list)
    patient: Patient | None = None

    @property
    def lossless(self) -> bool:
        return self.transfer_syntax not in LOSSY

    @property
    def tokens(self) -> list[str]:
        """Every identifying token burned in (deduplicated, in order)."""
        return list(dict.fromkeys(t for line in self.lines for t in line.tokens))

    @property
    def words(self) -> list[str]:
        return list(dict.fromkeys(w for line in self.lines for w in line.words))

    def tokens_on(self, frame: int) -> list[str]:
        return list(dict.fromkeys(t for ln in self.lines if ln.frames is None or frame in ln.frames for t in ln.tokens))

    def zone_mask(self, frame: int) -> np.ndarray:
        """True inside the zone of a line shown on ``frame``."""
        mask = np.zeros((self.rows, self.columns), dtype=bool)
        for ln in self.lines:
            if ln.frames is None or frame in ln.frames:
                x0, y0, x1, y1 = ln.zone
                mask[max(y0, 0):y1, max(x0, 0):x1] = True
        return mask

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        d["patient"] = None if self.patient is None else {k: str(v) for k, v in asdict(self.patient).items()}
        return d


# --- rendering ---------------------------------------------------------------------------------------------
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_DIR / name), size)


def _words(text: str) -> tuple[str, ...]:
    return tuple(w for w in "".join(c if c.isalnum() else " " for c in text).split() if len(w) >= 4)


class _Canvas:
    """Draws lines into a coverage mask per frame; the caller composites the colour/value of the text."""

    def __init__(self, width: int, height: int, n_frames: int):
        self.size = (width, height)
        self.n_frames = n_frames
        self.lines: list[TextLine] = []
        self.values: list[list[tuple[Image.Image, object]]] = [[] for _ in range(n_frames)]

    def text(self, xy, text: str, font: str, size: int, value, tokens=(), frames=None) -> TextLine:
        f = _font(font, size)
        layer = Image.new("L", self.size, 0)
        d = ImageDraw.Draw(layer)
        d.text(xy, text, font=f, fill=255)
        x0, y0, x1, y1 = (int(v) for v in d.textbbox(xy, text, font=f))
        m = max(3, size // 4)
        zone = (x0 - m, y0 - m, x1 + m, y1 + m)
        assert 0 <= x0 and x1 <= self.size[0] and 0 <= y0 and y1 <= self.size[1], f"line off the image: {text!r}"
        line = TextLine(text, tuple(tokens), _words(text), font, size, (x0, y0, x1, y1), zone,
                        None if frames is None else tuple(frames))
        for i in range(self.n_frames) if frames is None else frames:
            self.values[i].append((layer, value))
        self.lines.append(line)
        return line

    def composite(self, frame: int, base: np.ndarray) -> np.ndarray:
        """Blend the text of ``frame`` into ``base`` (H, W) or (H, W, 3), anti-aliased by coverage."""
        out = base.astype(np.float64)
        for layer, value in self.values[frame]:
            a = np.asarray(layer, dtype=np.float64) / 255.0
            if out.ndim == 3:
                a = a[..., None]
            out = out * (1 - a) + np.asarray(value, dtype=np.float64) * a
        return np.rint(out).astype(base.dtype)


def _speckle(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Ultrasound-like speckle: Rayleigh-distributed intensity, slightly blurred (0..255 float)."""
    raw = rng.rayleigh(scale, size=(h, w)).clip(0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(raw).filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float64)


def _sector_mask(h: int, w: int, apex=(320, 70), radius=390, half_angle=38.0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    dx, dy = xx - apex[0], yy - apex[1]
    r = np.hypot(dx, dy)
    ang = np.degrees(np.arctan2(dx, dy))
    return (dy > 0) & (r < radius) & (r > 25) & (np.abs(ang) < half_angle)


def _patient(rng: np.random.Generator) -> Patient:
    birth = dt.date(1930, 1, 1) + dt.timedelta(days=int(rng.integers(0, 30000)))
    study = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 2000)))
    return Patient(
        family=str(rng.choice(FAMILY)), given=str(rng.choice(GIVEN)),
        patient_id=f"MRN{int(rng.integers(1_000_000, 9_999_999))}",
        birth_date=birth, accession=f"A{int(rng.integers(10_000_000, 99_999_999))}",
        institution=str(rng.choice(INSTITUTIONS)), study_date=study)


def _pick(rng, seq):
    return seq[int(rng.integers(0, len(seq)))]


def render_us(rng: np.random.Generator, p: Patient, n_frames: int = 1) -> tuple[np.ndarray, list[TextLine]]:
    """640x480 RGB B-mode frames: a speckle sector, a black header bar, labels over the speckle."""
    h, w = 480, 640
    c = _Canvas(w, h, n_frames)
    yellow, white, green, cyan = (250, 230, 40), (245, 245, 245), (90, 240, 90), (80, 220, 240)
    bday, sday = printed_dates(p.birth_date), printed_dates(p.study_date)
    x = int(rng.integers(6, 20))
    c.text((x, 6), p.institution, _pick(rng, FONTS), int(rng.integers(16, 20)), _pick(rng, (white, cyan)),
           tokens=(p.institution,))
    c.text((x, 30), f"{p.family}, {p.given}", _pick(rng, FONTS), int(rng.integers(18, 24)), yellow,
           tokens=(p.family, p.given))
    dob = _pick(rng, bday[:4])
    c.text((x, 58), f"ID {p.patient_id}  DOB {dob}", _pick(rng, FONTS), int(rng.integers(16, 20)), white,
           tokens=(p.patient_id, dob))
    acc_line = f"Acc {p.accession}"
    c.text((w - 200 - int(rng.integers(0, 20)), 8), acc_line, _pick(rng, FONTS), 17, green, tokens=(p.accession,))
    study = _pick(rng, sday)
    c.text((w - 200 - int(rng.integers(0, 20)), 32), study, _pick(rng, FONTS), 17, white, tokens=(study,))
    # Not identifying: what policy `clean` may keep and `all-text` must not.
    c.text((w - 150, 60), "L12-5 Gain 54", _pick(rng, FONTS), 16, cyan)
    # Over the speckle, the way sonographers label an image.
    c.text((int(rng.integers(200, 260)), int(rng.integers(250, 300))), f"{p.given} {p.family}", _pick(rng, FONTS),
           int(rng.integers(22, 28)), white, tokens=(p.given, p.family))
    c.text((int(rng.integers(230, 300)), 400), "LEFT KIDNEY", _pick(rng, FONTS), 20, yellow)
    if n_frames > 1:  # a line that appears late in the cine only
        # Another printed form than the header bar's (one that differs in more than punctuation).
        other = _pick(rng, [d for d in bday if "".join(filter(str.isalnum, d)) != "".join(filter(str.isalnum, dob))])
        c.text((int(rng.integers(150, 220)), 180), f"BORN {other}", _pick(rng, FONTS), 22, green, tokens=(other,),
               frames=(n_frames - 1,))
    sector = _sector_mask(h, w)
    frames = []
    for i in range(n_frames):
        gray = _speckle(rng, h, w, 50.0) * sector
        frames.append(c.composite(i, np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)))
    return np.stack(frames), c.lines


DENSE_FONTS = ("liberation/LiberationSansNarrow-Regular.ttf", "liberation/LiberationSans-Italic.ttf",
               "freefont/FreeSansOblique.ttf", "freefont/FreeMono.ttf")


def render_us_dense(rng: np.random.Generator, p: Patient) -> tuple[np.ndarray, list[TextLine]]:
    """640x480 RGB, the harder vendor layout: small (13-15 px) narrow, italic and thin faces in grey and orange,
    lines 17 px apart, a colour-flow box in the sector and a label in it."""
    h, w = 480, 640
    c = _Canvas(w, h, 1)
    grey, orange = (200, 200, 200), (255, 165, 40)
    bday, sday = printed_dates(p.birth_date), printed_dates(p.study_date)
    birth, study = _pick(rng, bday), _pick(rng, sday)
    y = 4
    for text, tokens in ((p.institution, (p.institution,)), (f"{p.family}^{p.given}", (p.family, p.given)),
                         (f"{p.patient_id} {birth}", (p.patient_id, birth)),
                         (f"{study} {p.accession}", (study, p.accession))):
        c.text((8, y), text, _pick(rng, DENSE_FONTS), int(rng.integers(13, 16)), grey, tokens=tokens)
        y += 17
    c.text((w - 130, 4), "C5-1 Pen 3D", _pick(rng, DENSE_FONTS), 14, grey)
    sector = _sector_mask(h, w)
    gray = _speckle(rng, h, w, 60.0) * sector
    rgb = np.repeat(gray[..., None], 3, axis=2)
    # Colour flow: a red and a blue patch, the colours a label must be told apart from.
    yy, xx = np.mgrid[0:h, 0:w]
    red = (((xx - 300) / 45.0) ** 2 + ((yy - 250) / 25.0) ** 2 < 1) & sector
    blue = (((xx - 360) / 40.0) ** 2 + ((yy - 290) / 20.0) ** 2 < 1) & sector
    rgb[red] = (200, 40, 30)
    rgb[blue] = (30, 80, 220)
    c.text((int(rng.integers(180, 230)), 330), f"{p.family} RT", _pick(rng, DENSE_FONTS), 18, orange,
           tokens=(p.family,))
    return c.composite(0, rgb.astype(np.uint8))[None], c.lines


def render_sc(rng: np.random.Generator, p: Patient) -> tuple[np.ndarray, list[TextLine]]:
    """640x480 RGB workstation screenshot: title bar, a patient panel, an image viewport, a status line."""
    h, w = 480, 640
    base = np.full((h, w, 3), 228, dtype=np.float64)
    base[:34] = (30, 50, 110)  # title bar
    view = _speckle(rng, 300, 360, 45.0)
    base[110:410, 260:620] = view[..., None]
    c = _Canvas(w, h, 1)
    bday, sday = printed_dates(p.birth_date), printed_dates(p.study_date)
    c.text((10, 7), f"Viewer - {p.family}^{p.given}", _pick(rng, FONTS), 17, (255, 255, 255),
           tokens=(p.family, p.given))
    black = (15, 15, 15)
    y = 52
    birth = _pick(rng, bday)
    study = _pick(rng, sday)
    for text, tokens in ((f"Patient: {p.family}, {p.given}", (p.family, p.given)),
                         (f"MRN: {p.patient_id}", (p.patient_id,)),
                         (f"Born: {birth}", (birth,)),
                         (f"Accession: {p.accession}", (p.accession,)),
                         (f"Study: {study}", (study,))):
        size = int(rng.integers(15, 19))
        c.text((12, y), text, _pick(rng, FONTS), size, black, tokens=tokens)
        y += size + 14
    c.text((12, 440), p.institution, _pick(rng, FONTS), 16, (120, 20, 20), tokens=(p.institution,))
    c.text((270, 420), "Zoom 100% Series 3", _pick(rng, FONTS), 15, black)
    c.text((280, 120), f"{p.patient_id}", _pick(rng, FONTS), 20, (250, 250, 120), tokens=(p.patient_id,))
    return c.composite(0, base.astype(np.uint8))[None], c.lines


def render_ct(rng: np.random.Generator, p: Patient) -> tuple[np.ndarray, list[TextLine]]:
    """512x512 12-bit CT (stored value = HU + 1024): a body ellipse, a spine, overlay text at the maximum value."""
    h = w = 512
    yy, xx = np.mgrid[0:h, 0:w]
    body = ((xx - 256) / 200.0) ** 2 + ((yy - 270) / 150.0) ** 2 < 1
    bone = ((xx - 256) / 28.0) ** 2 + ((yy - 360) / 24.0) ** 2 < 1
    img = np.where(body, 1064.0, 24.0) + rng.normal(0, 18, (h, w)) * body
    img[bone] = 1900 + rng.normal(0, 40, int(bone.sum()))
    c = _Canvas(w, h, 1)
    bday, sday = printed_dates(p.birth_date), printed_dates(p.study_date)
    birth, study = _pick(rng, bday), _pick(rng, sday)
    top = 4095.0
    c.text((8, 6), p.dicom_name, _pick(rng, FONTS), int(rng.integers(16, 21)), top, tokens=(p.family, p.given))
    c.text((8, 30), p.patient_id, _pick(rng, FONTS), 17, top, tokens=(p.patient_id,))
    c.text((8, 52), birth, _pick(rng, FONTS), 17, top, tokens=(birth,))
    c.text((300, 6), p.accession, _pick(rng, FONTS), 17, top, tokens=(p.accession,))
    c.text((300, 30), study, _pick(rng, FONTS), 17, top, tokens=(study,))
    c.text((8, 486), p.institution, _pick(rng, FONTS), 16, top, tokens=(p.institution,))
    c.text((360, 486), "KV 120 W 400", _pick(rng, FONTS), 15, top)
    # Inside the body: a measurement label with the patient's name in it, as some workstations print.
    c.text((150, 200), f"{p.family} LIVER", _pick(rng, FONTS), 20, top, tokens=(p.family,))
    out = c.composite(0, np.clip(img, 0, 4095).astype(np.uint16))
    return out[None], c.lines


# --- DICOM -------------------------------------------------------------------------------------------------
def _uid(seed: str, *labels: str) -> str:
    return generate_uid(entropy_srcs=[seed, *labels])


def _header(seed: str, scene: str, p: Patient, sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _uid(seed, scene, "sop")  # replaced per file by build()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = p.study_date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "102231"
    ds.AccessionNumber = p.accession
    ds.Modality = modality
    ds.Manufacturer = "RELAY TEST SCANNERS"
    ds.InstitutionName = p.institution
    ds.ReferringPhysicianName = ""
    ds.PatientName = p.dicom_name
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = p.birth_date.strftime("%Y%m%d")
    ds.PatientSex = "O"
    ds.StudyInstanceUID = _uid(seed, scene, "study")
    ds.SeriesInstanceUID = _uid(seed, scene, "series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.Laterality = ""  # Type 2C: an abdomen is not a paired body part, but dciodvfy wants it present
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "YES"
    return ds


def _set_pixels(ds: Dataset, arr: np.ndarray, photometric: str) -> None:
    """Native pixel data for ``arr`` (frames, rows, cols[, 3]) in ``photometric`` (converted here)."""
    frames, rows, cols = arr.shape[:3]
    ds.Rows, ds.Columns = rows, cols
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelRepresentation = 0
    if arr.dtype == np.uint16:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PhotometricInterpretation = photometric
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        ds.SamplesPerPixel = 3
        # US (PS3.3 C.8.5.6.1.16) wants YBR_FULL colour-by-plane, as scanners write it; the rest by pixel.
        ds.PlanarConfiguration = 1 if photometric == "YBR_FULL" else 0
        data = arr if photometric == "RGB" else convert_color_space(arr, "RGB", "YBR_FULL")
        if ds.PlanarConfiguration == 1:
            data = data.transpose(0, 3, 1, 2)
        if photometric == "YBR_FULL_422":
            # PS3.5 8.2.1 / 8.1.1: native 4:2:2 stores, per pair of pixels, Y1 Y2 Cb Cr (chroma averaged).
            y = data[..., 0].reshape(frames, rows, cols // 2, 2)
            cb = data[..., 1].reshape(frames, rows, cols // 2, 2).mean(axis=3).round().astype(np.uint8)
            cr = data[..., 2].reshape(frames, rows, cols // 2, 2).mean(axis=3).round().astype(np.uint8)
            data = np.concatenate([y, cb[..., None], cr[..., None]], axis=3)
        ds.PixelData = np.ascontiguousarray(data).tobytes()
    elif photometric == "PALETTE COLOR":
        ds.SamplesPerPixel = 1
        indexed, lut = [], None
        # One palette for the whole cine (the first frame's), as scanners do.
        pal_img = Image.fromarray(arr[0]).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        for f in arr:
            indexed.append(np.asarray(Image.fromarray(f).quantize(palette=pal_img, dither=Image.Dither.NONE)))
        lut = np.zeros((256, 3), dtype=np.uint16)
        pal = np.asarray(pal_img.getpalette()[: 256 * 3], dtype=np.uint16).reshape(-1, 3)
        lut[: len(pal)] = pal
        lut = lut * 257  # 16-bit entries
        for i, colour in enumerate(("Red", "Green", "Blue")):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{colour}PaletteColorLookupTableData", np.ascontiguousarray(lut[:, i]).astype("<u2").tobytes())
        ds.PixelData = np.stack(indexed).astype(np.uint8).tobytes()
    else:  # MONOCHROME1/2
        ds.SamplesPerPixel = 1
        if arr.ndim == 4:
            arr = np.asarray([np.asarray(Image.fromarray(f).convert("L")) for f in arr])
        if photometric == "MONOCHROME1":
            arr = (4095 if arr.dtype == np.uint16 else 255) - arr
        ds.PixelData = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"


def _modules(ds: Dataset, kind: str, frames: int) -> None:
    """The modality-specific attributes of the US, SC and CT IODs."""
    if kind == "us":
        ds.ImageType = ["DERIVED", "PRIMARY", "ABDOMINAL", "0001"] if frames == 1 else ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
        ds.LossyImageCompression = "00"
        if frames > 1:
            ds.FrameTime = 40.0
            ds.FrameIncrementPointer = 0x00181063
    elif kind == "sc":
        ds.ConversionType = "WSD"
        ds.ImageType = ["DERIVED", "SECONDARY"]
    elif kind == "ct":
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.KVP = 120
        ds.PatientPosition = "HFS"
        ds.AcquisitionNumber = 1
        ds.FrameOfReferenceUID = _uid(str(ds.StudyInstanceUID), "for")
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [-250, -250, 0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.9765625, 0.9765625]
        ds.SliceThickness = 2.5
        ds.WindowCenter, ds.WindowWidth = 1064, 800


def _dcmcjpeg(native: Path, out: Path, ts: str) -> None:
    cmd = ["dcmcjpeg", _DCMCJPEG_FLAG[ts], "+un", str(native), str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or not out.exists():
        raise RuntimeError(f"dcmcjpeg failed ({' '.join(cmd[:3])}): {r.stderr.strip()[:300]}")


# What each scene is written as: (kind, photometric, transfer syntax short names, frames). DICOM does not allow
# every pair: YBR_FULL_422 is native or JPEG baseline only; lossy baseline is 8 bits only; palettes stay lossless.
PLAN = {
    "us_rgb": ("us", "RGB", ("explicit", "rle", "jpegls", "j2k", "jpeg57", "jpeg70"), 1),
    "us_ybr422": ("us", "YBR_FULL_422", ("explicit",), 1),
    "us_ybr_full": ("us", "YBR_FULL", ("explicit", "rle"), 1),  # Planar Configuration 1
    "us_scanner": ("us", "RGB", ("baseline",), 1),  # dcmcjpeg writes YBR_FULL_422, as ultrasound scanners do
    "us_palette": ("us", "PALETTE COLOR", ("explicit", "rle"), 1),
    "us_mono2": ("us", "MONOCHROME2", ("explicit", "jpegls", "jpeg57"), 1),
    "us_cine": ("us", "RGB", ("explicit", "rle", "baseline"), 3),
    "us_dense": ("us", "RGB", ("explicit", "baseline"), 1),  # small narrow / italic text, colour flow
    "sc_rgb": ("sc", "RGB", ("explicit", "j2k", "baseline"), 1),
    "sc_mono2": ("sc", "MONOCHROME2", ("explicit", "rle"), 1),
    "ct_mono2": ("ct", "MONOCHROME2", ("explicit", "rle", "jpegls", "j2k", "jpeg57", "jpeg70"), 1),
    "ct_mono1": ("ct", "MONOCHROME1", ("explicit", "j2k"), 1),
}
KIND_SOP = {"us": (UltrasoundImageStorage, "US"), "sc": (SecondaryCaptureImageStorage, "OT"),
            "ct": (CTImageStorage, "CT")}


def build(dest: Path, seed: str = "pixel-corpus", scenes: dict | None = None) -> list[CorpusFile]:
    """Write the corpus (``scenes`` in the form of :data:`PLAN`, by default PLAN itself) into ``dest`` (created; file names carry scene, photometric and transfer syntax, no PHI
    because the patients are invented) and return what is in each file. Same seed, same files, same UIDs.

    A ``manifest.json`` beside the files lists the same records for a person who wants to look.
    """
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / ".native"
    tmp.mkdir(exist_ok=True)
    out: list[CorpusFile] = []
    for scene, (kind, photometric, syntaxes, n_frames) in (scenes or PLAN).items():
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}/{scene}".encode()).digest()[:8], "little"))
        p = _patient(rng)
        if kind == "us" and scene.startswith("us_dense"):
            arr, lines = render_us_dense(rng, p)
        elif kind == "us":
            arr, lines = render_us(rng, p, n_frames=n_frames)
        elif kind == "sc":
            arr, lines = render_sc(rng, p)
        else:
            arr, lines = render_ct(rng, p)
        sop_class, modality = KIND_SOP[kind]
        if kind == "us" and arr.shape[0] > 1:
            sop_class = UltrasoundMultiFrameImageStorage
        for short in syntaxes:
            ts = TRANSFER_SYNTAXES[short]
            ds = _header(seed, scene, p, sop_class, modality)
            _modules(ds, kind, arr.shape[0])
            _set_pixels(ds, arr, photometric)
            name = f"{scene}_{photometric.replace(' ', '').lower()}_{short}.dcm"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(seed, scene, short)
            path = dest / name
            if ts == ExplicitVRLittleEndian:
                ds.save_as(path, enforce_file_format=True)
            elif ts in _DCMCJPEG_FLAG:
                native = tmp / name
                ds.save_as(native, enforce_file_format=True)
                _dcmcjpeg(native, path, ts)
            else:
                if ts == JPEG2000Lossless and kind == "us" and photometric == "RGB":
                    # Ultrasound in JPEG 2000 is YBR_RCT (C.8.5.6.1.2): the encoder applies the reversible
                    # colour transform to the RGB data when told so.
                    ds.PhotometricInterpretation = "YBR_RCT"
                planar = ds.get("PlanarConfiguration")
                if planar == 1:
                    # pydicom's encoders read colour-by-pixel input only; RLE stores by plane whatever the
                    # attribute says, so the attribute is set back afterwards (decoders ignore it for RLE).
                    by_pixel = np.frombuffer(ds.PixelData, np.uint8).reshape(arr.shape[0], 3, *arr.shape[1:3])
                    ds.PixelData = np.ascontiguousarray(by_pixel.transpose(0, 2, 3, 1)).tobytes()
                    ds.PlanarConfiguration = 0
                ds.compress(ts, generate_instance_uid=False)
                if planar == 1:
                    ds.PlanarConfiguration = 1
                ds.save_as(path, enforce_file_format=True)
            written = pydicom.dcmread(path, stop_before_pixels=True)
            out.append(CorpusFile(
                path=path, scene=scene, modality=modality, sop_class=sop_class,
                transfer_syntax=str(written.file_meta.TransferSyntaxUID),
                photometric=str(written.PhotometricInterpretation), frames=int(written.get("NumberOfFrames", 1) or 1),
                rows=int(written.Rows), columns=int(written.Columns), bits_allocated=int(written.BitsAllocated),
                lines=list(lines), patient=p))
    shutil.rmtree(tmp, ignore_errors=True)
    (dest / "manifest.json").write_text(json.dumps([f.to_json() for f in out], indent=1))
    return out


# --- files other toolkits ship ------------------------------------------------------------------------------
US_SOP_CLASSES = {UltrasoundImageStorage, UltrasoundMultiFrameImageStorage,
                  "1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3"}  # the last two: retired classes
SC_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture and its multi-frame variants (.7.1 ... .7.4)


def shipped_files() -> list[Path]:
    """The ultrasound and Secondary Capture files that pydicom, pydicom-data and deid-data ship.

    Selected by SOP Class (US, US multi-frame, the Secondary Capture family) or Modality US. Files that are not
    DICOM or that lack a SOP Class are left out (they are no image a scanner sends).
    """
    from pydicom.data import get_testdata_files
    import deid_data

    candidates = [Path(f) for f in get_testdata_files()]
    candidates += sorted(p for p in (Path(deid_data.__file__).parent / "data").rglob("*.dcm"))
    found = []
    for path in sorted(set(candidates), key=lambda p: (p.name, str(p))):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM (pydicom-data holds some deliberately broken files)
            continue
        sop = str(ds.get("SOPClassUID", ""))
        if not sop or "PixelData" not in pydicom.dcmread(path, specific_tags=["PixelData"]):
            continue
        if sop in US_SOP_CLASSES or sop.startswith(SC_SOP_PREFIX) or str(ds.get("Modality", "")) == "US":
            found.append(path)
    return found


def scanned_shipped_files() -> list[Path]:
    """Every file pydicom, pydicom-data and deid-data ship whose pixels the default policy scans (US, SC, XA,
    BurnedInAnnotation YES, ImageType SECONDARY, ...: :func:`dicom_relay.deid.pixels.policy.scan_reason`),
    judged on a FULL pydicom read (not the engine's own header reading, which is what the tests check)."""
    from pydicom.data import get_testdata_files
    import deid_data

    from dicom_relay.deid.pixels.policy import scan_reason

    candidates = [Path(f) for f in get_testdata_files()]
    candidates += sorted(p for p in (Path(deid_data.__file__).parent / "data").rglob("*.dcm"))
    found = []
    for path in sorted(set(candidates), key=lambda p: (p.name, str(p))):
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # not DICOM, or broken on purpose
            continue
        if "PixelData" in ds and scan_reason(*scan_header(ds)) is not None:
            found.append(path)
    return found


def scan_header(ds) -> tuple[str, str, str, str]:
    """Modality, SOP Class UID, BurnedInAnnotation and ImageType (joined by backslashes): scan_reason's input."""
    image_type = ds.get("ImageType", "") or ""
    image_type = image_type if isinstance(image_type, str) else "\\".join(str(v) for v in image_type)
    return (str(ds.get("Modality", "") or ""), str(ds.get("SOPClassUID", "") or ""),
            str(ds.get("BurnedInAnnotation", "") or ""), image_type)


def copy_with_distinct_uids(files: list[Path], dest: Path) -> dict[str, Path]:
    """Copy ``files`` into ``dest`` (as ``NNN_<name>``) so that no two share a SOP Instance UID; return the map
    from new name to original.

    pydicom-data ships one image in many encodings under one SOP Instance UID (19 files for one SC image); a
    folder holding them all is one instance and 18 duplicates, and the duplicates' encodings would go untested.
    The k-th repeat gets its UID's last two digits replaced *in the file bytes* (same length, so nothing else
    moves: no re-encoding by a writer, the file is the shipped file but for that UID, wherever it occurs, the
    file meta included). Files whose UID cannot be changed that way are copied unchanged.
    """
    dest.mkdir(parents=True, exist_ok=True)
    uids = {}
    for path in files:
        try:
            uids[path] = str(pydicom.dcmread(path, stop_before_pixels=True, force=True).get("SOPInstanceUID", "") or "")
        except Exception:
            uids[path] = ""
    taken = set(uids.values())
    seen: set[str] = set()
    out = {}
    for i, path in enumerate(files):
        name = f"{i:03d}_{path.name}"  # two packages ship files of the same name
        data, uid = path.read_bytes(), uids[path]
        if uid in seen and len(uid) > 2 and uid.encode() in data:
            # The last two characters become two digits ("...1.0" -> "...110"): a valid UID of the same length.
            new = next(c for c in (f"{uid[:-2]}{n}" for n in range(10, 100))
                       if c not in taken and not re.search(r"\.0\d", c))
            taken.add(new)
            data = data.replace(uid.encode(), new.encode())
        seen.add(uid)
        (dest / name).write_bytes(data)
        out[name] = path
    return out


if __name__ == "__main__":  # python -m tests.support.pixel_corpus DEST: build the corpus to look at it
    import sys

    built = build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("pixel-corpus"))
    for f in built:
        print(f"{f.path.name:42s} {f.modality:3s} {f.photometric:14s} {f.frames} frame(s), {len(f.tokens)} tokens")
