"""Test images with known burned-in text: Pillow-rendered tokens over noisy ultrasound-like backgrounds.

Each image comes with the tokens drawn and their boxes, so tests (and the OCR comparison in
``scripts/ocr_compare.py``) can count what an engine finds and check what was blanked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype")
FONTS = [
    FONT_DIR / "dejavu/DejaVuSans.ttf",
    FONT_DIR / "dejavu/DejaVuSansMono.ttf",
    FONT_DIR / "liberation/LiberationSans-Regular.ttf",
    FONT_DIR / "liberation/LiberationMono-Regular.ttf",
    FONT_DIR / "freefont/FreeSans.ttf",
    FONT_DIR / "dejavu/DejaVuSans-Bold.ttf",
]
COLOURS = [(255, 255, 255), (255, 255, 0), (0, 255, 0), (0, 255, 255), (230, 230, 230), (255, 200, 120)]
#: Lines like an ultrasound or screenshot overlay prints: identifying values in several forms, plus
#: device text that is not identifying.
LINES = [
    "DOE, JANE", "JANE DOE", "ID: 84213377", "MRN 55120934", "ACC A77310", "2024-03-15", "15/03/2024",
    "15-MAR-2024", "14:22:05", "DOB 1961.07.04", "GENERAL HOSPITAL", "MI 0.8 TIS 0.3", "C5-1 ABD",
    "DEPTH 16cm", "FR 32Hz", "SMITH^ROBERT", "ROBERT SMITH", "PAT 9907712", "03/15/24",
]


@dataclass
class Rendered:
    rgb: np.ndarray  # (H, W, 3) uint8
    lines: list[str]
    boxes: list[tuple[int, int, int, int]]  # x0, y0, x1, y1 half-open, one per line


def background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Speckle in a sector (like a B-mode image) over black, plus a mild grey gradient and noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = (rng.rayleigh(40, (h, w)) * (0.6 + 0.4 * yy / h)).clip(0, 255)
    cx, top = w / 2, h * 0.08
    ang = np.arctan2(xx - cx, yy - top + 1e-6)
    r = np.hypot(xx - cx, yy - top)
    sector = (np.abs(ang) < 0.6) & (r < h * 0.85) & (yy > top)
    img = np.where(sector, base, rng.normal(12, 6, (h, w)).clip(0, 255))
    return np.repeat(img.astype(np.uint8)[..., None], 3, axis=2)


def render(seed: int, h: int = 480, w: int = 640, n_lines: int = 6, lines: list[str] | None = None,
           sizes=(12, 22)) -> Rendered:
    """One image with ``n_lines`` lines of text at random non-overlapping places, mostly near the edges."""
    rng = np.random.default_rng(seed)
    pyr = random.Random(seed)
    img = Image.fromarray(background(h, w, rng))
    draw = ImageDraw.Draw(img)
    chosen = list(lines) if lines is not None else pyr.sample(LINES, n_lines)
    boxes: list[tuple[int, int, int, int]] = []
    for text in chosen:
        font = ImageFont.truetype(str(pyr.choice(FONTS)), pyr.randint(*sizes))
        colour = pyr.choice(COLOURS)
        for _ in range(200):
            x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
            tw, th = x1 - x0, y1 - y0
            x = pyr.randint(2, max(3, w - tw - 3))
            y = pyr.choice([pyr.randint(2, h // 5), pyr.randint(2, h - th - 3)])
            box = (x + x0, y + y0, x + x1, y + y1)
            if all(box[2] + 6 < b[0] or b[2] + 6 < box[0] or box[3] + 6 < b[1] or b[3] + 6 < box[1] for b in boxes):
                break
        draw.text((x, y), text, font=font, fill=colour)
        boxes.append(box)
    return Rendered(np.asarray(img).copy(), chosen, boxes)


def tokens(line: str) -> list[str]:
    """The tokens of a rendered line that an engine must read: words split at spaces, commas and the PN
    component separator "^" (which no engine reads reliably and no matching needs)."""
    return [t for t in line.replace(",", " ").replace("^", " ").split() if any(c.isalnum() for c in t)]


#: The identity every test image prints (in several forms) and carries in its header.
IDENTITY = {"PatientName": "DOE^JANE", "PatientID": "84213377", "PatientBirthDate": "19610704",
            "StudyDate": "20240315", "AccessionNumber": "A77310"}
#: Identifying lines as a device prints them, and lines that are not identifying.
IDENTIFYING_LINES = ["DOE, JANE", "ID: 84213377", "15-MAR-2024", "ACC A77310", "DOB 1961.07.04"]
DEVICE_LINES = ["MI 0.8 TIS 0.3", "DEPTH 16cm", "C5-1 ABD"]


def us_dataset(rgb, *, frames: int = 1, modality: str = "US", **attrs):
    """An uncompressed RGB ultrasound instance (Explicit VR Little Endian) with ``IDENTITY`` in its header."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, UltrasoundMultiFrameImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage if frames > 1 else UltrasoundImageStorage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    for k, v in IDENTITY.items():
        setattr(ds, k, v)
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
        rgb = np.stack([rgb] * frames)
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds
