"""Verification before sending: which original values must not survive, and are any of them still there?

:func:`collect` / :class:`LeakCheck` take, from an ORIGINAL instance, the values that de-identification removes
or replaces. The rule (documented in docs/DEIDENTIFICATION.md, "Verification"):

* values of attributes whose action under the options removes or replaces them (X, Z, D, U and compounds,
  PatientID/PatientName/AccessionNumber which get pseudonyms), of private attributes that are removed, and
  of DA/DT values that the Modified Dates option shifts (only when the jitter is not 0);
* only string VRs (PN, LO, SH, ST, LT, UT, UC, AE, UI, DA, DT, AS, CS): numbers (DS, IS, FL, FD, binary) are
  generic and would match unrelated values; times (TM) are kept by every date option but Remove;
* a person name also contributes each of its components;
* skipped: values shorter than 4 characters, pure digit strings shorter than 6 digits (counts, instance
  numbers), a few generic words (NONE, UNKNOWN, ...), well-known UIDs, and any value that an attribute of the
  same instance which is kept also holds (it legitimately stays).

Where a value counts as a leak -- only in a form in which it can identify (per kind of value and VR of the
element it is found in):

* never in a numeric or binary element (DS, IS, FL, FD, SS, US, SL, UL, AT, OB, OW, ...): a number there is a
  measurement, not an identifier (rtdose's ImagePositionPatient equals no one's name);
* never in the output of an instance that keeps the same value in one of its kept attributes;
* names, IDs, free text and UIDs ("global"): in any text element (PN, LO, SH, ST, LT, UT, UC, AE, UR, and
  elements of unknown VR) of any output; inside a UI element only as whole components; in a coded string (CS),
  age (AS), time (TM) or date element only at their own place (same attribute, same item path) in the output
  of their own instance -- "PERFUSION" in ImageType is a defined term, not the removed SeriesDescription;
* coded strings and ages ("local"): only at their own place (a removed CS value is a code, never an identity
  elsewhere);
* dates: in any text element of any output, and in a DA/DT element only at their own place in the output of
  their own instance -- Modified Dates keeps intervals, so a shifted date may equal another original date.

An output registered without its original (the flat ``find_leaks``, or an output :class:`LeakCheck` does not
know) gets the strict rule: every date in every DA/DT element, and "own place" means the place the value had in
any original.

:func:`find_leaks` / :meth:`LeakCheck.find_leaks` search the de-identified files (what is scanned and why: the
notes above ``_Needles``) and report where, never what.
"""

from __future__ import annotations

import os
import re
import struct
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, NamedTuple

from dicom_relay.deid import codes, dictionary
from dicom_relay.deid.dates import shift_value
from dicom_relay.deid.options import DeidOptions
from dicom_relay.deid.table import resolve_compound, rules_for, safe_private, sop_family
from dicom_relay.deid.text import cleaned as text_cleaned
from dicom_relay.deid.uids import WELL_KNOWN_UIDS

if TYPE_CHECKING:  # pydicom is imported where a file needs it (dictionary.py says why): the raw reader serves
    # the common case
    from pydicom.dataset import Dataset

TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE", "UI", "DA", "DT", "AS"})
#: The VRs whose values are collected from an original: text-like VRs, and coded strings (local, see above).
COLLECTED_VRS = TEXT_VRS | {"CS"}
#: Generic values (codes, ages): identifying only at their own place.
LOCAL_VRS = frozenset({"CS", "AS"})
#: Elements in which a name, ID, free text or UID can identify (UN: a value of unknown VR may be text).
TEXT_TARGETS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE", "UR", "UN"})
#: Elements where a value counts only at its own place.
PLACE_TARGETS = frozenset({"CS", "AS", "TM", "DA", "DT"})
GENERIC = frozenset({"NONE", "UNKNOWN", "ANONYMOUS", "ANONYMIZED", "REMOVED", "OTHER", "NULL", "TEST", "PATIENT", "ANON"})
PSEUDONYMISED = {0x00100010, 0x00100020, 0x00080050}  # PatientName, PatientID, AccessionNumber
MIN_LEN = 4
MIN_DIGITS = 6
#: Values the relay itself writes into every output; an original value equal to one is not a leak.
OWN_CONSTANTS = frozenset({dictionary.implementation_uid(), "DICOM_RELAY_01", "ANONYMIZED", "dicom-relay"})
_UIDLIKE = re.compile(r"^[0-9]+(\.[0-9]+)+$")
#: Kinds of collected value, strongest first (a value collected with two kinds keeps the stronger). IDENTITY:
#: the whole Patient Name (with its ^ or =), Patient ID and Accession Number; only a kept value EQUAL to one makes
#: it legitimate (a kept "Ward of <Patient ID>" does not), where any kept value CONTAINING another value does.
IDENTITY, GLOBAL, DATE, LOCAL = 0, 1, 2, 3


def _daemonic() -> bool:
    """Whether this is a daemonic process, which cannot start a pool (multiprocessing: imported only here, where a
    pool is wanted; it brings socket, pickle and selectors, 0.01 CPU-s at every start)."""
    import multiprocessing

    return multiprocessing.current_process().daemon


