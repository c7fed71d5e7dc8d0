"""Cleaning (action C) of text values: descriptors, structured content, graphic annotations, device names...

PS3.15 E.3.5: a cleaned descriptor keeps its meaning but holds no identifying information. The relay cannot
understand prose, so it removes what it can recognise: every identifying value of the same instance (names and
their components, IDs, accession numbers, institution, dates in the common written forms). What remains is
kept. This is why Clean Descriptors is off by default.

C means cleaned (:func:`cleaned`): what is kept must also be valid for its VR (PS3.5 Table 6.2-1), and an
attribute with a defined format must have it (TimezoneOffsetFromUTC: ``+HHMM`` / ``-HHMM``); a value that is
not is never kept as it is (the caller removes or replaces it).
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

from dicom_relay.deid.vr import SINGLE_VALUED, valid_text

_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")


def variants(value: str) -> set[str]:
    """The ways ``value`` may be written in prose: a DICOM date also as 2024-03-14, 03/14/2024, 14.03.2024."""
    out = {value}
    m = _DATE.match(value)
    if m:
        y, mo, d = m.groups()
        out |= {f"{y}-{mo}-{d}", f"{mo}/{d}/{y}", f"{d}/{mo}/{y}", f"{d}.{mo}.{y}", f"{y}/{mo}/{d}"}
    if "^" in value:
        out.add(value.replace("^", " ").strip())
    return out


class TextCleaner:
    """Removes the given identifying values (case-insensitive) from text."""

    def __init__(self, values: Iterable[str]):
        forms = sorted({v for value in values for v in variants(value) if v}, key=len, reverse=True)
        self._re = re.compile("|".join(re.escape(v) for v in forms), re.IGNORECASE) if forms else None

    def clean(self, text: str) -> str:
        if self._re is None or not text:
            return text
        # Collapse the gaps left behind so that "Dr. SMITH said" becomes "Dr. said", not "Dr.  said".
        return re.sub(r"  +", " ", self._re.sub("", text)).strip()


_UTC_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")


def utc_offset(value: str) -> bool:
    """Whether ``value`` is an offset from UTC as PS3.3 C.12.1.1.8 writes it: ``&ZZXX``, -12:00 to +14:00."""
    m = _UTC_OFFSET.match(value.strip())
    if not m:
        return False
    minutes = int(m[2]) * 60 + int(m[3])
    return int(m[3]) < 60 and (minutes <= 14 * 60 if m[1] == "+" else minutes <= 12 * 60)


#: Attributes that action C may keep only in their defined format (tag -> check of the whole value).
FORMATS: dict[int, Callable[[str], bool]] = {
    0x00080201: utc_offset,  # TimezoneOffsetFromUTC (C under Retain Longitudinal ... Modified Dates)
}


def cleaned(tag: int, vr: str, text: str, cleaner: TextCleaner | None) -> str | None:
    """Action C on the value ``text`` (values separated by backslashes) of element ``tag``, VR ``vr``: the
    value to keep, or None when nothing valid can be kept.

    Each value is cleaned of the instance's identifying values when there is a ``cleaner``; the result must
    then have the attribute's defined format (:data:`FORMATS`) or else be valid for the VR.
    """
    if cleaner is not None and text:
        parts = [text] if vr in SINGLE_VALUED else text.split("\\")
        text = "\\".join(cleaner.clean(p) for p in parts)
    check = FORMATS.get(tag)
    if check is not None:
        return text if check(text) else None
    return text if valid_text(vr, text) else None
