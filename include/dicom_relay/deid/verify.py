"""Verification before sending: which original values must not survive, and are any of them still there?

``identifying_values`` / :class:`LeakCheck` collect, from an ORIGINAL instance, the values that
de-identification removes or replaces. The rule (documented in docs/DEIDENTIFICATION.md):

* values of attributes whose action under the options removes or replaces them (X, Z, D, U and compounds,
  PatientID/PatientName/AccessionNumber which get pseudonyms), of private attributes that are removed, and
  of DA/DT values that the Modified Dates option shifts (only when the jitter is not 0);
* only text-like VRs (PN, LO, SH, ST, LT, UT, UC, AE, UI, DA, DT, AS): numbers (DS, IS, binary) and coded
  strings (CS) and times (TM) are generic and would match unrelated values;
* a person name also contributes each of its components;
* skipped: values shorter than 4 characters, pure digit strings shorter than 6 digits (counts, instance
  numbers), a few generic words (NONE, UNKNOWN, ...), well-known UIDs, and any value that an attribute which is
  kept unchanged also holds (it legitimately stays).

Where a value counts as a leak: names, IDs, UIDs and every other non-date value anywhere in any output; an
original date in any non-date element of any output, but in a DA/DT element only at its own place (same
attribute, same item path) in the output of its own instance -- Modified Dates keeps intervals, so a shifted
date may equal another original date (:class:`LeakCheck`; the flat ``identifying_values`` + ``find_leaks``
cannot tell where a date came from and only guard within one instance).

``find_leaks`` / :meth:`LeakCheck.find_leaks` search the de-identified files (what is scanned and why: the
notes above ``_Needles``) and report where, never what.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

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


def _classify(leaves, options: DeidOptions, family: str, jitter, exclude_kept: bool):
    """Sort the text values of an original instance: (gone, gone dates, kept, shifted, dates by path).

    ``leaves`` yields ``(path, tag, vr, parts)`` for every text-like element at every depth; ``path`` is the
    tuple (tag, item index, tag, ...) of the element. "gone dates" are the DA/DT values that must change, and
    ``dates by path`` says where each one was.
    """
    rules = rules_for(options)
    gone: set[str] = set()
    gone_dates: set[str] = set()
    kept: set[str] = set()
    shifted: set[str] = set()
    by_path: dict[tuple, set[str]] = {}
    for path, tag, vr, parts in leaves:
        if not parts:
            continue
        if (tag >> 16) & 1:
            # Private attributes are removed (a safe-listed one holds parameters, not text identities).
            (gone_dates if vr in ("DA", "DT") else gone).update(parts)
            if vr in ("DA", "DT"):
                by_path.setdefault(path, set()).update(parts)
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
        if vr in ("DA", "DT"):
            if jitter:
                for p in parts:
                    s = shift_value(vr, p, jitter)
                    if s:
                        shifted.add(s)
            if removed:
                gone_dates.update(parts)
                by_path.setdefault(path, set()).update(parts)
                continue
        (gone if removed else kept).update(parts)
    return gone, gone_dates, kept, shifted, by_path


def _pydicom_leaves(ds: Dataset, prefix: tuple = ()):
    for elem in ds:
        tag = int(elem.tag)
        vr = elem.VR
        if vr == "SQ":
            for i, item in enumerate(elem.value or ()):
                yield from _pydicom_leaves(item, prefix + (tag, i))
            continue
        if vr in TEXT_VRS:
            yield prefix + (tag,), tag, vr, _parts(elem)


_SINGLE_VALUED = frozenset({"ST", "LT", "UT"})


def _raw_parts(value: bytes, vr: str) -> list[str]:
    """``_parts`` of a raw ASCII value, split and stripped the way pydicom decodes it."""
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
    return out


def _raw_leaves(buf: bytes, elems, prefix: tuple = ()):
    for el in elems:
        if el.items is not None:
            for i, (_, item) in enumerate(el.items):
                yield from _raw_leaves(buf, item, prefix + (el.tag, i))
            continue
        if el.vr in TEXT_VRS:
            yield prefix + (el.tag,), el.tag, el.vr, _raw_parts(buf[el.vstart : el.vend], el.vr)


def _rawpath():
    from dicom_relay.deid import rawpath

    return rawpath


def _filtered(gone: set[str], kept: set[str], shifted: set[str]) -> set[str]:
    # A value contained in a kept value (e.g. a removed "GE" name component inside the kept Manufacturer "GE
    # MEDICAL SYSTEMS") legitimately stays; so do the relay's own constants.
    kept_text = "\n".join(kept | OWN_CONSTANTS).upper()
    return {v for v in gone - kept - shifted if _keepable(v) and v.upper() not in kept_text}


def identifying_values(
    ds: Dataset, options: DeidOptions = DeidOptions(), identity=None, *, exclude_kept: bool = True
) -> set[str]:
    """The values of an original instance that must not appear in its de-identified output (rule above).

    ``exclude_kept=False`` is for the text cleaner: there a value that also occurs in kept text must still be
    removed from descriptors.

    The flat set cannot say where a date came from, so with it a shifted date that equals another instance's
    original date is reported by :func:`find_leaks`; :class:`LeakCheck` keeps dates per instance and attribute.
    """
    family = sop_family(str(getattr(ds, "SOPClassUID", "")))
    jitter = getattr(identity, "jitter_days", None)
    gone, gone_dates, kept, shifted, _ = _classify(_pydicom_leaves(ds), options, family, jitter, exclude_kept)
    if not exclude_kept:
        return {v for v in gone | gone_dates if _keepable(v)}
    return _filtered(gone | gone_dates, kept, shifted)


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
GLOBAL, DATE = 0, 1


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

    def header_hits(self, data: bytes) -> set[int]:
        low = data.lower()
        hits: set[int] = set()
        for key, members in self.buckets.items():
            if key in low:
                for e, i in members:
                    if e in low:
                        hits.add(i)
        self._uid_hits(data, hits)
        return hits

    def pixel_hits(self, data: bytes) -> set[int]:
        hits: set[int] = set()
        for key, members in self.exact.items():
            if key in data:
                for e, i in members:
                    if e in data:
                        hits.add(i)
        uids: set[int] = set()
        self._uid_hits(data, uids)
        return hits | {i for i in uids if len(self.values[i]) >= PIXEL_MIN_LEN}

    def found_in(self, i: int, vr: str, low: bytes) -> tuple[bool, bool]:
        """(occurs, is a leak) for value ``i`` in an element of VR ``vr`` with lower-cased value bytes ``low``."""
        v = self.values[i]
        if _UIDLIKE.match(v):
            hit = re.search(rb"(?<![0-9.])" + re.escape(v.encode("ascii")) + rb"(?![0-9])", low) is not None
            return hit, hit
        if not any(e in low for e in self.encs[i]):
            return False, False
        if vr == "UI":
            # Inside a UID only a whole component counts: a replacement UID is 39 random decimal digits, and a
            # 6-digit ID or a date is found in some of them by chance.
            parts = set(re.split(rb"[.\\\x00 ]", low))
            return True, any(e in parts for e in self.encs[i])
        return True, True


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


def _check_file(path: Path, needles: _Needles, dates: dict[tuple, set[str]] | None) -> list[Leak]:
    """Leaks in one output. ``dates`` are its own original's dates by place; None: not known (strict)."""
    rp = _rawpath()
    leaves = None
    pixels: bytes | None = None
    fd = os.open(path, os.O_RDONLY)  # an unreadable output raises, as before (the caller retries or fails)
    try:
        try:
            buf, meta, _, elems, pixel_at, implicit, size = rp.read_file(fd)
            header = buf[:pixel_at] if pixel_at >= 0 else buf
            tail = rp.find_tail(fd, pixel_at, size, implicit, buf)
            hits = needles.header_hits(header)
            if hits:
                leaves = list(_meta_leaves(buf)) + list(_raw_output_leaves(buf, elems))
            if tail is not None and meta[0x00020010] not in _NOT_SEARCHED_PIXELS and UID(meta[0x00020010]).is_compressed:
                pixels = os.pread(fd, tail[1], tail[0])
        except (rp.Fallback, struct.error, RecursionError):
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
        leaks += _decoded_text_leaks(path, needles)
    if hits:
        accounted: set[int] = set()
        for where, vr, low in leaves:
            for i in hits:
                occurs, leak = needles.found_in(i, vr, low)
                if not occurs:
                    continue
                accounted.add(i)
                if not leak:
                    continue
                if needles.kinds[i] == DATE and vr in ("DA", "DT") and dates is not None:
                    # A shifted date may equal another original date (intervals are kept): only the original
                    # value of this very attribute of this instance is a leak here.
                    if needles.values[i] not in dates.get(where, ()):
                        continue
                leaks.append(Leak(path.name, _location(where), i))
        for i in sorted(hits - accounted):
            leaks.append(Leak(path.name, FRAMING, i))
    if pixels:
        for i in sorted(needles.pixel_hits(pixels)):
            leaks.append(Leak(path.name, "pixel data (encapsulated)", i))
    return list(dict.fromkeys(leaks))