def _kind(vr: str) -> int:
    return DATE if vr in ("DA", "DT") else LOCAL if vr in LOCAL_VRS else GLOBAL


def _parts(elem) -> list[str]:
    v = elem.value
    if v is None or v == "":
        return []
    if isinstance(v, (bytes, bytearray)):
        return []
    from pydicom.multival import MultiValue

    vals = list(v) if isinstance(v, MultiValue) else [v]
    out = []
    for x in vals:
        s = str(x).strip().rstrip("\x00").strip()
        if s:
            out.append(s)
            if elem.VR == "PN":
                out += [c.strip() for g in s.split("=") for c in g.split("^") if c.strip()]
    return out


@lru_cache(maxsize=1 << 16)
def _keepable(s: str) -> bool:
    if len(s) < MIN_LEN or s.upper() in GENERIC or s in WELL_KNOWN_UIDS:
        return False
    if not any(c.isalnum() for c in s):
        return False  # separators only (an empty name "^^^^"): identifies no one
    if s.isdigit() and len(s) < MIN_DIGITS:
        return False
    return True


class Collected(NamedTuple):
    """What :func:`collect` finds in one original instance (values unfiltered, see :meth:`LeakCheck.add`)."""

    gone: dict[str, int]  # values that must change -> kind (IDENTITY, GLOBAL, DATE, LOCAL)
    kept: frozenset[str]  # values of the attributes that are kept unchanged
    shifted: frozenset[str]  # the original dates as Modified Dates shifts them
    places: dict[tuple, frozenset[str]]  # path (tag, item index, tag, ...) -> the gone values there
    cleaned: frozenset[str] = frozenset()  # values of text attributes that are cleaned (action C), before cleaning


KEEP, REMOVE, CLEAN = 0, 1, 2


@lru_cache(maxsize=1 << 14)
def _decision(options: DeidOptions, family: str, enclosing: tuple[int, ...], tag: int, vr: str, dates_shift: bool,
              exclude_kept: bool) -> int:
    """What de-identification does with the value of one element, as far as verification cares: KEEP, REMOVE
    (or replace), or CLEAN (text kept minus what identifies). ``enclosing``: the tags of the sequences around the
    element (compound actions follow the attribute's Type at that place of the IOD, as in the engine);
    ``dates_shift``: Modified Dates with a known, non-zero jitter. Cached: a study repeats the same few hundred
    places."""
    if (tag >> 16) & 1:
        return REMOVE  # private attributes are removed (a safe-listed one holds parameters, not identities)
    if tag in PSEUDONYMISED:
        return REMOVE
    rule = rules_for(options).exact.get(tag)
    if rule is not None:
        act = resolve_compound(rule[0], rule[2], family, enclosing)
        if act == "K":
            return KEEP
        if act == "C":
            if vr not in ("DA", "DT"):
                return CLEAN  # keeps whatever is not identifying for this instance
            # Shifted dates: gone from the output (unless the jitter is 0 or unknown); always removed from
            # cleaned text, where a date cannot be shifted reliably.
            return REMOVE if not exclude_kept or dates_shift else KEEP
        if act == "U" and options.retain_uids:
            return KEEP
        return REMOVE
    if 0x5000 <= tag >> 16 <= 0x501E or 0x6000 <= tag >> 16 <= 0x601E:
        return REMOVE  # curves and overlays (Overlay Comments...): the engine removes the groups whole
    if vr in ("DA", "DT"):
        return REMOVE if options.dates == "remove" or dates_shift else KEEP
    return KEEP


_shift = lru_cache(maxsize=1 << 16)(shift_value)


def _cleanable(tag: int, vr: str, value: str) -> bool:
    """Whether action C can keep ``value`` at all (valid for its VR or format before any cleaning)."""
    return text_cleaned(tag, vr, value, None) is not None


def _classify(leaves, options: DeidOptions, family: str, jitter, exclude_kept: bool) -> Collected:
    """Sort the values of an original instance (see :class:`Collected`).

    ``leaves`` yields ``(path, tag, vr, parts)`` for every string element at every depth; ``path`` is the
    tuple (tag, item index, tag, ...) of the element.
    """
    gone: dict[str, int] = {}
    kept: set[str] = set()
    shifted: set[str] = set()
    cleaned: set[str] = set()
    places: dict[tuple, set[str]] = {}
    dates_shift = options.dates == "modified" and jitter not in (None, 0)
    safe = safe_private() if rules_for(options).private_action == "C" else None
    creators: dict[tuple, str] = {}
    for path, tag, vr, parts in leaves:
        if not parts:
            continue
        if safe is not None and (tag >> 16) & 1:
            # Retain Safe Private keeps the safe elements of Table E.3.10-1 and the Private Creators of their
            # blocks (a creator names a vendor's block, not a person).
            if 0x10 <= tag & 0xFFFF <= 0xFF:
                creators[(path[:-1], tag >> 16, tag & 0xFF)] = parts[0].upper()
                kept.update(parts)
                continue
            if (creators.get((path[:-1], tag >> 16, (tag & 0xFFFF) >> 8), ""), tag >> 16, tag & 0xFF) in safe:
                kept.update(parts)
                continue
        decision = _decision(options, family, path[:-1:2], tag, vr, dates_shift, exclude_kept)
        if decision == CLEAN:
            if all(_cleanable(tag, vr, p) for p in parts):
                cleaned.update(parts)  # keeps whatever is not identifying for this instance
                continue
            decision = REMOVE  # not valid for its VR or format: the engine does not keep it (text.cleaned)
        if jitter and vr in ("DA", "DT"):
            for p in parts:
                new = _shift(vr, p, jitter)
                if new:
                    shifted.add(new)
        if decision == KEEP:
            kept.update(parts)
            continue
        identity = tag in PSEUDONYMISED
        base = _kind(vr)
        for p in parts:
            kind = IDENTITY if identity and (vr != "PN" or "^" in p or "=" in p) else base
            if gone.get(p, LOCAL + 1) > kind:
                gone[p] = kind
        places.setdefault(path, set()).update(parts)
    return Collected(gone, frozenset(kept), frozenset(shifted), {k: frozenset(v) for k, v in places.items()},
                     frozenset(cleaned))


