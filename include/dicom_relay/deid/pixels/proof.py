"""The proof: the cleaned frames are read again, and what is still readable decides whether the instance goes.

Every frame is read again from the cleaned pixel values, as a viewer would show them, with the same detector
and engine as the cleaning (regions cleaning did not touch are answered from the reader's cache: identical
pixels, identical reading). Under policy ``clean`` the instance is held back if any line still matches one of
its identifying values or reads as a date; under ``all-text`` if any line is still text at all. The reason
names the attribute and the frame, never the value.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicom_relay.deid.pixels.detect import Needle, condemned
from dicom_relay.deid.pixels.policy import ALL_TEXT, CLEAN


@dataclass(frozen=True)
class Proof:
    """The outcome: ``reason`` is None when nothing forbidden is readable; ``lines_left`` counts the lines of
    text still readable (and allowed: measurements, device labels under ``clean``)."""

    reason: str | None
    frames_read: int
    lines_left: int


def prove(frames, needles: tuple[Needle, ...], policy: str, reader) -> Proof:
    """Read every frame of ``frames`` (a :class:`~dicom_relay.deid.pixels.codec.Frames`) again."""
    left = 0
    for i in range(frames.count):
        lines = reader.read(frames.display(i))
        where = f"frame {i + 1} of {frames.count}"
        # The same judgement as the cleaning (regions alone and runs of regions on one printed line), except
        # that under all-text only text read with confidence holds the instance back.
        for line, why in condemned(lines, needles, CLEAN):
            what = "a date is" if why == "date" else f"text matching {why} is"
            return Proof(f"after cleaning, {what} still readable in {where}", i + 1, left)
        for line in lines:
            if line.is_text:
                if policy == ALL_TEXT:
                    return Proof(f"after cleaning, text is still readable in {where} (policy all-text)", i + 1, left)
                left += 1
    return Proof(None, frames.count, left)
