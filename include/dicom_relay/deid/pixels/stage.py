"""The pixel-cleaning stage for one instance: decode, find, blank, prove, write back, and say what was done.

:func:`clean_instance` is called by the engine (:mod:`dicom_relay.deid.engine`) for every instance whose pixels
the policy scans (:func:`dicom_relay.deid.pixels.policy.scan_reason`), on the ORIGINAL dataset with its
pixel data, before the header is de-identified (rules and needles need the original header). It changes only
the Pixel Data and the attributes that must follow it (transfer syntax, photometric interpretation, lossy
compression history: see :mod:`~dicom_relay.deid.pixels.codec`), and only when something was blanked and the
proof passed. The header marks (BurnedInAnnotation NO, Clean Pixel Data Option code) are the engine's.

The returned :class:`PixelRecord` goes into the batch's status (relay_instance.pixels) and the CLI report.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from dicom_relay.deid.pixels import detect
from dicom_relay.deid.pixels.codec import Frames, PixelCodecError
from dicom_relay.deid.pixels.ocr import OcrError, reader as thread_reader
from dicom_relay.deid.pixels.policy import check
from dicom_relay.deid.pixels.proof import prove
from dicom_relay.deid.pixels.rules import RuleSet

CLEAN_VERDICT, HELD_VERDICT = "clean", "held"


@dataclass
class PixelRecord:
    """What the stage did to one instance (JSON-able through :meth:`to_dict`; no PHI).

    ``blanked`` groups frames that got the same boxes: ``{"frames": [[first, last], ...], "boxes": [[x0, y0,
    x1, y1], ...], "why": [rule id or "ocr:<attribute keyword | date | text>", ...]}`` (frames counted from 1,
    boxes half-open in pixels). ``verdict`` is ``clean`` (proof passed: deliverable) or ``held`` (``reason``
    says why). ``transfer_syntax`` is the one written, None when the pixel data was left as it was.
    """

    policy: str
    scanned_because: str
    verdict: str = CLEAN_VERDICT
    reason: str | None = None
    frames: int = 0
    blanked: list = field(default_factory=list)
    rules: list = field(default_factory=list)
    pixels_changed: int = 0
    lines_left: int = 0
    engine: dict = field(default_factory=dict)
    transfer_syntax: str | None = None
    seconds: float = 0.0

    @property
    def held(self) -> bool:
        return self.verdict == HELD_VERDICT

    def to_dict(self) -> dict:
        return asdict(self)


def _group(per_frame: list[tuple[tuple, tuple]]) -> list[dict]:
    """Frames with identical (boxes, why) as ranges, in first-frame order."""
    groups: dict[tuple, list[list[int]]] = {}
    for i, key in enumerate(per_frame, 1):
        if not key[0]:
            continue
        ranges = groups.setdefault(key, [])
        if ranges and ranges[-1][1] == i - 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    return [{"frames": r, "boxes": [list(b) for b in k[0]], "why": list(k[1])} for k, r in groups.items()]


def clean_instance(ds, *, policy: str, needles: tuple, rules: RuleSet, scanned_because: str,
                   reader=None, decode=Frames.decode) -> PixelRecord:
    """Find and blank burned-in text in every frame of ``ds`` (in place), then prove it is gone.

    ``needles``: :func:`dicom_relay.deid.pixels.detect.needles` of the original ``ds``. ``reader``: a
    :class:`~dicom_relay.deid.pixels.ocr.TesseractReader` (default: this thread's). ``decode`` builds the
    frames (tests of uncompressed data may pass their own). Errors of the codec or the OCR engine give a
    ``held`` record, never an exception: the instance is then held back with the reason.
    """
    started = time.monotonic()
    record = PixelRecord(policy=check(policy), scanned_because=scanned_because)
    try:
        reader = reader or thread_reader()
        record.engine = reader.describe()
        frames = decode(ds)
    except (PixelCodecError, OcrError) as exc:
        return _held(record, f"pixels could not be read for cleaning: {exc}", started)
    record.frames = frames.count
    rule_boxes = rules.boxes_for(ds)
    # Text wholly inside a rule rectangle is blanked unread (the proof reads the cleaned frame all the same).
    blanked_anyway = [b for _, boxes in rule_boxes for b in boxes]
    per_frame = []
    rules_used: set[str] = set()
    for i in range(frames.count):
        picture = frames.display(i)
        findings = detect.find(picture, reader.read(picture, skip=blanked_anyway), rule_boxes, needles, record.policy)
        boxes = tuple(f.box for f in findings)
        if boxes:
            record.pixels_changed += frames.blank(i, boxes)
        rules_used.update(f.why for f in findings if not f.why.startswith("ocr:"))
        per_frame.append((boxes, tuple(f.why for f in findings)))
    record.blanked = _group(per_frame)
    record.rules = sorted(rules_used)
    proof = prove(frames, needles, record.policy, reader)
    record.lines_left = proof.lines_left
    if proof.reason is not None:
        return _held(record, proof.reason, started)
    if record.pixels_changed:
        try:
            record.transfer_syntax = frames.encode_into(ds)
        except PixelCodecError as exc:
            return _held(record, f"cleaned pixels could not be written: {exc}", started)
    record.seconds = round(time.monotonic() - started, 4)
    return record


def _held(record: PixelRecord, reason: str, started: float) -> PixelRecord:
    record.verdict, record.reason = HELD_VERDICT, reason
    record.seconds = round(time.monotonic() - started, 4)
    return record
