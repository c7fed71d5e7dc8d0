"""How the output says what was done to it: CID 7050 De-identification Method codes and free text.

The codes are those of PS3.16 CID 7050 in the DCM coding scheme, with the meanings of pydicom's code dictionary
(the standard's own; a unit test compares them). Only the profile and the options that were actually applied are listed;
Clean Pixel Data (113101) is added per instance, only to instances whose pixels were cleaned and proved
(:func:`mark_clean_pixels`, called by the engine after a verified pixel cleaning).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from dicom_relay.deid.options import DeidOptions

if TYPE_CHECKING:  # pydicom is imported where a dataset is built: the raw path encodes the codes itself
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence


class Code(NamedTuple):
    """A coded concept: what an item of a code sequence holds (as :class:`pydicom.sr.coding.Code` names it)."""

    value: str
    scheme_designator: str
    meaning: str


# PS3.16 CID 7050, written out here rather than looked up in ``pydicom.sr.codedict`` on every start: importing
# the code dictionary costs about 0.06 CPU-s, paid by every ``dicom-relay deidentify`` and every worker.
# tests/unit/deid/test_codes.py checks each value and meaning against pydicom's dictionary (the standard's own).
BASIC = Code("113100", "DCM", "Basic Application Confidentiality Profile")
OPTION_CODES = {
    "clean_graphics": Code("113103", "DCM", "Clean Graphics Option"),
    "clean_structured_content": Code("113104", "DCM", "Clean Structured Content Option"),
    "clean_descriptors": Code("113105", "DCM", "Clean Descriptors Option"),
    "retain_full_dates": Code("113106", "DCM", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_modified_dates": Code("113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": Code("113108", "DCM", "Retain Patient Characteristics Option"),
    "retain_device_identity": Code("113109", "DCM", "Retain Device Identity Option"),
    "retain_uids": Code("113110", "DCM", "Retain UIDs Option"),
    "retain_safe_private": Code("113111", "DCM", "Retain Safe Private Option"),
    "retain_institution_identity": Code("113112", "DCM", "Retain Institution Identity Option"),
}
#: The pydicom code dictionary's name of each code above (for the check against it).
CODEDICT_NAMES = {
    "113100": "BasicApplicationConfidentialityProfile", "113101": "CleanPixelDataOption",
    "113103": "CleanGraphicsOption", "113104": "CleanStructuredContentOption", "113105": "CleanDescriptorsOption",
    "113106": "RetainLongitudinalTemporalInformationFullDatesOption",
    "113107": "RetainLongitudinalTemporalInformationModifiedDatesOption",
    "113108": "RetainPatientCharacteristicsOption", "113109": "RetainDeviceIdentityOption",
    "113110": "RetainUidsOption", "113111": "RetainSafePrivateOption", "113112": "RetainInstitutionIdentityOption",
}
CLEAN_PIXEL = Code("113101", "DCM", "Clean Pixel Data Option")
METHOD_PREFIX = "dicom-relay PS3.15 E.1 Basic Profile"


def applied_codes(options: DeidOptions) -> list:
    """The CID 7050 codes of exactly the profile and options applied, basic profile first."""
    enabled = set(options.enabled_table_options())
    return [BASIC] + [code for name, code in OPTION_CODES.items() if name in enabled]


def method_code_sequence(options: DeidOptions) -> Sequence:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    items = []
    for code in applied_codes(options):
        item = Dataset()
        item.CodeValue = code.value
        item.CodingSchemeDesignator = code.scheme_designator
        item.CodeMeaning = code.meaning
        items.append(item)
    return Sequence(items)


def method_text(options: DeidOptions) -> list[str]:
    """DeidentificationMethod (LO, 1-n): one short value per profile/option (each <= 64 characters)."""
    return [METHOD_PREFIX] + [OPTION_CODES[n].meaning[:64] for n in OPTION_CODES if n in set(options.enabled_table_options())]


def temporal_marker(options: DeidOptions) -> str:
    """LongitudinalTemporalInformationModified (0028,0303)."""
    return {"modified": "MODIFIED", "full": "UNMODIFIED", "remove": "REMOVED"}[options.dates]


def mark_clean_pixels(ds: Dataset) -> None:
    """Mark a de-identified instance whose pixels were cleaned and proved: BurnedInAnnotation NO (no burned-in
    text that identifies the patient is left), Clean Pixel Data Option (113101) added to
    DeidentificationMethodCodeSequence and its meaning to DeidentificationMethod (once)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds.BurnedInAnnotation = "NO"
    seq = ds.get("DeidentificationMethodCodeSequence")
    if seq is None:
        seq = ds.DeidentificationMethodCodeSequence = Sequence()
    if not any(item.get("CodeValue") == CLEAN_PIXEL.value for item in seq):
        item = Dataset()
        item.CodeValue = CLEAN_PIXEL.value
        item.CodingSchemeDesignator = CLEAN_PIXEL.scheme_designator
        item.CodeMeaning = CLEAN_PIXEL.meaning
        seq.append(item)
    method = ds.get("DeidentificationMethod")
    values = [] if method in (None, "") else ([method] if isinstance(method, str) else list(method))
    if CLEAN_PIXEL.meaning[:64] not in values:
        ds.DeidentificationMethod = values + [CLEAN_PIXEL.meaning[:64]]
