"""How the output says what was done to it: CID 7050 De-identification Method codes and free text.

The codes are those of PS3.16 CID 7050 in the DCM coding scheme, taken from pydicom's code dictionary so
the meanings are the standard's own. Only the profile and the options that were actually applied are listed;
Clean Pixel Data (113101) is added per instance, only to instances whose pixels were cleaned and proved
(:func:`mark_clean_pixels`, called by the engine after a verified pixel cleaning).
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes

from dicom_relay.deid.options import DeidOptions

DCM = codes.DCM
BASIC = DCM.BasicApplicationConfidentialityProfile  # 113100
OPTION_CODES = {
    "clean_graphics": DCM.CleanGraphicsOption,  # 113103
    "clean_structured_content": DCM.CleanStructuredContentOption,  # 113104
    "clean_descriptors": DCM.CleanDescriptorsOption,  # 113105
    "retain_full_dates": DCM.RetainLongitudinalTemporalInformationFullDatesOption,  # 113106
    "retain_modified_dates": DCM.RetainLongitudinalTemporalInformationModifiedDatesOption,  # 113107
    "retain_patient_characteristics": DCM.RetainPatientCharacteristicsOption,  # 113108
    "retain_device_identity": DCM.RetainDeviceIdentityOption,  # 113109
    "retain_uids": DCM.RetainUidsOption,  # 113110
    "retain_safe_private": DCM.RetainSafePrivateOption,  # 113111
    "retain_institution_identity": DCM.RetainInstitutionIdentityOption,  # 113112
}
CLEAN_PIXEL = DCM.CleanPixelDataOption  # 113101
METHOD_PREFIX = "dicom-relay PS3.15 E.1 Basic Profile"


def applied_codes(options: DeidOptions) -> list:
    """The CID 7050 codes of exactly the profile and options applied, basic profile first."""
    enabled = set(options.enabled_table_options())
    return [BASIC] + [code for name, code in OPTION_CODES.items() if name in enabled]


def method_code_sequence(options: DeidOptions) -> Sequence:
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
