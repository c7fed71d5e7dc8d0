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

Sequences put their items in a mode. Action D on a sequence (PS3.15 E.1.1: a dummy value) leaves nothing of the
original text: every text leaf the table does not name (PN, LO, SH, ST, LT, UT, UC, AE, UR) gets a dummy of its
VR at every depth, UIDs are replaced and dates follow the date option (shifted, kept, or where the option would
remove them a dummy, so the item keeps its structure); identification codes (PersonIdentificationCodeSequence,
InstitutionCodeSequence, ...) become dummy codes. Coded concepts of SR content (ConceptNameCodeSequence,
ConceptCodeSequence, MeasurementUnitsCodeSequence, ...) are not patient identifiers, and the templates need
them: their code is kept when it is a code of a standard coding scheme (pydicom's concept dictionary:
DCM, SCT, LN, UCUM, ...; SNOMED RT codes through their SCT equivalent), with the dictionary's Code Meaning in
place of the original text; any other code becomes a dummy code. Action C on a sequence cleans the free text
of its items (:mod:`dicom_relay.deid.text`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, NamedTuple

from dicom_relay.deid.options import DeidOptions
from dicom_relay.deid.table import resolve_compound, rules_for
from dicom_relay.deid.vr import BINARY_VRS, DATE_VRS, TEXT_VRS

PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
ACCESSION_NUMBER = 0x00080050

# The operations of an Action. MEANING only occurs inside a Scope: it becomes DUMMY with the standard meaning.
KEEP, REMOVE, EMPTY, PSEUDONYM, ACCESSION, UIDS, DUMMY, DATE, CLEAN, PRIVATE, DESCEND, MEANING = range(12)

# Modes of a sequence's items: normal; cleaned (action C: free text cleaned); dummied (action D: free text
# replaced); the items of a coded-concept sequence inside a dummied one, before (CONCEPT) and after
# (KNOWN_CODE) their code was found in the standard's dictionaries.
NORMAL, CLEANED, DUMMIED, CONCEPT, KNOWN_CODE = range(5)

#: What a dummied sequence replaces: every VR a person can type text into.
DUMMIED_VRS = TEXT_VRS | {"AE", "UR"}
#: What action C can clean; anything else under C that is not a date or a sequence is removed or replaced.
CLEANABLE_VRS = TEXT_VRS | {"AE", "CS", "UR"}
#: Code sequences that hold the coded concepts of SR content items (PS3.3 C.17.3, Table 10-2).
CONCEPT_SEQUENCES = frozenset({
    0x0040A043,  # ConceptNameCodeSequence
    0x0040A168,  # ConceptCodeSequence
    0x004008EA,  # MeasurementUnitsCodeSequence
    0x0040A301,  # NumericValueQualifierCodeSequence
    0x0040A170,  # PurposeOfReferenceCodeSequence
})
CODE_VALUE, CODING_SCHEME, CODING_SCHEME_VERSION, CODE_MEANING = 0x00080100, 0x00080102, 0x00080103, 0x00080104
LONG_CODE_VALUE, URN_CODE_VALUE = 0x00080119, 0x00080120
#: The attributes of a code (Basic Code Sequence Macro) kept as they are when the code is a standard one.
CODE_KEPT = frozenset({CODE_VALUE, CODING_SCHEME, CODING_SCHEME_VERSION, LONG_CODE_VALUE, URN_CODE_VALUE})

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
_PSEUDONYM, _ACCESSION, _UIDS, _PRIVATE, _MEANING = (
    Action(PSEUDONYM), Action(ACCESSION), Action(UIDS), Action(PRIVATE), Action(MEANING)
)


def _dummy(vr: str) -> Action:
    return Action(DUMMY, DUMMY_VALUES.get(vr, "ANONYMIZED"))


def _date(options: DeidOptions, on_failure: Action, dummied: bool = False) -> Action:
    """A DA/DT/TM under the date option; ``dummied``: in a dummied sequence, where a date the option would
    remove gets a dummy instead (the item keeps its structure, e.g. an SR DATE content item its Date)."""
    if options.dates == "full":
        return _KEEP
    if options.dates == "remove":
        return on_failure if dummied else _REMOVE
    return Action(DATE, on_failure)


def _on_failure(basic: str, vr: str) -> Action:
    """What replaces a value that cannot be kept under C: the Basic Profile's own action where it is a plain
    X or Z, else a dummy (the attribute is one the IOD may require)."""
    if basic == "X":
        return _REMOVE
    if basic == "Z":
        return _EMPTY
    return _dummy(vr)


def decide(tag: int, vr: str, options: DeidOptions, family: str, path: tuple[int, ...], mode: int) -> Action:
    """The action of the element ``tag`` (VR ``vr``) at ``path`` (enclosing sequence tags, outermost first)
    in an instance of SOP class ``family``, inside sequences that put it in ``mode``, under ``options``.

    An attribute the table names gets its row's action at every depth (a compound one resolved for the SOP
    class and the path by :func:`dicom_relay.deid.table.resolve_compound`); the mode decides for the others.
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
    dummied = mode >= DUMMIED
    if rule is None:
        if 0x5000 <= group <= 0x501E or 0x6000 <= group <= 0x601E:
            # Curves and overlays: a bitmap cannot be cleaned automatically, and removing only Overlay Data
            # would leave an invalid Overlay Plane module.
            return _REMOVE
        if vr in DATE_VRS:
            # E.1.1 note 4: dates the table does not name follow the date option.
            return _date(options, _dummy(vr), True) if dummied else _date(options, _REMOVE)
        if vr == "SQ":
            if dummied:
                return Action(DESCEND, CONCEPT if tag in CONCEPT_SEQUENCES else DUMMIED)
            return Action(DESCEND, mode)
        if mode == KNOWN_CODE and tag in CODE_KEPT:
            return _KEEP
        if mode == KNOWN_CODE and tag == CODE_MEANING:
            return _MEANING
        if dummied:
            if vr in DUMMIED_VRS:
                return _dummy(vr)
            return _UIDS if vr == "UI" else _KEEP  # coded strings, numbers, binary: no free text
        if mode == CLEANED and vr in TEXT_VRS:
            return Action(CLEAN, _dummy(vr))
        return _KEEP
    act, _, keyword, basic = rule
    if "/" in act:
        act = resolve_compound(act, keyword, family, path)
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
            return Action(DESCEND, CONCEPT if dummied and tag in CONCEPT_SEQUENCES else DUMMIED)
        if vr == "UI":
            return _UIDS
        if vr in DATE_VRS and options.dates != "remove":
            return _date(options, _dummy(vr) if dummied else _EMPTY)
        return _dummy(vr)
    if act == "C":
        if vr in DATE_VRS:
            # In a dummied sequence a date that does not parse gets a dummy: the item keeps its structure.
            return _date(options, _dummy(vr) if dummied else _REMOVE if basic == "X" else _EMPTY)
        if vr == "SQ":
            return Action(DESCEND, CLEANED if mode == NORMAL else mode)
        if vr in CLEANABLE_VRS:
            return Action(CLEAN, _on_failure(basic, vr))
        # A bitmap or blob cannot be cleaned automatically; nor can a number be told safe.
        return _REMOVE if vr in BINARY_VRS else _on_failure(basic, vr)
    raise ValueError(f"unknown action {act!r} for {keyword or hex(tag)}")  # the table loader validates codes


@lru_cache(maxsize=1)
def _standard_codes() -> dict[tuple[str, str], str]:
    """(coding scheme, code value) -> Code Meaning of every code in pydicom's concept dictionary (the codes
    of PS3.16's context groups). Loaded on first use: only dummied SR content needs it."""
    from pydicom.sr._concepts_dict import concepts

    return {
        (scheme, code): meaning
        for scheme, by_name in concepts.items()
        for codes in by_name.values()
        for code, (meaning, _cids) in codes.items()
        if meaning.isascii() and "\\" not in meaning and len(meaning) <= 64
    }


def standard_meaning(scheme: str, code: str) -> str | None:
    """The Code Meaning of a standard code, or None for a code the dictionaries do not hold."""
    if not scheme or not code:
        return None
    codes = _standard_codes()
    meaning = codes.get((scheme, code))
    if meaning is None and scheme == "SRT":  # SNOMED RT ids of older SR: their SNOMED CT equivalent
        from pydicom.sr._snomed_dict import mapping

        sct = mapping["SRT"].get(code)
        meaning = codes.get(("SCT", sct)) if sct else None
    return meaning


class Scope:
    """The decisions at one place of an instance (SOP class, sequence path, mode), cached per (tag, VR).

    ``Scope(options, family)`` is the top level of an instance; :meth:`action` gives each element's
    :class:`Action`, and for a sequence an ``Action(DESCEND, <Scope of its items>)``. The items of a sequence
    get :meth:`item` of that scope (the same scope except for coded concepts). Scopes are kept for the life
    of the options' :class:`Deidentifier`, so a study's files share them.
    """

    __slots__ = ("options", "family", "path", "mode", "meaning", "_cache", "_items")

    def __init__(
        self, options: DeidOptions, family: str, path: tuple[int, ...] = (), mode: int = NORMAL, meaning: str = ""
    ):
        self.options, self.family, self.path, self.mode, self.meaning = options, family, path, mode, meaning
        self._cache: dict[tuple[int, str], Action] = {}
        self._items: dict[str, Scope] = {}

    def action(self, tag: int, vr: str) -> Action:
        key = (tag, vr)
        a = self._cache.get(key)
        if a is None:
            a = decide(tag, vr, self.options, self.family, self.path, self.mode)
            if a.op == DESCEND:
                a = Action(DESCEND, Scope(self.options, self.family, self.path + (tag,), a.arg))
            elif a.op == MEANING:
                a = Action(DUMMY, self.meaning)
            if len(self._cache) > 4096:  # a pathological file must not grow a long-lived worker's cache
                self._cache.clear()
            self._cache[key] = a
        return a

    def item(self, value_of: Callable[[int], str]) -> Scope:
        """The scope of one item of a sequence walked with this scope; ``value_of(tag)`` gives the item's
        value of a code attribute (stripped, "" if absent). Only the items of a coded-concept sequence inside
        a dummied one depend on their values: a standard code keeps its code, any other becomes a dummy."""
        if self.mode != CONCEPT:
            return self
        code = value_of(CODE_VALUE) or value_of(LONG_CODE_VALUE) or value_of(URN_CODE_VALUE)
        meaning = standard_meaning(value_of(CODING_SCHEME), code) or ""
        scope = self._items.get(meaning)
        if scope is None:
            if len(self._items) > 1024:
                self._items.clear()
            mode = KNOWN_CODE if meaning else DUMMIED
            scope = self._items[meaning] = Scope(self.options, self.family, self.path, mode, meaning)
        return scope
