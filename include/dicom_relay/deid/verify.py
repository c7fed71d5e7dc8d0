"""Verification before sending: which original values must not survive, and are any of them still there?

``identifying_values`` collects, from an ORIGINAL instance, the values that de-identification removes or
replaces. The rule (documented in docs/DEIDENTIFICATION.md):

* values of attributes whose action under the options removes or replaces them (X, Z, D, U and compounds,
  PatientID/PatientName/AccessionNumber which get pseudonyms), of private attributes that are removed, and
  of DA/DT values that the Modified Dates option shifts (only when the jitter is not 0);
* only text-like VRs (PN, LO, SH, ST, LT, UT, UC, AE, UI, DA, DT, AS): numbers (DS, IS, binary) and coded
  strings (CS) and times (TM) are generic and would match unrelated values;
* a person name also contributes each of its components;
* skipped: values shorter than 4 characters, pure digit strings shorter than 6 digits (counts, instance
  numbers), a few generic words (NONE, UNKNOWN, ...), well-known UIDs, and any value that an attribute which is
  kept unchanged also holds (it legitimately stays), and original dates equal to a shifted date of the
  instance (intervals are preserved, so a shifted date can equal another original date).

``find_leaks`` searches the de-identified files for those values, in the raw bytes and in every element at
every depth (file meta included), and reports where, never what.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from dicom_relay.deid.dates import shift_value
from dicom_relay.deid.options import DeidOptions
from dicom_relay.deid.table import resolve_compound, rules_for, sop_family
from dicom_relay.deid.uids import WELL_KNOWN_UIDS

TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE", "UI", "DA", "DT", "AS"})
GENERIC = frozenset({"NONE", "UNKNOWN", "ANONYMOUS", "ANONYMIZED", "REMOVED", "OTHER", "NULL", "TEST"})
PSEUDONYMISED = {0x00100010, 0x00100020, 0x00080050}  # PatientName, PatientID, AccessionNumber
MIN_LEN = 4
#: Values the relay itself writes into every output; an original value equal to one is not a leak.
OWN_CONSTANTS = frozenset({PYDICOM_IMPLEMENTATION_UID, "DICOM_RELAY_01", "ANONYMIZED", "dicom-relay"})
_UIDLIKE = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def _pattern(value: str) -> re.Pattern[str]:
    """A search pattern for ``value``; a UID must match whole (1.2.3 is not found inside 1.2.34)."""
    if _UIDLIKE.match(value):
        return re.compile(r"(?<![0-9.])" + re.escape(value) + r"(?![0-9])")
    return re.compile(re.escape(value), re.IGNORECASE)
MIN_DIGITS = 6


def _parts(elem) -> list[str]:
    v = elem.value
    if v is None or v == "":
        return []
    if isinstance(v, (bytes, bytearray)):
        return []
    vals = list(v) if isinstance(v, pydicom.multival.MultiValue) else [v]
    out = []
    for x in vals:
        s = str(x).strip().rstrip("\x00").strip()
        if s:
            out.append(s)
            if elem.VR == "PN":
                out += [c.strip() for g in s.split("=") for c in g.split("^") if c.strip()]
    return out


def _keepable(s: str) -> bool:
    if len(s) < MIN_LEN or s.upper() in GENERIC or s in WELL_KNOWN_UIDS:
        return False
    if s.isdigit() and len(s) < MIN_DIGITS:
        return False
    return True


def identifying_values(
    ds: Dataset, options: DeidOptions = DeidOptions(), identity=None, *, exclude_kept: bool = True
) -> set[str]:
    """The values of an original instance that must not appear in its de-identified output (rule above).

    ``exclude_kept=False`` is for the text cleaner: there a value that also occurs in kept text must still be
    removed from descriptors.
    """
    rules = rules_for(options)
    family = sop_family(str(getattr(ds, "SOPClassUID", "")))
    jitter = getattr(identity, "jitter_days", None)
    gone: set[str] = set()
    kept: set[str] = set()
    shifted: set[str] = set()

    def walk(d: Dataset) -> None:
        for elem in d:
            tag = int(elem.tag)
            vr = elem.VR
            if vr == "SQ":
                for item in elem.value or ():
                    walk(item)
                continue
            if vr not in TEXT_VRS:
                continue
            group = tag >> 16
            if group & 1:
                # Private attributes are removed (a safe-listed one holds parameters, not text identities).
                gone.update(_parts(elem))
                continue
            rule = rules.exact.get(tag)
            if tag in PSEUDONYMISED:
                removed = True
            elif rule is not None:
                act = resolve_compound(rule[0], rule[2], family)
                if act == "K":
                    removed = False
                elif act == "C":
                    if vr not in ("DA", "DT"):
                        continue  # cleaned text keeps whatever is not identifying: neither gone nor kept
                    # Shifted dates: gone from the output (unless the jitter is 0 or unknown); always removed
                    # from cleaned text, where a date cannot be shifted reliably.
                    removed = not exclude_kept or (options.dates == "modified" and jitter not in (None, 0))
                elif act == "U" and options.retain_uids:
                    removed = False
                else:
                    removed = True
            elif vr in ("DA", "DT"):
                removed = options.dates == "remove" or (options.dates == "modified" and jitter not in (None, 0))
            else:
                removed = False
            if vr in ("DA", "DT") and jitter:
                for p in _parts(elem):
                    s = shift_value(vr, p, jitter)
                    if s:
                        shifted.add(s)
            (gone if removed else kept).update(_parts(elem))

    walk(ds)
    # A value contained in a kept value (e.g. a removed "GE" name component inside the kept Manufacturer "GE
    # MEDICAL SYSTEMS") legitimately stays; so do the relay's own constants.
    if not exclude_kept:
        return {v for v in gone if _keepable(v)}
    kept_text = "\n".join(kept | OWN_CONSTANTS).upper()
    return {v for v in gone - kept - shifted if _keepable(v) and v.upper() not in kept_text}


@dataclass(frozen=True)
class Leak:
    """An original identifying value found in a de-identified file. Holds no PHI: the file name is the new
    SOP Instance UID, the location a keyword/tag, and the value only its position in the searched list."""

    file: str
    location: str
    value_index: int

    @property
    def message(self) -> str:
        return f"{self.file}: original identifying value #{self.value_index} found in {self.location}"

    def __str__(self) -> str:
        return self.message


def _walk_strings(ds: Dataset, path: str = ""):
    for elem in ds:
        name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        where = f"{path}{name}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or ()):
                yield from _walk_strings(item, f"{where}[{i}].")
            continue
        v = elem.value
        if isinstance(v, (bytes, bytearray)):
            if elem.tag != 0x7FE00010:  # pixel data is covered by the byte scan
                yield where, bytes(v).decode("latin-1")
        elif v is not None:
            yield where, str(v)


def find_leaks(original_values: Iterable[str], deid_paths: Iterable[Path]) -> list[Leak]:
    """Every place where one of ``original_values`` occurs in one of ``deid_paths`` (bytes and elements)."""
    values = [v.strip() for v in original_values if v and v.strip()]
    patterns = [_pattern(v) for v in values]
    # Bytes: a plain substring test first (fast, C speed), the exact pattern only to confirm a hit.
    raw = [{v.encode("utf-8"), v.encode("latin-1", "ignore")} - {b""} for v in values]
    leaks: list[Leak] = []
    for path in deid_paths:
        path = Path(path)
        data = path.read_bytes()
        found_in_bytes = set()
        for i, encs in enumerate(raw):
            if any(e in data for e in encs):
                # A UID must match whole; anything else is a hit as it is.
                if not _UIDLIKE.match(values[i]) or patterns[i].search(data.decode("latin-1")):
                    found_in_bytes.add(i)
        found_in_elements: set[int] = set()
        try:
            ds = pydicom.dcmread(path, force=True)
            sources = [("file meta.", ds.file_meta)] if getattr(ds, "file_meta", None) else []
            sources.append(("", ds))
            for prefix, d in sources:
                for where, text in _walk_strings(d, prefix):
                    for i, pat in enumerate(patterns):
                        if pat.search(text):
                            leaks.append(Leak(path.name, where, i))
                            found_in_elements.add(i)
        except Exception as exc:  # an unparseable output is itself a failure of verification
            leaks.append(Leak(path.name, f"unparseable file ({type(exc).__name__})", -1))
        for i in sorted(found_in_bytes - found_in_elements):
            leaks.append(Leak(path.name, "file bytes (preamble, pixel data or element framing)", i))
    return leaks
