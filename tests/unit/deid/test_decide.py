"""The decision function on its own: hand-written expectations for the places the walks cannot show alone."""

from __future__ import annotations

from pydicom.datadict import tag_for_keyword
from pydicom.uid import CTImageStorage

from dicom_relay.deid import DeidOptions
from dicom_relay.deid.decide import (
    CLEAN, CONCEPT, DATE, DESCEND, DUMMIED, DUMMY, EMPTY, KEEP, KNOWN_CODE, NORMAL, PSEUDONYM, REMOVE, UIDS, Action, Scope,
    decide, standard_meaning,
)

T = tag_for_keyword
CONTENT = (T("ContentSequence"),)
DEFAULT = DeidOptions()


def test_leaves_of_a_dummied_sequence() -> None:
    d = lambda kw, vr, o=DEFAULT: decide(T(kw), vr, o, CTImageStorage, CONTENT, DUMMIED)  # noqa: E731
    assert d("TextValue", "UT") == Action(DUMMY, "ANONYMIZED")
    assert d("CodeMeaning", "LO") == Action(DUMMY, "ANONYMIZED")
    assert d("RetrieveURL", "UR") == Action(DUMMY, "urn:anonymized")
    assert d("ValueType", "CS") == Action(KEEP)  # coded strings: no free text
    assert d("NumericValue", "DS") == Action(KEEP)
    assert d("ReferencedSOPClassUID", "UI") == Action(UIDS)  # well-known UIDs stay (the mapper keeps them)
    assert d("PatientName", "PN") == Action(PSEUDONYM)
    # A date the table names keeps its row's action (Date: C under Modified Dates, shifted) ...
    assert d("Date", "DA") == Action(DATE, Action(DUMMY, "19000101"))  # a value that does not parse: a dummy
    assert decide(T("Date"), "DA", DEFAULT, CTImageStorage, (), NORMAL) == Action(DATE, Action(EMPTY))
    # ... one it does not name follows the date option, with a dummy where the option would remove it.
    unnamed_da = T("ExpiryDate")
    assert decide(unnamed_da, "DA", DeidOptions(dates="remove"), CTImageStorage, CONTENT, DUMMIED) == Action(DUMMY, "19000101")
    assert decide(unnamed_da, "DA", DeidOptions(dates="remove"), CTImageStorage, (), NORMAL) == Action(REMOVE)
    assert decide(unnamed_da, "DA", DeidOptions(dates="full"), CTImageStorage, CONTENT, DUMMIED) == Action(KEEP)
    assert decide(unnamed_da, "DA", DEFAULT, CTImageStorage, CONTENT, DUMMIED) == Action(DATE, Action(DUMMY, "19000101"))


def test_sequences_put_their_items_in_a_mode() -> None:
    assert decide(T("ContentSequence"), "SQ", DEFAULT, CTImageStorage, (), NORMAL) == Action(DESCEND, DUMMIED)
    assert decide(T("ContentSequence"), "SQ", DeidOptions(clean_structured_content=True), CTImageStorage, (),
                  NORMAL) == Action(DESCEND, 1)
    assert decide(T("ConceptNameCodeSequence"), "SQ", DEFAULT, CTImageStorage, CONTENT, DUMMIED) == Action(DESCEND, CONCEPT)
    assert decide(T("ConceptNameCodeSequence"), "SQ", DEFAULT, CTImageStorage, (), NORMAL) == Action(DESCEND, NORMAL)
    # An identification code sequence inside a dummied one: dummy codes, not concept codes.
    assert decide(T("PersonIdentificationCodeSequence"), "SQ", DEFAULT, CTImageStorage, CONTENT, DUMMIED) == Action(
        DESCEND, DUMMIED)


def test_concept_items_keep_standard_codes_only() -> None:
    scope = Scope(DEFAULT, CTImageStorage).action(T("ContentSequence"), "SQ").arg
    concept = scope.action(T("ConceptNameCodeSequence"), "SQ").arg
    assert concept.mode == CONCEPT
    known = concept.item({T("CodeValue"): "121071", T("CodingSchemeDesignator"): "DCM"}.get)
    assert known.mode == KNOWN_CODE
    assert known.action(T("CodeValue"), "SH") == Action(KEEP)
    assert known.action(T("CodingSchemeDesignator"), "SH") == Action(KEEP)
    assert known.action(T("CodeMeaning"), "LO") == Action(DUMMY, "Finding")  # the dictionary's meaning
    local = concept.item(lambda tag: {T("CodeValue"): "1234", T("CodingSchemeDesignator"): "99LOCAL"}.get(tag, ""))
    assert local.mode == DUMMIED
    assert local.action(T("CodeValue"), "SH") == Action(DUMMY, "ANONYMIZED")
    assert scope.item(lambda tag: "") is scope  # other sequences: one scope for every item
    assert standard_meaning("SRT", "T-D0050")  # SNOMED RT through its SNOMED CT code
    assert standard_meaning("99LOCAL", "T-D0050") is None


def test_c_on_text_is_cleaning_with_a_fallback() -> None:
    tz = decide(T("TimezoneOffsetFromUTC"), "SH", DEFAULT, CTImageStorage, (), NORMAL)
    assert tz == Action(CLEAN, Action(REMOVE))  # basic X: an offset that is not one is removed
    assert decide(T("TimezoneOffsetFromUTC"), "SH", DeidOptions(dates="full"), CTImageStorage, (), NORMAL) == Action(KEEP)
    desc = decide(T("StudyDescription"), "LO", DeidOptions(clean_descriptors=True), CTImageStorage, (), NORMAL)
    assert desc.op == CLEAN
    blob = decide(T("MakerNote"), "OB", DeidOptions(clean_descriptors=True), CTImageStorage, (), NORMAL)
    assert blob == Action(REMOVE)
