"""Reading burned-in text: a cheap text-region detector and Tesseract (through tesserocr) on each region.

Why this shape (measured in ``scripts/ocr_compare.py``; figures in docs/DEIDENTIFICATION.md): Tesseract on a
whole 640x480 ultrasound frame reads 64% of the rendered tokens and takes ~100 ms, because the speckle
confuses its page layout analysis; this reader finds 92% in ~40 ms. Overlay text is drawn with a colour far brighter (or darker) than its
surroundings, so a morphological top-hat / black-hat finds the text lines in a few milliseconds; each line is
then binarised, enlarged when small, and read by Tesseract as a block of text. One ``PyTessBaseAPI`` is kept
per thread (creating one loads the model: 0.2-0.4 s measured), and the result of each region is cached by its
binarised pixels:
a cine loop repeats the same overlay on every frame, and the proof pass re-reads regions that cleaning left
unchanged.

Coordinates are ``(x0, y0, x1, y1)``, half-open, in pixels of the frame.
"""

from __future__ import annotations

import glob
import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from dicom_relay.deid.errors import DeidError

Box = tuple[int, int, int, int]

#: Top-hat / black-hat contrast that makes a pixel a text candidate anywhere (over image content) ...
STRONG_CONTRAST = 150
#: ... and over a nearly uniform dark (or light) surround, where weaker text is still text.
WEAK_CONTRAST = 60
DARK_SURROUND, LIGHT_SURROUND = 40, 215
#: Structuring element of the top-hat: wider than a stroke, so strokes stand out; about a glyph.
_GLYPH = cv2.getStructuringElement(cv2.MORPH_RECT, (15, 15))
#: Joins the glyphs of a line (gaps up to about a space) without merging lines.
_JOIN = cv2.getStructuringElement(cv2.MORPH_RECT, (9, 3))
MIN_H, MAX_H, MIN_W = 9, 80, 14
#: Candidate pixels in the 3x3 neighbourhood (itself included) of a stroke pixel.
STROKE_NEIGHBOURS = 3
#: Regions taller than this are split into lines by their row profile (see ``_split_lines``); a row is a
#: text row when it holds at least this share of the richest row's stroke pixels.
SPLIT_H = 26
ROW_SHARE = 0.3
#: Stroke pixels a line's box must hold (count and share of its area): measured on rendered text, the
#: sparsest real line had 0.14 of its box, joined speckle at most 0.11.
MIN_STROKE_PIXELS, MIN_STROKE_DENSITY = 30, 0.13
#: A region with this share of its area inside a larger region is the same text found twice (see
#: ``_drop_contained``).
CONTAINED_SHARE = 0.9
#: ... and no taller than this times its height (the same line, not a block of lines holding it).
SAME_LINE_HEIGHT = 1.25
#: Regions lower than this are enlarged before OCR (measured on 60 images: 24 reads 87.8% of the tokens, 32
#: 86.3%, 20 87.2% but 12% faster; small glyphs need the margin).
OCR_TARGET_HEIGHT = 24
#: A word is text when Tesseract is at least this confident and it holds this many letters or digits.
MIN_CONFIDENCE = 50.0
#: Pixels of the frame around a region given to Tesseract, and white border around the binarised region.
PAD, BORDER = 2, 8
MIN_ALNUM = 2


class OcrError(DeidError):
    """The OCR engine is missing or failed; the instance cannot be cleaned (and is held back)."""


@dataclass(frozen=True)
class Line:
    """One line of text read in a frame: its box in frame pixels, the text, Tesseract's mean confidence."""

    box: Box
    text: str
    confidence: float

    @property
    def is_text(self) -> bool:
        """True when this is readable text, not noise Tesseract turned into a character or two."""
        return self.confidence >= MIN_CONFIDENCE and sum(c.isalnum() for c in self.text) >= MIN_ALNUM


def to_gray(frame: np.ndarray) -> np.ndarray:
    """One channel in which coloured overlay text keeps its contrast: the brightest channel.

    Luminance would make pure blue or red text dark; the maximum keeps any saturated colour bright, and dark
    text on a light background stays dark only if it is dark in every channel, which is what a viewer shows.
    """
    if frame.ndim == 3:
        # cv2.max of the planes: numpy's max over the last (strided) axis is ~20x slower on a 640x480 frame.
        return cv2.max(cv2.max(frame[..., 0], frame[..., 1]), frame[..., 2])
    return frame