def _pydicom_leaves(ds: Dataset, prefix: tuple = ()):
    for elem in ds:
        tag = int(elem.tag)
        vr = elem.VR
        if vr == "SQ":
            for i, item in enumerate(elem.value or ()):
                yield from _pydicom_leaves(item, prefix + (tag, i))
            continue
        if vr in COLLECTED_VRS:
            yield prefix + (tag,), tag, vr, _parts(elem)


_SINGLE_VALUED = frozenset({"ST", "LT", "UT"})


@lru_cache(maxsize=1 << 16)
def _raw_parts(value: bytes, vr: str) -> tuple[str, ...]:
    """``_parts`` of a raw ASCII value, split and stripped the way pydicom decodes it (cached: the values of a
    study repeat from instance to instance)."""
    if not value.isascii() or b"\x1b" in value:
        raise _rawpath().Fallback  # a character set is involved: let pydicom decode it
    text = value.decode("ascii")
    out = []
    for x in [text] if vr in _SINGLE_VALUED else text.split("\\"):
        s = x.rstrip("\x00 ").strip().rstrip("\x00").strip()
        if s:
            out.append(s)
            if vr == "PN":
                out += [c.strip() for g in s.split("=") for c in g.split("^") if c.strip()]
    return tuple(out)


def _raw_leaves(buf: bytes, elems, prefix: tuple = ()):
    for el in elems:
        if el.items is not None:
            for i, (_, item) in enumerate(el.items):
                yield from _raw_leaves(buf, item, prefix + (el.tag, i))
            continue
        if el.vr in COLLECTED_VRS:
            yield prefix + (el.tag,), el.tag, el.vr, _raw_parts(buf[el.vstart : el.vend], el.vr)


def _rawpath():
    from dicom_relay.deid import rawpath

    return rawpath


def _kept_text(kept: Iterable[str], own_text: str = "") -> str:
    """The kept values as one upper-cased text: ``v.upper() in`` it says whether a kept value contains ``v``."""
    return "\n".join(set(kept) | OWN_CONSTANTS | {own_text}).upper()


@lru_cache(maxsize=32)
def _own_text(options: DeidOptions) -> str:
    """The text the relay itself writes under ``options`` (the marking attributes): a value it contains (a
    patient named "Option") is in every output whatever the original held."""
    words = codes.method_text(options) + [codes.temporal_marker(options)]
    for code in codes.applied_codes(options):
        words += [code.value, code.scheme_designator, code.meaning]
    return "\n".join(words)


class _Kept:
    """The kept values of an instance (and the relay's own text), ready for "does a kept value hold ``v``?".
    Instances of a series mostly keep the same values: :class:`LeakCheck` shares one per distinct set."""

    __slots__ = ("text", "exact", "memo")

    def __init__(self, kept: Iterable[str], own_text: str = ""):
        self.text = _kept_text(kept, own_text)
        self.exact = frozenset(v.upper() for v in kept)
        self.memo: dict[tuple[str, bool], bool] = {}

    def holds(self, value: str, kind: int) -> bool:
        """Equals ``value`` (an identity value: the whole name, Patient ID, Accession Number), or contains it."""
        key = (value, kind == IDENTITY)
        held = self.memo.get(key)
        if held is None:
            up = value.upper()
            held = self.memo[key] = up in self.exact if key[1] else up in self.text
        return held


def _filtered(collected: Collected, kinds: tuple[int, ...] = (IDENTITY, GLOBAL, DATE, LOCAL), own_text: str = "",
              kept: _Kept | None = None) -> dict[str, int]:
    """The gone values worth searching for: long enough, not generic, not held by a kept value (a removed "GE"
    name component inside the kept Manufacturer "GE MEDICAL SYSTEMS" legitimately stays), not in the relay's
    own text, and (except dates) not a shifted date. ``kept``: ``collected.kept`` prepared already."""
    kept = kept or _Kept(collected.kept, own_text)
    return {
        v: k for v, k in collected.gone.items()
        if k in kinds and _keepable(v) and not kept.holds(v, k) and (k == DATE or v not in collected.shifted)
    }


