"""Cleaning free text (action C on descriptors, structured content and graphic annotations).

PS3.15 E.3.5: a cleaned descriptor keeps its meaning but holds no identifying information. The relay cannot
understand prose, so it removes what it can recognise: every identifying value of the same instance (names and
their components, IDs, accession numbers, institution, dates in the common written forms). What remains is
kept. This is why Clean Descriptors is off by default.
"""

from __future__ import annotations

import re
from typing import Iterable

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