def candidate_boxes(gray: np.ndarray) -> list[Box]:
    """Boxes of the regions that look like lines of text: cheap (a few ms per 640x480 frame) and generous.

    Strokes are pixels much brighter than the opening (top-hat) or much darker than the closing (black-hat)
    of their neighbourhood; joined horizontally they form lines, kept if their height is that of text.
    """
    opened = cv2.morphologyEx(gray, cv2.MORPH_OPEN, _GLYPH)
    closed = cv2.morphologyEx(gray, cv2.MORPH_CLOSE, _GLYPH)
    top = cv2.subtract(gray, opened)
    black = cv2.subtract(closed, gray)
    # Dark text counts only over a light surround: in speckle, every dark grain has a large black-hat.
    mask = (top > STRONG_CONTRAST) | ((top > WEAK_CONTRAST) & (opened < DARK_SURROUND))
    mask |= (black > WEAK_CONTRAST) & (closed > LIGHT_SURROUND)
    strokes = mask.astype(np.uint8)
    # A stroke is a connected run of such pixels; an isolated bright speckle grain is one or two pixels.
    strokes &= (cv2.boxFilter(strokes, -1, (3, 3), normalize=False) >= STROKE_NEIGHBOURS).astype(np.uint8)
    joined = cv2.dilate(strokes, _JOIN)
    out: list[Box] = []
    for x, y, w, h in _components(joined):
        box = (int(x), int(y), int(x + w), int(y + h))
        for b in _split_lines(strokes, box) if h > SPLIT_H else [box]:
            if b[3] - b[1] >= MIN_H and b[2] - b[0] >= MIN_W and _dense(strokes, b):
                out.append(b)
    return _drop_contained(out)


def _drop_contained(boxes: list[Box]) -> list[Box]:
    """``boxes`` without those that repeat a larger one: (almost) wholly inside it and of about its height.

    A component inside the hole of another (text inside a loop of joined strokes) is a component of its own,
    and the enclosing one's split into lines finds the same line again, a few pixels narrower: measured on the
    bench's US frames, 5 of 190 regions were such doubles. Reading the same ink twice costs a Tesseract call
    (~0.4 ms per character) and decides nothing more: the larger box holds the same line with a few pixels
    more margin, and it is the one blanked. A line inside a taller region (a block of several lines) is kept:
    Tesseract may read a line alone where it misses it in the block, and the proof must not lose that chance.
    """
    if len(boxes) < 2:
        return boxes
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    order = sorted(range(len(boxes)), key=lambda i: -areas[i])
    kept: list[int] = []
    for i in order:
        h = boxes[i][3] - boxes[i][1]
        if not any(_overlap(boxes[i], boxes[k]) >= CONTAINED_SHARE * areas[i]
                   and boxes[k][3] - boxes[k][1] <= SAME_LINE_HEIGHT * h for k in kept):
            kept.append(i)
    return [boxes[i] for i in sorted(kept)]


def _overlap(a: Box, b: Box) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def _components(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x, y, w, h) of the 8-connected components of ``mask``, top to bottom, left to right.

    The outer contours of a two-level contour hierarchy: exactly the components connectedComponentsWithStats
    finds (a component inside another's hole is a top-level contour too), measured ~15x faster on 640x480 masks.
    """
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    return sorted((cv2.boundingRect(c) for c, h in zip(contours, hierarchy[0]) if h[3] < 0),
                  key=lambda b: (b[1], b[0], b[2], b[3]))


def _dense(strokes: np.ndarray, box: Box) -> bool:
    """Glyphs fill a good share of their line's box; scattered speckle grains joined by the dilation do not."""
    x0, y0, x1, y1 = box
    n = int(strokes[y0:y1, x0:x1].sum())
    return n >= MIN_STROKE_PIXELS and n >= MIN_STROKE_DENSITY * (x1 - x0) * (y1 - y0)


def _split_lines(strokes: np.ndarray, box: Box) -> list[Box]:
    """The text lines inside a region too tall for one line: lines touching each other or image content.

    Rows rich in stroke pixels are text rows (speckle leaves a few per row); runs of such rows are lines, and
    within a line, columns with strokes separated by less than a word gap form one box.
    """
    x0, y0, x1, y1 = box
    sub = strokes[y0:y1, x0:x1]
    rows = sub.sum(axis=1)
    if rows.max() < MIN_W // 2:
        return []
    text_rows = rows >= max(3, ROW_SHARE * rows.max())
    out: list[Box] = []
    for r0, r1 in _runs(text_rows, max_gap=1):
        if not (MIN_H - 2 <= r1 - r0 <= MAX_H):
            continue
        cols = sub[r0:r1].sum(axis=0) > 0
        for c0, c1 in _runs(cols, max_gap=_JOIN.shape[1]):
            if c1 - c0 >= MIN_W:
                out.append((x0 + c0, max(0, y0 + r0 - 1), x0 + c1, min(strokes.shape[0], y0 + r1 + 1)))
    return out


def _runs(flags: np.ndarray, max_gap: int) -> list[tuple[int, int]]:
    """Half-open runs of True in ``flags``, bridging gaps of at most ``max_gap`` False values."""
    idx = np.flatnonzero(flags)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > max_gap + 1)
    starts = np.concatenate(([idx[0]], idx[breaks + 1]))
    ends = np.concatenate((idx[breaks], [idx[-1]])) + 1
    return list(zip(starts.tolist(), ends.tolist()))