def identifying_values(
    ds: Dataset, options: DeidOptions = DeidOptions(), identity=None, *, exclude_kept: bool = True
) -> set[str]:
    """The names, IDs, UIDs, free text and dates of an original instance that must not appear in its
    de-identified output (rule above; coded strings and ages, which count only at their own place, are not
    included).

    ``exclude_kept=False`` is for the text cleaner: there a value that also occurs in kept text must still be
    removed from descriptors.

    The flat set cannot say where a value came from: with it :func:`find_leaks` applies the strict rule.
    :class:`LeakCheck` keeps values per instance and place.
    """
    family = sop_family(str(getattr(ds, "SOPClassUID", "")))
    jitter = getattr(identity, "jitter_days", None)
    collected = _classify(_pydicom_leaves(ds), options, family, jitter, exclude_kept)
    if not exclude_kept:
        return {v for v, k in collected.gone.items() if k != LOCAL and _keepable(v)}
    return {v for v in _filtered(collected, (IDENTITY, GLOBAL, DATE), _own_text(options)) if v not in collected.shifted}


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


# --- searching the outputs ---------------------------------------------------------------------------------
#
# What is scanned, and why (docs/DEIDENTIFICATION.md, "Verification"):
# * the whole header: preamble, file meta and every element before the pixel data at every depth, in one
#   case-insensitive pass over its bytes (values bucketed by their first bytes, UIDs looked up as whole tokens);
#   only when something is found is the header split into elements to say where, and to apply the rules that
#   depend on the place (dates, UIDs);
# * encapsulated pixel data except RLE: compressed streams can carry text (JPEG COM/APP segments, JPEG 2000
#   comments), so it is searched for values of at least PIXEL_MIN_LEN bytes, exact case (shorter values would
#   match by chance in compressed bytes);
# * native pixel data is not searched: the relay copies it byte for byte from the original and never writes
#   into it, it holds sample values, not text (text in an image is burned in, which quarantine handles), and
#   short values would match sample bytes by chance (an 8-bit gradient contains "123456").
PIXEL_MIN_LEN = 6
_NOT_SEARCHED_PIXELS = frozenset({"1.2.840.10008.1.2.5"})  # RLE: literal runs are raw sample bytes
FRAMING = "file bytes (preamble, pixel data or element framing)"


class _Needles:
    """The values to search for, prepared once for many files."""

    def __init__(self, values: list[str], kinds: list[int]):
        self.values, self.kinds = values, kinds
        self.uid: dict[bytes, int] = {}
        self.encs: list[list[bytes]] = []
        self.buckets: dict[bytes, list[tuple[bytes, int]]] = {}
        self.exact: dict[bytes, list[tuple[bytes, int]]] = {}
        for i, v in enumerate(values):
            encs = sorted({v.encode("utf-8"), v.encode("latin-1", "ignore")} - {b""})
            if _UIDLIKE.match(v):
                self.uid[v.encode("ascii")] = i
                self.encs.append([v.encode("ascii")])
                continue
            self.encs.append([e.lower() for e in encs])
            for e in encs:
                self.buckets.setdefault(e.lower()[:8], []).append((e.lower(), i))
                if len(e) >= PIXEL_MIN_LEN:
                    self.exact.setdefault(e[:8], []).append((e, i))
        # Values with non-ASCII characters are also compared as decoded text, element by element, in headers that
        # are not pure ASCII: their bytes depend on the output's character set (ISO 2022 escapes, GB18030, ...).
        self.non_ascii = [i for i, v in enumerate(values) if not v.isascii()]
        shortest = min((len(u) for u in self.uid), default=0)
        self.uid_lengths = {len(u) for u in self.uid}
        self._tokens = re.compile(rb"(?<![0-9.])[0-9][0-9.]{%d,}" % max(shortest - 1, 0)).findall

    def _uid_hits(self, data: bytes, out: set[int]) -> None:
        if not self.uid:
            return
        uid, lengths = self.uid, self.uid_lengths
        for t in self._tokens(data):
            i = uid.get(t)
            if i is not None:
                out.add(i)
            p = t.find(b".")
            while p != -1:  # a UID followed by "." is found too (1.2.3 in 1.2.3.4), not inside 1.2.34
                if p in lengths:
                    i = uid.get(t[:p])
                    if i is not None:
                        out.add(i)
                p = t.find(b".", p + 1)

    @staticmethod
    def _bucket_hits(buckets: dict, data: bytes) -> set[int]:
        """Indexes of the values in ``buckets`` (prefix -> [(value bytes, index)]) that occur in ``data``; the
        prefix test first, so that most values cost one ``in`` per bucket, not one per value."""
        return {i for key, members in buckets.items() if key in data for e, i in members if e in data}

    def header_hits(self, data: bytes) -> set[int]:
        hits = self._bucket_hits(self.buckets, data.lower())
        self._uid_hits(data, hits)
        return hits

    def pixel_hits(self, data: bytes) -> set[int]:
        uids: set[int] = set()
        self._uid_hits(data, uids)
        return self._bucket_hits(self.exact, data) | {i for i in uids if len(self.values[i]) >= PIXEL_MIN_LEN}

    def found_in(self, i: int, vr: str, low: bytes) -> tuple[bool, bool]:
        """(occurs, may be a leak) for value ``i`` in an element of VR ``vr`` with lower-cased value bytes ``low``.

        "May be": the form can identify here; :func:`_verdict` then applies the rules of place and kind.
        """
        v = self.values[i]
        if _UIDLIKE.match(v):
            hit = re.search(rb"(?<![0-9.])" + re.escape(v.encode("ascii")) + rb"(?![0-9])", low) is not None
            return hit, hit and (vr in TEXT_TARGETS or vr in PLACE_TARGETS or vr == "UI")
        if not any(e in low for e in self.encs[i]):
            return False, False
        if vr == "UI":
            # Inside a UID only a whole component counts: a replacement UID is 39 random decimal digits, and a
            # 6-digit ID or a date is found in some of them by chance.
            parts = set(re.split(rb"[.\\\x00 ]", low))
            return True, any(e in parts for e in self.encs[i])
        return True, vr in TEXT_TARGETS or vr in PLACE_TARGETS


