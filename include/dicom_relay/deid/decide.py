"""Decide: the action each attribute gets, in one function that both I/O paths call.

:func:`decide` takes what identifies an attribute's place and nothing of its value: the tag, the VR, the SOP
Class UID of the instance (``family``), the sequence path (the tags of the enclosing sequences from the top
level), the mode the enclosing sequences put it in, and the option set. It returns an :class:`Action`, a small
value that the pydicom path (``Deidentifier._walk``) and the raw bytes path (``Deidentifier._raw_walk``) each
apply to their own representation of the element. Since the decision does not depend on the value it is
computed once per (place, tag, VR) and cached in a :class:`Scope`.

What the actions mean (PS3.15 E.1.1 and the options, see docs/DEIDENTIFICATION.md):

* ``KEEP`` / ``REMOVE`` / ``EMPTY`` (zero length; an empty sequence for SQ);
* ``PSEUDONYM`` (PatientName, PatientID: the identifier service's pseudonym) and ``ACCESSION`` (AccessionNumber:
  its pseudonym from the identity, or an error when there is none: fail closed);
* ``UIDS``: every UID of the value replaced by its keyed replacement (well-known UIDs unchanged);
* ``DUMMY``: the value becomes ``arg``, a dummy valid for the VR;
* ``DATE``: the value is shifted by the patient's jitter (Modified Dates); one that does not parse gets
  ``arg`` (``REMOVE``, ``EMPTY`` or ``DUMMY``). Under Full Dates the decision is ``KEEP``, without either
  option ``REMOVE`` (or a dummy where the attribute must stay);
* ``CLEAN``: identifying values are removed from the text, which must then be valid for its VR; a value that
  is not gets ``arg`` (``REMOVE`` or ``EMPTY``);
* ``PRIVATE``: kept only if the Retain Safe Private list names it (the pydicom path checks the creator);
* ``DESCEND``: a sequence kept; its items are walked with the :class:`Scope` in ``arg``.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

from dicom_relay.deid.options import DeidOptions
from dicom_relay.deid.table import NESTED, resolve_compound, rules_for
from dicom_relay.deid.vr import BINARY_VRS, DATE_VRS, TEXT_VRS

PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
ACCESSION_NUMBER = 0x00080050
# Free text of SR content items and graphic annotations: replaced inside a sequence whose action is D.
CONTENT_TEXT = frozenset({0x0040A160, 0x00700006})  # TextValue, UnformattedTextValue

# The operations of an Action.
KEEP, REMOVE, EMPTY, PSEUDONYM, ACCESSION, UIDS, DUMMY, DATE, CLEAN, PRIVATE, DESCEND = range(11)

# Modes of a sequence's contents: normal, clean (action C: text cleaned), dummy (action D: content text
# replaced). A nested sequence never gets a weaker mode than its parent.
NORMAL, CLEANED, DUMMIED = 0, 1, 2

# Dummy values (action D) by VR: non-empty, valid for the VR, and obviously not real.
DUMMY_VALUES: dict[str, object] = {
    "AE": "ANONYMIZED", "AS": "000Y", "CS": "ANONYMIZED", "DA": "19000101", "DT": "19000101000000",
    "TM": "000000", "DS": "0", "IS": "0", "LO": "ANONYMIZED", "LT": "ANONYMIZED", "PN": "ANONYMIZED",
    "SH": "ANONYMIZED", "ST": "ANONYMIZED", "UC": "ANONYMIZED", "UT": "ANONYMIZED", "UR": "urn:anonymized",
    "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "UL": 0, "US": 0, "SV": 0, "UV": 0, "AT": 0,
    "OB": b"\0\0", "OW": b"\0\0", "OF": b"\0\0\0\0", "OD": b"\0" * 8, "OL": b"\0\0\0\0", "OV": b"\0" * 8,
    "UN": b"\0\0",
}


class Action(NamedTuple):
    """What to do with one element: an operation (module constants) and its argument, if any."""

    op: int
    arg: object = None


_KEEP, _REMOVE, _EMPTY = Action(KEEP), Action(REMOVE), Action(EMPTY)
_PSEUDONYM, _ACCESSION, _UIDS, _PRIVATE = Action(PSEUDONYM), Action(ACCESSION), Action(UIDS), Action(PRIVATE)

# Whether the table's resolve_compound takes the sequence path (IOD types along sequence paths).
_RESOLVE_TAKES_PATH = "path" in inspect.signature(resolve_compound).parameters


def resolve(act: str, keyword: str, family: str, path: tuple[int, ...]) -> str:
    """One of X, Z, D, U for a compound action at ``path`` in an instance of SOP class ``family``."""
    if _RESOLVE_TAKES_PATH:
        return resolve_compound(act, keyword, family, path)
    # Without per-path types, the IOD's top-level types do not apply inside sequences: the safe fallback.
    return resolve_compound(act, keyword, NESTED if path else family)


def _date(options: DeidOptions, on_failure: Action) -> Action:
    if options.dates == "full":
        return _KEEP
    if options.dates == "remove":
        return _REMOVE
    return Action(DATE, on_failure)


def decide(tag: int, vr: str, options: DeidOptions, family: str, path: tuple[int, ...], mode: int) -> Action:
    """The action of the element ``tag`` (VR ``vr``) at ``path`` (enclosing sequence tags, outermost first)
    in an instance of SOP class ``family``, inside sequences that put it in ``mode``, under ``options``.

    The returned :class:`Action` for a sequence (``DESCEND``) carries the mode of its items, not yet a
    :class:`Scope`: :meth:`Scope.action` adds that.
    """
    group = tag >> 16
    if group & 1:
        return _PRIVATE if rules_for(options).private_action == "C" else _REMOVE
    if not tag & 0xFFFF and group != 2:
        return _REMOVE  # group length: retired, and wrong once anything in the group changed
    if tag == PATIENT_NAME or tag == PATIENT_ID:
        return _PSEUDONYM
    if tag == ACCESSION_NUMBER:
        return _ACCESSION
    rule = rules_for(options).exact.get(tag)
    if rule is None:
        if 0x5000 <= group <= 0x501E or 0x6000 <= group <= 0x601E:
            # Curves and overlays: a bitmap cannot be cleaned automatically, and removing only Overlay Data
            # would leave an invalid Overlay Plane module.
            return _REMOVE
        if vr in DATE_VRS:
            return _date(options, _REMOVE)  # E.1.1 note 4: dates the table does not name
        if vr == "SQ":
            return Action(DESCEND, mode)
        if mode == DUMMIED and tag in CONTENT_TEXT:
            return Action(DUMMY, DUMMY_VALUES[vr])
        if mode == CLEANED and vr in TEXT_VRS:
            return Action(CLEAN, _KEEP)
        return _KEEP
    act, _, keyword, basic = rule
    if "/" in act:
        act = resolve(act, keyword, family, path)
    if act == "K":
        # Kept sequences are still walked: their items may hold attributes the profile removes.
        return Action(DESCEND, mode) if vr == "SQ" else _KEEP
    if act == "X":
        return _REMOVE
    if act == "Z":
        return _EMPTY
    if act == "U":
        # X/Z/U* on a sequence: keep it, replace the UIDs it contains. With Retain UIDs the table already
        # says K for the UIDs that option keeps.
        return Action(DESCEND, mode) if vr == "SQ" else _UIDS
    if act == "D":
        if vr == "SQ":
            return Action(DESCEND, DUMMIED)
        if vr == "UI":
            return _UIDS
        if vr in DATE_VRS and options.dates != "remove":
            return _date(options, _EMPTY)
        return Action(DUMMY, DUMMY_VALUES.get(vr, "ANONYMIZED"))
    if act == "C":
        if vr in DATE_VRS:
            return _date(options, _REMOVE if basic == "X" else _EMPTY)
        if vr == "SQ":
            return Action(DESCEND, max(mode, CLEANED))
        if vr in BINARY_VRS:
            return _REMOVE  # a bitmap or blob cannot be cleaned automatically
        if vr in TEXT_VRS or vr in ("AE", "CS", "UR"):
            return Action(CLEAN, _KEEP)
        return _KEEP
    raise ValueError(f"unknown action {act!r} for {keyword or hex(tag)}")  # the table loader validates codes


class Scope:
    """The decisions at one place of an instance (SOP class, sequence path, mode), cached per (tag, VR).

    ``Scope.top(options, family)`` is the top level of an instance; :meth:`action` gives each element's
    :class:`Action`, and for a sequence an ``Action(DESCEND, <Scope of its items>)``. Scopes are kept for the
    life of the options' :class:`Deidentifier`, so a study's files share them.
    """

    __slots__ = ("options", "family", "path", "mode", "_cache")

    def __init__(self, options: DeidOptions, family: str, path: tuple[int, ...] = (), mode: int = NORMAL):
        self.options, self.family, self.path, self.mode = options, family, path, mode
        self._cache: dict[tuple[int, str], Action] = {}

    def action(self, tag: int, vr: str) -> Action:
        key = (tag, vr)
        a = self._cache.get(key)
        if a is None:
            a = decide(tag, vr, self.options, self.family, self.path, self.mode)
            if a.op == DESCEND:
                a = Action(DESCEND, Scope(self.options, self.family, self.path + (tag,), a.arg))
            if len(self._cache) > 4096:  # a pathological file must not grow a long-lived worker's cache
                self._cache.clear()
            self._cache[key] = a
        return a
