"""Finding what to blank in one frame: rule rectangles, and OCR lines judged by the pixel policy.

The instance's own identifying values are searched in what OCR reads, tolerantly (:class:`Needle`):

* names: each component of every person name the profile removes (family, given, middle; 3 letters or more),
  found as a whole word when short and anywhere in the line when long (``DOE^JANE`` printed ``DOE, JANE``,
  ``JANE DOE`` or read as ``DOEAJANE`` all match);
* IDs: PatientID, OtherPatientIDs, AccessionNumber, StudyID and the like, anywhere in the line;
* dates: every DA (and the date of every DT) the profile removes or shifts, in the forms devices print:
  ``19610704``, ``1961-07-04``, ``1961.07.04``, ``04/07/1961``, ``07/04/1961``, ``04-JUL-1961``, ``JUL 04 1961``,
  two-digit years (``04/07/61``), ...;
* other removed text values (institution, station, ...) of 4 characters or more, anywhere in the line.

Tolerant: both sides are upper-cased, letters and digits that OCR confuses are folded together (O/Q/D->0,
I/L/|->1, S->5, B->8, Z->2, G->6), punctuation and spaces are dropped, and values of 6 characters or more may
differ by one character (two from 10), so ``8421337?`` still finds ``84213377``.

Under policy ``clean`` a line is blanked when it matches a value or reads as a date (any date: the birth date
of a patient is not always in the header); under ``all-text`` every line of text is blanked. Each blanked box
is the line's box grown by a margin (a quarter of its height, at least 3 pixels), so that antialiased glyph
edges and OCR's tight boxes leave nothing readable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from dicom_relay.deid.pixels.ocr import Box, Line
from dicom_relay.deid.pixels.policy import ALL_TEXT

_FOLD = str.maketrans({"O": "0", "Q": "0", "D": "0", "I": "1", "L": "1", "|": "1", "!": "1", "S": "5", "B": "8",
                       "Z": "2", "G": "6"})
_NON_ALNUM = re.compile(r"[^0-9A-Z]+")
#: Separators between the words of a line; date separators (/ - .) are not among them.
_WORD_SPLIT = re.compile(r"[\s\^,;:=()\[\]'\"]+")
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTH_RE = "|".join(MONTHS)
#: Dates as printed, whatever their value (policy clean blanks them even when the header lacks them).
DATE_LIKE = re.compile(
    r"(?<!\d)(\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}|(19|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])"
    rf"|\d{{1,2}}[- .]?({_MONTH_RE})[A-Z]*[- .,]?\d{{2,4}}|({_MONTH_RE})[A-Z]*[- .]?\d{{1,2}},?[- .]?\d{{2,4}})(?!\d)"
)
MIN_NAME = 3
MIN_TEXT = 4
MARGIN_SHARE, MIN_MARGIN = 0.25, 3

PERSON_NAMES = ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
                "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy",
                "PhysiciansOfRecord", "RequestingPhysician", "ScheduledPerformingPhysicianName")
IDS = ("PatientID", "AccessionNumber", "StudyID", "IssuerOfPatientID", "OtherPatientIDs", "RequestedProcedureID",
       "ScheduledProcedureStepID", "PerformedProcedureStepID", "AdmissionID", "MedicalRecordLocator")
DATES = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate",
         "PerformedProcedureStepStartDate", "AcquisitionDateTime")


def fold(text: str) -> str:
    """Upper case, OCR-confusable characters folded together, everything but letters and digits dropped."""
    return _NON_ALNUM.sub("", text.upper().translate(_FOLD))


def date_forms(da: str) -> set[str]:
    """The folded printed forms of a DA value (YYYYMMDD); empty if it is not a date."""
    m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", da.strip()[:8])
    if not m:
        return set()
    y, mo, d = m.groups()
    if not (1 <= int(mo) <= 12 and 1 <= int(d) <= 31):
        return set()
    yy, mon = y[2:], MONTHS[int(mo) - 1]
    dn, mn = str(int(d)), str(int(mo))
    raw = {
        y + mo + d, d + mo + y, mo + d + y, dn + mn + y, mn + dn + y,  # numeric, 4-digit year (any separators)
        d + mo + yy, mo + d + yy, yy + mo + d,  # two-digit year
        d + mon + y, dn + mon + y, mon + d + y, mon + dn + y, d + mon + yy, y + mon + d,  # month names
    }
    return {fold(f) for f in raw}


@dataclass(frozen=True)
class Needle:
    """One identifying value to look for: the attribute it comes from (for PHI-free reasons) and its forms."""

    keyword: str
    forms: frozenset[str]
    word: bool = False  # short: must be a whole word of the line


def needles(ds, removed_values=()) -> list[Needle]:
    """The needles of an ORIGINAL dataset: its names, IDs and dates (top level), plus ``removed_values``
    (the values de-identification removes, :func:`dicom_relay.deid.verify.identifying_values`)."""
    out: list[Needle] = []
    seen: set[str] = set()

    def add(keyword: str, forms: set[str], word: bool = False) -> None:
        forms = {f for f in forms if f and f not in seen}
        if forms:
            seen.update(forms)
            out.append(Needle(keyword, frozenset(forms), word))

    for kw in PERSON_NAMES:
        for value in _values(ds, kw):
            for group in value.split("="):
                comps = [c for part in group.split("^") for c in part.split()]
                for comp in comps:
                    f = fold(comp)
                    if sum(c.isalpha() for c in comp) >= MIN_NAME:
                        add(kw, {f}, word=len(f) < 5)
                if len(comps) >= 2:
                    # The whole name, either order, however it is joined ("DOE^JANE" read as "DOEAJANE").
                    whole = {fold("".join(comps[:2])), fold(comps[1] + comps[0])}
                    add(kw, {f for f in whole if len(f) >= 6})
    for kw in IDS:
        for value in _values(ds, kw):
            f = fold(value)
            if len(f) >= MIN_TEXT or (len(f) >= 3 and any(c.isdigit() for c in f)):
                add(kw, {f}, word=len(f) < 6)
    for kw in DATES:
        for value in _values(ds, kw):
            add(kw, date_forms(value[:8]))
    for value in removed_values:
        value = str(value)
        if re.fullmatch(r"[0-9.]{20,}", value):
            continue  # a UID: never printed in an image, and it would slow every match
        if re.fullmatch(r"\d{8}([0-9.+-]*)?", value) and date_forms(value[:8]):
            add("a removed date", date_forms(value[:8]))
            continue
        f = fold(value)
        if len(f) >= MIN_TEXT:
            add("a removed attribute", {f}, word=len(f) < 6)
    return out


def _values(ds, keyword: str) -> list[str]:
    """The non-empty string values of a top-level attribute (each value of a multi-valued one); a sequence
    (OtherPatientIDsSequence) contributes through ``removed_values``."""
    value = ds.get(keyword)
    if value is None or value == "" or isinstance(value, (bytes, Sequence)):
        return []
    values = list(value) if isinstance(value, MultiValue) else [value]
    return [s for s in (str(v).strip() for v in values) if s]


def _within(hay: str, needle: str, k: int) -> bool:
    """True if ``needle`` occurs in ``hay`` with at most ``k`` substitutions, insertions or deletions."""
    if k == 0 or len(needle) <= k:
        return needle in hay
    if needle in hay:
        return True
    # Pigeonhole filter: with at most k edits, one of k + 1 pieces of the needle occurs unchanged.
    step = len(needle) // (k + 1)
    if not any(needle[i * step:(i + 1) * step] in hay for i in range(k + 1)):
        return False
    # Sellers' approximate substring matching: one row of the edit-distance table at a time.
    prev = list(range(len(needle) + 1))
    for ch in hay:
        cur = [0]
        for j, nc in enumerate(needle, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (nc != ch)))
        if cur[-1] <= k:
            return True
        prev = cur
    return False


def tolerance(form: str) -> int:
    return 0 if len(form) < 6 else 1 if len(form) < 10 else 2


def match(text: str, needles_: list[Needle]) -> Needle | None:
    """The first needle found in a line of OCR text, or None."""
    words = {fold(w) for w in _WORD_SPLIT.split(text)}
    hay = fold(text)
    if not hay:
        return None
    for n in needles_:
        for form in n.forms:
            if n.word:
                if form in words:
                    return n
            elif _within(hay, form, tolerance(form)):
                return n
    return None


def looks_like_date(text: str) -> bool:
    return DATE_LIKE.search(text.upper()) is not None


def grow(box: Box, width: int, height: int) -> Box:
    """``box`` with the blanking margin, clipped to the frame."""
    x0, y0, x1, y1 = box
    m = max(MIN_MARGIN, int(round((y1 - y0) * MARGIN_SHARE)))
    return (max(0, x0 - m), max(0, y0 - m), min(width, x1 + m), min(height, y1 + m))


@dataclass(frozen=True)
class Finding:
    """A box to blank and why: a rule id, or ``ocr:<what matched>`` (an attribute keyword, ``date``, ``text``)."""

    box: Box
    why: str


@lru_cache(maxsize=256)
def _cached_match(text: str, needles_: tuple[Needle, ...]) -> Needle | None:
    return match(text, list(needles_))


def judge(line: Line, needles_: tuple[Needle, ...], policy: str) -> str | None:
    """Why ``line`` must be blanked under ``policy``, or None to keep it."""
    if not line.text.strip():
        return None
    hit = _cached_match(line.text, needles_)
    if hit is not None:
        return hit.keyword
    if looks_like_date(line.text):
        return "date"
    # all-text blanks whatever reads as a letter or digit, however unsure Tesseract is: the proof then holds the
    # instance back only for text read with confidence, and a faint word is not left to chance.
    if policy == ALL_TEXT and any(c.isalnum() for c in line.text):
        return "text"
    return None


def rows(lines: list[Line]) -> list[list[Line]]:
    """The regions of a frame grouped into printed lines, left to right: regions that overlap vertically by half
    their height and lie within two heights of each other horizontally. The detector parts words separated by
    a wide gap, and a value ("ST BARNABY GENERAL HOSPITAL", "15 MAR 2024") may span several regions."""
    out: list[list[Line]] = []
    for line in sorted(lines, key=lambda l: (l.box[0], l.box[1])):
        x0, y0, x1, y1 = line.box
        for row in out:
            last = row[-1].box
            overlap = min(y1, last[3]) - max(y0, last[1])
            height = min(y1 - y0, last[3] - last[1])
            if overlap >= height / 2 and x0 - last[2] <= 2 * max(y1 - y0, last[3] - last[1]):
                row.append(line)
                break
        else:
            out.append([line])
    return out


def condemned(lines: list[Line], needles_: tuple[Needle, ...], policy: str) -> list[tuple[Line, str]]:
    """The regions the policy blanks, each with why: alone (:func:`judge`), or as the shortest run of
    neighbouring regions of one printed line whose joined text matches an identifying value or a date."""
    out: dict[int, tuple[Line, str]] = {}
    for row in rows(lines):
        for line in row:
            why = judge(line, needles_, policy)
            if why is not None:
                out[id(line)] = (line, why)
        for i in range(len(row)):
            for j in range(i + 1, len(row)):
                text = " ".join(line.text for line in row[i:j + 1])
                hit = _cached_match(text, needles_)
                why = hit.keyword if hit is not None else ("date" if looks_like_date(text) else None)
                if why is not None:
                    for line in row[i:j + 1]:
                        out.setdefault(id(line), (line, why))
                    break
    return list(out.values())


def find(frame: np.ndarray, lines: list[Line], rule_boxes: list[tuple[str, list[Box]]],
         needles_: tuple[Needle, ...], policy: str) -> list[Finding]:
    """Everything to blank in one frame: the rule boxes, and the OCR ``lines`` the policy condemns (grown)."""
    h, w = frame.shape[:2]
    out = [Finding(b, rid) for rid, boxes in rule_boxes for b in boxes]
    for line, why in condemned(lines, needles_, policy):
        out.append(Finding(grow(line.box, w, h), f"ocr:{why}"))
    return out