class _Own:
    """What verification knows about the original of one output: its gone values (by place), the text of its
    kept attributes and of its cleaned ones."""

    __slots__ = ("places", "gone", "kept", "cleaned_text", "encoded_length")

    def __init__(self, places: dict[tuple, frozenset[str]], kept: _Kept, cleaned_text: str,
                 encoded_length: int | None = None):
        self.places, self.kept, self.cleaned_text = places, kept, cleaned_text
        self.gone = frozenset().union(*places.values())
        #: ``DeidResult.encoded_length`` of the output: how many of its first bytes the relay encoded itself.
        self.encoded_length = encoded_length


def _verdict(value: str, kind: int, where: tuple, vr: str, own: _Own | None, places: dict | None) -> bool:
    """Whether ``value`` (of ``kind``), found in the element at ``where`` of VR ``vr``, is a leak (module notes).

    ``own`` is the output's original (None: not known, the strict rule); ``places`` the gone values by place of
    every original (used when ``own`` is None; None: not known either, every place counts).
    """
    if own is not None:
        if own.kept.holds(value, kind):
            return False  # the instance keeps this value in a kept attribute: it legitimately stays
        if kind != IDENTITY and value not in own.gone and value.upper() in own.cleaned_text:
            # Another instance's value that this instance's own cleaned text holds (a department "Radiology"
            # in a kept-and-cleaned NetworkID): the cleaner removes this instance's identifying values, and
            # this value is not one of them.
            return False
    if own is None and places is None:
        return True
    at_place = value in (own.places if own is not None else places).get(where, ())
    if vr in PLACE_TARGETS:
        if kind == DATE and vr in ("DA", "DT") and own is None:
            return True  # strict: a shifted date cannot be told from another instance's original date
        return at_place
    return kind != LOCAL or at_place


def _location(path: tuple) -> str:
    from pydicom.datadict import keyword_for_tag

    out = []
    for k, x in enumerate(path):
        if k % 2:
            out[-1] += f"[{x}]"
        else:
            out.append(keyword_for_tag(x) or f"({x >> 16:04X},{x & 0xFFFF:04X})")
    where = ".".join(out)
    return f"file meta.{where}" if path and path[0] >> 16 == 2 else where


def _raw_output_leaves(buf: bytes, elems, prefix: tuple = ()):
    for el in elems:
        if el.items is not None:
            for i, (_, item) in enumerate(el.items):
                yield from _raw_output_leaves(buf, item, prefix + (el.tag, i))
        else:
            yield prefix + (el.tag,), el.vr, buf[el.vstart : el.vend].lower()


def _meta_leaves(buf: bytes):
    """(path, vr, lower-cased value) of the file meta elements (explicit VR little endian)."""
    rp = _rawpath()
    pos = 132
    while pos + 8 <= len(buf):
        g, e = struct.unpack_from("<HH", buf, pos)
        if g != 2:
            return
        fvr = buf[pos + 4 : pos + 6]
        if fvr in rp.LONG_VRS:
            (length,) = struct.unpack_from("<L", buf, pos + 8)
            vstart = pos + 12
        else:
            (length,) = struct.unpack_from("<H", buf, pos + 6)
            vstart = pos + 8
        yield (g << 16 | e,), fvr.decode("latin-1"), buf[vstart : vstart + length].lower()
        pos = vstart + length


def _pydicom_output_leaves(ds: Dataset, prefix: tuple = (), decoded: bool = False):
    """(path, VR, lower-cased value) of every element; values as bytes, or as str when ``decoded``."""
    for elem in ds:
        tag = int(elem.tag)
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or ()):
                yield from _pydicom_output_leaves(item, prefix + (tag, i), decoded)
            continue
        if tag == 0x7FE00010 and not prefix:
            continue  # pixel data: see the module notes above
        v = elem.value
        if v is None:
            continue
        if isinstance(v, (bytes, bytearray)):
            if not decoded:
                yield prefix + (tag,), elem.VR, bytes(v).lower()
        elif decoded:
            yield prefix + (tag,), elem.VR, str(v).lower()
        else:
            yield prefix + (tag,), elem.VR, str(v).encode("utf-8", "replace").lower()


