"""The DICOM data dictionary as the raw path needs it, without importing pydicom.

``import pydicom`` costs 0.35-0.45 CPU-s (numpy, PIL and its pixel handlers come with it), more than
``dicom-relay deidentify`` spends on 500 CT instances once started. The raw path (rawpath.py) needs only a few
facts from pydicom's dictionary: the VR of a tag (implicit VR files, elements stored as UN) and of a keyword (the IOD tables' sequence paths), the well-known UIDs
(never replaced), the transfer syntaxes, and the Implementation Class UID the relay writes. They come from
``data/dicom_dictionary.json``, generated from the installed pydicom by ``scripts/build_dicom_dictionary.py``
(provenance in the file) and compared with pydicom by ``tests/unit/deid/test_dictionary.py``. Anything else
(the pydicom path, verification of a file the raw reader cannot parse) imports pydicom when it needs it.

A leaf module: it imports nothing from ``dicom_relay``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

_DATA = Path(__file__).resolve().parent / "data" / "dicom_dictionary.json"

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
#: The transfer syntaxes whose Pixel Data is native (not encapsulated), as pydicom's ``UID.is_compressed`` has it.
NATIVE_TRANSFER_SYNTAXES = frozenset({
    IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
})


@lru_cache(maxsize=1)
def _table() -> dict:
    # Read directly rather than through importlib.resources (~0.04 CPU-s to import): the package is installed as
    # files (include/ on the path, or a wheel unpacked by pip), never zipped.
    return json.loads(_DATA.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _vrs() -> dict[int, str]:
    return {int(tag, 16): vr for tag, (vr, _) in _table()["tags"].items()}


@lru_cache(maxsize=1)
def _keywords() -> dict[str, int]:
    return {keyword: int(tag, 16) for tag, (_, keyword) in _table()["tags"].items() if keyword}


@lru_cache(maxsize=1)
def _repeaters() -> tuple[tuple[int, int, str], ...]:
    # pydicom's datadict.mask_match: "x" digits are "don't care"; the first matching mask wins (dictionary order).
    out = []
    for mask, vr in _table()["repeaters"].items():
        value = int(mask.replace("x", "0"), 16)
        care = int("".join("0" if c == "x" else "F" for c in mask), 16)
        out.append((value, care, vr))
    return tuple(out)


def dictionary_vr(tag: int) -> str:
    """The VR pydicom's ``datadict.dictionary_VR`` gives ``tag`` ("US or SS" where several are allowed); KeyError
    for a tag the dictionary does not know (private tags included), like pydicom."""
    vr = _vrs().get(tag)
    if vr is not None:
        return vr
    if not (tag >> 16) & 1:
        for value, care, vr in _repeaters():
            if (tag ^ value) & care == 0:
                return vr
    raise KeyError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is not in the DICOM dictionary")


def tag_for_keyword(keyword: str) -> int | None:
    """The tag of a keyword of the dictionary (pydicom's ``datadict.tag_for_keyword``), None if unknown."""
    return _keywords().get(keyword)


@lru_cache(maxsize=1)
def uids() -> dict[str, tuple[str, str]]:
    """Every UID the standard defines: ``{uid: (name, type)}`` (pydicom's ``UID_dictionary``)."""
    return {uid: (name, kind) for uid, (name, kind) in _table()["uids"].items()}


def implementation_uid() -> str:
    """pydicom's ``PYDICOM_IMPLEMENTATION_UID``: the Implementation Class UID the relay writes on both paths."""
    return _table()["implementation_uid"]


@lru_cache(maxsize=64)
def transfer_syntax(uid: str) -> tuple[bool, bool, bool, bool] | None:
    """``(implicit VR, little endian, deflated, compressed)`` of a transfer syntax of the standard, as pydicom's
    ``UID`` properties give them; None for a UID that is no transfer syntax of the dictionary (a private one
    included: pydicom knows its encoding only when told)."""
    info = uids().get(uid)
    if info is None or info[1] != "Transfer Syntax":
        return None
    return (uid == IMPLICIT_VR_LITTLE_ENDIAN, uid != EXPLICIT_VR_BIG_ENDIAN,
            uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, uid not in NATIVE_TRANSFER_SYNTAXES)