def _binarise(crop: np.ndarray) -> np.ndarray:
    """Black text on white, enlarged when small: what Tesseract reads best."""
    _, b = cv2.threshold(crop, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if (b > 0).mean() < 0.5:  # the text is the minority class; make it black
        b = 255 - b
    h = b.shape[0]
    if h < OCR_TARGET_HEIGHT:
        f = OCR_TARGET_HEIGHT / h
        b = cv2.resize(b, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC)
        _, b = cv2.threshold(b, 127, 255, cv2.THRESH_BINARY)
    return cv2.copyMakeBorder(b, BORDER, BORDER, BORDER, BORDER, cv2.BORDER_CONSTANT, value=255)


def tessdata_dir() -> str:
    """The folder of Tesseract's trained models: ``TESSDATA_PREFIX`` or the Debian package's folder."""
    env = os.environ.get("TESSDATA_PREFIX")
    found = [env] if env else sorted(glob.glob("/usr/share/tesseract-ocr/*/tessdata"), reverse=True)
    for d in found:
        if d and os.path.exists(os.path.join(d, "eng.traineddata")):
            return d.rstrip("/") + "/"
    raise OcrError("Tesseract's English model is not installed (Debian package tesseract-ocr-eng)")


class TesseractReader:
    """Reads the text lines of frames with one reused Tesseract instance (not thread-safe: one per thread).

    ``engine`` and ``version`` name what checked an instance (they go into its pixel record).
    """

    engine = "tesseract"
    CACHE_SIZE = 4096

    def __init__(self, lang: str = "eng"):
        try:
            import tesserocr
        except ImportError:  # pragma: no cover - a requirement
            raise OcrError("tesserocr is not installed (see requirements.txt)") from None
        self._tesserocr = tesserocr
        self.lang = lang
        try:
            # Block mode, not single-line: a region may hold two lines the detector could not part, and on the
            # rendered test lines it read more tokens (87.2% against 82.7%) at the same speed.
            self._api = tesserocr.PyTessBaseAPI(path=tessdata_dir(), lang=lang, psm=tesserocr.PSM.SINGLE_BLOCK)
        except RuntimeError as exc:
            raise OcrError(f"Tesseract could not start ({type(exc).__name__})") from None
        # The regions are binarised black-on-white already: Tesseract's retry on the inverted image (on by
        # default, run whenever a line reads with low confidence) would only double the time of noise regions.
        self._api.SetVariable("tessedit_do_invert", "0")
        self.version = self._api.Version()
        self._cache: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self.regions_read = 0  # Tesseract calls made (the cache saves the others)

    def forget(self) -> None:
        """Empty the cache of readings (benchmarks: measure instances that share nothing with earlier ones)."""
        self._cache.clear()

    def describe(self) -> dict:
        """Engine, version and model, for the pixel record."""
        return {"engine": self.engine, "version": self.version, "model": self.lang,
                "wrapper": f"tesserocr {getattr(self._tesserocr, '__version__', '?')}"}

    def read_region(self, gray: np.ndarray, box: Box) -> tuple[str, float, Box | None]:
        """Text, mean word confidence (0-100) and ink box (the union of Tesseract's word boxes, in frame pixels;
        None when no word was found) of one region of ``gray``."""
        x0, y0, x1, y1 = box
        cx, cy = max(0, x0 - PAD), max(0, y0 - PAD)
        crop = np.ascontiguousarray(gray[cy:y1 + PAD, cx:x1 + PAD])
        # Keyed by what Tesseract would see (the binarised region): low-level noise that differs from frame to
        # frame of a loop does not survive binarisation, so the same overlay is read once.
        b = _binarise(crop)
        key = hashlib.blake2b(b.tobytes(), digest_size=16, person=b"%dx%d" % b.shape[:2]).digest()
        hit = self._cache.get(key)
        if hit is None:
            hit = self._recognise(b, crop.shape[0])
            self.regions_read += 1
            self._cache[key] = hit
            if len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        text, conf, ink = hit
        # The ink box is kept relative to the crop in the cache (the same overlay moves nowhere, but a
        # cache entry must not carry one frame's position into another).
        return text, conf, None if ink is None else (cx + ink[0], cy + ink[1], cx + ink[2], cy + ink[3])

    def _recognise(self, b: np.ndarray, crop_height: int) -> tuple[str, float, Box | None]:
        api, tess = self._api, self._tesserocr
        api.SetImageBytes(b.tobytes(), b.shape[1], b.shape[0], 1, b.shape[1])  # no PIL round trip
        text = api.GetUTF8Text().strip()
        confs = api.AllWordConfidences()
        scale = (b.shape[0] - 2 * BORDER) / crop_height
        ink = None
        # The result iterator, not GetComponentImages: the same word boxes without a PIL image made per word.
        word = tess.RIL.WORD
        for w in tess.iterate_level(api.GetIterator(), word):
            wbox = w.BoundingBox(word)
            if wbox is None:
                continue
            ink = wbox if ink is None else (min(ink[0], wbox[0]), min(ink[1], wbox[1]),
                                            max(ink[2], wbox[2]), max(ink[3], wbox[3]))
        if ink is not None:  # binarised (scaled, bordered) pixels -> crop pixels, rounded outwards
            ink = (max(0, int((ink[0] - BORDER) / scale)), max(0, int((ink[1] - BORDER) / scale)),
                   int(np.ceil((ink[2] - BORDER) / scale)), int(np.ceil((ink[3] - BORDER) / scale)))
        return text, float(sum(confs) / len(confs)) if confs else 0.0, ink

    def read(self, frame: np.ndarray, skip: tuple[Box, ...] | list[Box] = ()) -> list[Line]:
        """Every line of text found in ``frame`` (uint8, (H, W) or (H, W, 3)), with boxes in frame pixels.

        A line's box is its region narrowed vertically to the ink Tesseract found: a region grows taller when
        speckle or the edge of a bar joins its strokes, and blanking should take the text and its margin, not
        the surroundings. The region's horizontal extent is kept, so a glyph Tesseract left out of its words
        (punctuation, a faint character) is still inside the box.

        ``skip``: boxes that will be blanked whatever they hold (rule rectangles); a region wholly inside one of
        them is not read (it costs ~0.4 ms per character), unless a region that is read shares rows of pixels
        with it: a value printed across several regions of one line is found by joining their texts
        (:func:`~dicom_relay.deid.pixels.detect.condemned`), and the part outside the rectangle must still be
        blanked. A region only partly inside is read. The proof passes no ``skip``: it reads the whole cleaned
        frame.
        """
        gray = to_gray(frame)
        boxes = candidate_boxes(gray)
        if skip:
            boxes = _outside(boxes, skip)
        out = []
        for box in boxes:
            text, conf, ink = self.read_region(gray, box)
            if not text:
                continue
            if ink is not None and box[1] <= ink[1] < ink[3] <= box[3] + PAD:
                box = (box[0], max(box[1], ink[1]), box[2], min(box[3], ink[3]))
            out.append(Line(box, text, conf))
        return out


def _outside(boxes: list[Box], skip) -> list[Box]:
    """``boxes`` but those wholly inside a box of ``skip`` and sharing no row of pixels with one that is not."""
    inside = [any(s[0] <= b[0] and s[1] <= b[1] and b[2] <= s[2] and b[3] <= s[3] for s in skip) for b in boxes]
    kept = [b for b, ins in zip(boxes, inside) if not ins]
    return [b for b, ins in zip(boxes, inside)
            if not ins or any(min(b[3], k[3]) > max(b[1], k[1]) for k in kept)]


_local = threading.local()


def reader() -> TesseractReader:
    """This thread's reader (created on first use: loading the model costs 0.2-0.4 s)."""
    r = getattr(_local, "reader", None)
    if r is None or getattr(_local, "pid", None) != os.getpid():
        r = _local.reader = TesseractReader()
        _local.pid = os.getpid()
    return r