def _encoded_part(fd: int, own: _Own | None) -> bytes | None:
    """The bytes of an output that the relay encoded itself -- everything before its pixel elements -- when the
    rest of the file is one native Pixel Data element of defined length that ends it; else None (the output is
    then read and parsed in full).

    Searching these bytes alone misses nothing the full reading would find. The full reading parses the output
    from its start to its first top-level pixel element and searches every byte before it (the header), and of
    the pixel element only encapsulated data. Here the engine reports how many bytes it encoded
    (``DeidResult.encoded_length``: preamble, file meta and every element before the pixel data, at every
    depth); it never encodes a pixel element, so the first top-level pixel element of the output starts exactly
    there, and the header the full reading would search is exactly these bytes, read back from the written file.
    What follows is checked, not assumed: a Pixel Data (or Float / Double Float Pixel Data) element of defined
    length (native: not searched by either reading, see the notes above ``_Needles``) whose value ends the file.
    Anything else there (encapsulated data, a second element, a length that does not end the file) and the
    full reading runs. Without pixel data the encoded bytes must be the whole file.
    """
    n = own.encoded_length if own is not None else None
    if not n:
        return None
    rp = _rawpath()
    size = os.fstat(fd).st_size
    buf = os.pread(fd, n + 12, 0)
    if size == n:
        return buf if len(buf) == n else None
    if len(buf) < n + 12:
        return None
    try:
        meta, _ = rp.read_meta(buf)
    except (rp.Fallback, struct.error):
        return None
    implicit = rp.transfer_syntax_encoding(meta.get(0x00020010, ""))
    if implicit is None:
        return None
    group, element = struct.unpack_from("<HH", buf, n)
    if (group << 16 | element) not in rp.PIXEL_TAGS:
        return None
    if implicit:
        (length,), value_at = struct.unpack_from("<L", buf, n + 4), n + 8
    elif buf[n + 4 : n + 6] in rp.LONG_VRS and buf[n + 6 : n + 8] == b"\0\0":
        (length,), value_at = struct.unpack_from("<L", buf, n + 8), n + 12
    else:
        return None
    if length == rp.UNDEF or value_at + length != size:
        return None
    return buf[:n]


def _check_file(path: Path, needles: _Needles, own: _Own | None, places: dict | None) -> list[Leak]:
    """Leaks in one output. ``own``: what is known of its original (None: not known, strict rule)."""
    rp = _rawpath()
    leaves = None
    pixels: bytes | None = None
    fd = os.open(path, os.O_RDONLY)  # an unreadable output raises, as before (the caller retries or fails)
    try:
        header = _encoded_part(fd, own)
        hits = needles.header_hits(header) if header is not None else None
        if header is not None and not needles.non_ascii and not hits:
            return []  # the common case: nothing found in the bytes the relay wrote, nothing else to search
        try:
            buf, meta, _, elems, pixel_at, implicit, size = rp.read_file(fd)
            header = buf[:pixel_at] if pixel_at >= 0 else buf
            tail = rp.find_tail(fd, pixel_at, size, implicit, buf)
            hits = needles.header_hits(header)
            if hits:
                leaves = list(_meta_leaves(buf)) + list(_raw_output_leaves(buf, elems))
            if (tail is not None and meta[0x00020010] not in _NOT_SEARCHED_PIXELS
                    and dictionary.transfer_syntax(meta[0x00020010])[3]):  # compressed (read_file knows the syntax)
                pixels = os.pread(fd, tail[1], tail[0])
        except (rp.Fallback, struct.error, RecursionError):
            import pydicom
            from pydicom.uid import UID

            try:
                ds = pydicom.dcmread(path, force=True)
            except Exception as exc:  # an unparseable output is itself a failure of verification
                return [Leak(path.name, f"unparseable file ({type(exc).__name__})", -1)]
            header = _header_bytes(path, ds)
            hits = needles.header_hits(header)
            leaves = []
            if hits:
                meta_ds = getattr(ds, "file_meta", None)
                if meta_ds is not None:
                    leaves += list(_pydicom_output_leaves(meta_ds))
                leaves += list(_pydicom_output_leaves(ds))
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            if "PixelData" in ds and ts is not None and ts not in _NOT_SEARCHED_PIXELS and UID(ts).is_compressed:
                pixels = ds.PixelData
    finally:
        os.close(fd)
    leaks: list[Leak] = []
    if needles.non_ascii and not header.isascii():
        leaks += _decoded_text_leaks(path, needles, own, places)
    if hits:
        accounted: set[int] = set()
        values, kinds = needles.values, needles.kinds
        for where, vr, low in leaves:
            for i in hits:
                occurs, may_leak = needles.found_in(i, vr, low)
                if not occurs:
                    continue
                accounted.add(i)
                if may_leak and _verdict(values[i], kinds[i], where, vr, own, places):
                    leaks.append(Leak(path.name, _location(where), i))
        for i in sorted(hits - accounted):
            if own is None or not own.kept.holds(values[i], kinds[i]):
                leaks.append(Leak(path.name, FRAMING, i))
    if pixels:
        for i in sorted(needles.pixel_hits(pixels)):
            k = needles.kinds[i]
            if k != LOCAL and (own is None or not own.kept.holds(needles.values[i], k)):
                leaks.append(Leak(path.name, "pixel data (encapsulated)", i))
    return list(dict.fromkeys(leaks))