def _decoded_text_leaks(path: Path, needles: _Needles) -> list[Leak]:
    """The non-ASCII values, searched in the header's text values as pydicom decodes them (any charset)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:
        return [Leak(path.name, f"unparseable file ({type(exc).__name__})", -1)]
    wanted = [(i, needles.values[i].lower()) for i in needles.non_ascii]
    leaks = []
    for where, _, text in _pydicom_output_leaves(ds, decoded=True):
        for i, v in wanted:
            if v in text:
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

    Every value is searched everywhere. Given a :class:`LeakCheck` instead of values, its per-instance rules
    apply (``deid_paths`` defaults to the outputs it was given).
    """
    if isinstance(original_values, LeakCheck):
        return original_values.find_leaks(deid_paths)
    values = list(dict.fromkeys(v.strip() for v in original_values if v and v.strip()))
    needles = _Needles(values, [GLOBAL] * len(values))
    leaks: list[Leak] = []
    for path in deid_paths or ():
        leaks += _check_file(Path(path), needles, None)
    return leaks


class LeakCheck:
    """Verification of a batch that knows which output came from which original.

    Names, IDs, UIDs and every other value are checked globally: found anywhere in any output, they are a
    leak. Dates are different because Modified Dates keeps intervals: a shifted date can equal an original date
    of another instance (a study over several days) or of another attribute. So an original DA/DT value is a
    leak (a) in any non-date element of any output (free text, a UID, ...) and in bytes outside elements, and
    (b) in a DA/DT element only at the same place (same attribute, same sequence item path) of the output of
    its own instance. An output not registered with :meth:`add` gets the strict rule (every date everywhere).

    ::

        check = LeakCheck(options)
        for src in originals:
            result = deidentifier.deidentify_file(src, out_dir, identity)
            check.add(src, identity, result.path)      # result.path is None when held back
        leaks = check.find_leaks()
    """

    def __init__(self, options: DeidOptions = DeidOptions()):
        self.options = options
        self._global: set[str] = set()
        self._dates: set[str] = set()
        self._outputs: dict[Path, dict[tuple, set[str]]] = {}

    def add(self, original: Dataset | str | Path, identity=None, output: str | Path | None = None) -> None:
        """Record what must not survive from one ORIGINAL instance (a dataset or a file path)."""
        self._add_collected(_collect(original, self.options, identity), output)

    def _add_collected(self, collected, output: str | Path | None) -> None:
        gone, gone_dates, kept, shifted, by_path = collected
        self._global |= _filtered(gone, kept, shifted)
        kept_text = "\n".join(kept | OWN_CONSTANTS).upper()
        self._dates |= {v for v in gone_dates if _keepable(v) and v.upper() not in kept_text}
        if output is not None:
            self._outputs[_key(output)] = {k: {v for v in vs if _keepable(v)} for k, vs in by_path.items()}

    @property
    def values(self) -> list[str]:
        """Every value searched for; a :class:`Leak`'s ``value_index`` is a position in this list."""
        return sorted(self._global) + sorted(self._dates - self._global)

    def find_leaks(self, paths: Iterable[str | Path] | None = None) -> list[Leak]:
        values = self.values
        n_global = len(self._global)
        needles = _Needles(values, [GLOBAL] * n_global + [DATE] * (len(values) - n_global))
        leaks: list[Leak] = []
        for path in (self._outputs if paths is None else paths):
            leaks += _check_file(Path(path), needles, self._outputs.get(_key(path)))
        return leaks


def _key(path: str | Path) -> Path:
    return Path(os.path.abspath(path))


def _collect(original, options: DeidOptions, identity):
    """``_classify`` of an original given as a dataset or a path (raw reading when it is simple)."""
    jitter = getattr(identity, "jitter_days", None)
    if isinstance(original, Dataset):
        family = sop_family(str(getattr(original, "SOPClassUID", "")))
        return _classify(_pydicom_leaves(original), options, family, jitter, True)
    rp = _rawpath()
    path = Path(original)
    try:
        with open(path, "rb") as f:
            buf, _, _, elems, _, implicit, _ = rp.read_file(f.fileno())
        if implicit:
            raise rp.Fallback  # private VRs come from pydicom's private dictionary: let pydicom read it
        family = next((sop_family(rp.ascii_value(buf, el)) for el in elems if el.tag == 0x00080016), sop_family(""))
        return _classify(list(_raw_leaves(buf, elems)), options, family, jitter, True)
    except (rp.Fallback, struct.error, RecursionError):
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        family = sop_family(str(getattr(ds, "SOPClassUID", "")))
        return _classify(_pydicom_leaves(ds), options, family, jitter, True)