def _decoded_text_leaks(path: Path, needles: _Needles, own: _Own | None, places: dict | None) -> list[Leak]:
    """The non-ASCII values, searched in the header's text values as pydicom decodes them (any charset)."""
    try:
        ds = _read_all_but_pixels(path)
    except Exception as exc:
        return [Leak(path.name, f"unparseable file ({type(exc).__name__})", -1)]
    wanted = [(i, needles.values[i].lower()) for i in needles.non_ascii]
    leaks = []
    for where, vr, text in _pydicom_output_leaves(ds, decoded=True):
        if vr not in TEXT_TARGETS and vr not in PLACE_TARGETS:
            continue
        for i, v in wanted:
            if v in text and _verdict(needles.values[i], needles.kinds[i], where, vr, own, places):
                leaks.append(Leak(path.name, _location(where), i))
    return leaks


def _header_bytes(path: Path, ds: Dataset) -> bytes:
    """The bytes of ``path`` before its pixel data (all of it when it has none or the offset is unknown)."""
    data = path.read_bytes()
    pixel = ds.get("PixelData") if "PixelData" in ds else None
    if isinstance(pixel, (bytes, bytearray)) and len(pixel) > 64:
        at = data.rfind(bytes(pixel[:64]))
        if at > 0:
            return data[:at] + data[at + len(pixel) :]
    return data


def find_leaks(original_values: Iterable[str] | "LeakCheck", deid_paths: Iterable[Path] | None = None) -> list[Leak]:
    """Every place where one of ``original_values`` occurs in one of ``deid_paths`` (see the notes above).

    Strict: every value counts in every element that can hold text (never in numbers). Given a
    :class:`LeakCheck` instead of values, its per-instance rules apply (``deid_paths`` defaults to the outputs it
    was given).
    """
    if isinstance(original_values, LeakCheck):
        return original_values.find_leaks(deid_paths)
    values = list(dict.fromkeys(v.strip() for v in original_values if v and v.strip()))
    needles = _Needles(values, [GLOBAL] * len(values))
    leaks: list[Leak] = []
    for path in deid_paths or ():
        leaks += _check_file(Path(path), needles, None, None)
    return leaks


class LeakCheck:
    """Verification of a batch that knows which output came from which original.

    The rules of the module notes: a value counts only in a form where it can identify, never in the output of
    an instance that keeps it, and codes and dates (in DA/DT elements) only at their own place in the output of
    their own instance. An output not registered with :meth:`add` gets the strict rule.

    ::

        check = LeakCheck(options)
        for src in originals:
            result = deidentifier.deidentify_file(src, out_dir, identity)
            check.add(src, identity, result.path)      # result.path is None when held back
        leaks = check.find_leaks()

    A pool of processes calls :func:`collect` next to the engine and hands the result to :meth:`add_collected`.
    """

    def __init__(self, options: DeidOptions = DeidOptions()):
        self.options = options
        self._own_text = _own_text(options)
        self._kinds: dict[str, int] = {}
        self._places: dict[tuple, set[str]] = {}
        self._outputs: dict[str, _Own] = {}  # by absolute path
        self._kept: dict[frozenset[str], _Kept] = {}

    def add(self, original: Dataset | str | Path, identity=None, output: str | Path | None = None) -> None:
        """Record what must not survive from one ORIGINAL instance (a dataset or a file path)."""
        self.add_collected(collect(original, self.options, identity), output)

    def add_collected(self, collected: Collected, output: str | Path | None, encoded_length: int | None = None) -> None:
        """:meth:`add` with the :func:`collect` of the original done already (e.g. in a worker process).

        ``encoded_length``: the output's ``DeidResult.encoded_length`` (the search then reads only those bytes
        back when the rest is native pixel data copied from the original, see :func:`_encoded_part`)."""
        kept = self._kept.get(collected.kept)
        if kept is None:
            kept = self._kept[collected.kept] = _Kept(collected.kept, self._own_text)
        values = _filtered(collected, kept=kept)
        kinds = self._kinds
        for v, k in values.items():
            if kinds.get(v, LOCAL + 1) > k:
                kinds[v] = k
        places = {p: frozenset(v for v in vs if v in values) for p, vs in collected.places.items()}
        places = {p: vs for p, vs in places.items() if vs}
        for p, vs in places.items():
            self._places.setdefault(p, set()).update(vs)
        if output is not None:
            self._outputs[_key(output)] = _Own(places, kept, "\n".join(collected.cleaned).upper(), encoded_length)

    @property
    def values(self) -> list[str]:
        """Every value searched for; a :class:`Leak`'s ``value_index`` is a position in this list."""
        return sorted(self._kinds, key=lambda v: (self._kinds[v], v))

    def find_leaks(self, paths: Iterable[str | Path] | None = None, *, workers: int = 1, pool=None) -> list[Leak]:
        """The leaks in ``paths`` (default: every registered output), in path order. ``workers`` > 1 searches in
        a process pool (each output is independent once every original is registered): ``pool``, a running
        ``ProcessPoolExecutor`` of that many processes (the one that de-identified the batch), or a new one."""
        values = self.values
        kinds = [self._kinds[v] for v in values]
        paths = [Path(p) for p in (self._outputs if paths is None else paths)]
        jobs = [(p, self._outputs.get(_key(p))) for p in paths]
        # An output whose encoded bytes alone are searched (_encoded_part) costs about a sixteenth of a full reading
        # (0.07 ms: one short read back), less than a pool's round trip (0.05 s) for the first thousand of them.
        cheap = sum(1 for _, own in jobs if own is not None and own.encoded_length)
        weight = len(jobs) - cheap + cheap // 16
        if workers > 1 and weight >= POOL_MIN_OUTPUTS and not _daemonic():
            from concurrent.futures import ProcessPoolExecutor

            chunks = [jobs[i::workers * 4] for i in range(workers * 4)]
            if pool is not None:
                # The needles go with each chunk (a worker builds them once per search, see _pool_check_in).
                search = (os.getpid(), id(self), len(self._outputs), len(values))
                parts = pool.map(_pool_check_in, [(search, values, kinds, self._places, c) for c in chunks])
                found = [leak for part in parts for leak in part]
            else:
                with ProcessPoolExecutor(workers, initializer=_pool_init,
                                         initargs=(values, kinds, self._places)) as own_pool:
                    found = [leak for part in own_pool.map(_pool_check, chunks) for leak in part]
            order = {p.name: n for n, p in enumerate(paths)}
            return sorted(found, key=lambda leak: order.get(leak.file, -1))
        needles = _Needles(values, kinds)
        leaks: list[Leak] = []
        for path, own in jobs:
            leaks += _check_file(path, needles, own, self._places)
        return leaks


def _key(path: str | Path) -> str:
    return os.path.abspath(path)


#: Below this many outputs to read in full a pool costs more than it saves (sixteen searched by their encoded
#: bytes count as one).
POOL_MIN_OUTPUTS = 64
_POOL_STATE: dict = {}


def _pool_init(values: list[str], kinds: list[int], places: dict) -> None:
    _POOL_STATE["needles"], _POOL_STATE["places"] = _Needles(values, kinds), places


def _pool_check_in(args) -> list[Leak]:
    """:func:`_pool_check` in a pool that was not started for this search: the needles come with the chunk and
    are prepared once per search in each worker."""
    search, values, kinds, places, jobs = args
    if _POOL_STATE.get("search") != search:
        _pool_init(values, kinds, places)
        _POOL_STATE["search"] = search
    return _pool_check(jobs)


def _pool_check(jobs: list[tuple[Path, "_Own | None"]]) -> list[Leak]:
    needles, places = _POOL_STATE["needles"], _POOL_STATE["places"]
    return [leak for path, own in jobs for leak in _check_file(path, needles, own, places)]


def _is_dataset(obj) -> bool:
    """``isinstance(obj, pydicom.dataset.Dataset)`` without importing pydicom: before it is imported, no
    dataset can exist."""
    module = sys.modules.get("pydicom.dataset")
    return module is not None and isinstance(obj, module.Dataset)


def collect(original, options: DeidOptions, identity) -> Collected:
    """The values of an original (a dataset, or a path: read raw when it is simple) by what the options do with
    them (:class:`Collected`); ``identity`` gives the jitter of Modified Dates."""
    jitter = getattr(identity, "jitter_days", None)
    if _is_dataset(original):
        family = sop_family(str(getattr(original, "SOPClassUID", "")))
        return _classify(_pydicom_leaves(original), options, family, jitter, True)
    rp = _rawpath()
    path = Path(original)
    try:
        with open(path, "rb") as f:
            buf, _, _, elems, pixel_at, implicit, size = rp.read_file(f.fileno())
            if implicit:
                raise rp.Fallback  # private VRs come from pydicom's private dictionary: let pydicom read it
            # Elements after the pixel data (a Digital Signatures Sequence, ...) are values too: Fallback then.
            rp.find_tail(f.fileno(), pixel_at, size, implicit, buf)
        return _collect_raw(buf, elems, options, jitter)
    except (rp.Fallback, struct.error, RecursionError):
        ds = _read_all_but_pixels(path)
        family = sop_family(str(getattr(ds, "SOPClassUID", "")))
        return _classify(_pydicom_leaves(ds), options, family, jitter, True)


def _collect_raw(buf: bytes, elems, options: DeidOptions, jitter) -> Collected:
    rp = _rawpath()
    family = next((sop_family(rp.ascii_value(buf, el)) for el in elems if el.tag == 0x00080016), sop_family(""))
    return _classify(list(_raw_leaves(buf, elems)), options, family, jitter, True)


def collect_parsed(buf: bytes, elems, options: DeidOptions, identity) -> Collected | None:
    """:func:`collect` of an original whose header the engine has parsed already (explicit VR little endian,
    ``rawpath.read_file``, nothing after the pixel data): the same values, without reading the file again. None
    when a value needs pydicom to decode it (a character set): then :func:`collect` the file."""
    rp = _rawpath()
    try:
        return _collect_raw(buf, elems, options, getattr(identity, "jitter_days", None))
    except (rp.Fallback, struct.error, RecursionError):
        return None


def _read_all_but_pixels(path: Path) -> Dataset:
    """Every element of a file, those after the pixel data included; large values (the pixels) not loaded."""
    import pydicom

    return pydicom.dcmread(path, force=True, defer_size=1024)
