"""Which instances have their pixels scanned for burned-in text, and how strictly (the pixel policy).

Policies, from weakest to strictest:

``clean`` (default)
    Text is found (rules + OCR); lines that match one of the instance's own identifying values, or that read
    as a date, are blanked; the cleaned frames are read again and the instance is held back if any text still
    matches an identifying value.
``all-text``
    Every line of text found is blanked (rules + OCR), and the instance is held back if the second reading
    still finds any text at all.
``hold``
    Nothing is cleaned: every instance that would be scanned is held back (the behaviour before pixel
    cleaning existed).

A run may ask for a stricter policy than the deployment's (``RELAY_PIXEL_POLICY``), never a weaker one.

Scanned by default (:func:`scan_reason`): ultrasound; secondary capture (SC, OT, the Secondary Capture SOP
classes); angiography and fluoroscopy (XA, RF); BurnedInAnnotation YES; ImageType with SECONDARY or a word
that names a screen capture. CT and MR primary images (and every other modality) are not read unless
``scan_all`` is set: reading them costs time and their pixels rarely carry text, while a screen save of them
says so in ImageType or comes as secondary capture.
"""

from __future__ import annotations

from dicom_relay.deid.dictionary import uids
from dicom_relay.deid.errors import DeidError

CLEAN, ALL_TEXT, HOLD = "clean", "all-text", "hold"
#: Weakest first: the index is the strictness.
POLICIES = (CLEAN, ALL_TEXT, HOLD)
DEFAULT = CLEAN

SCANNED_MODALITIES = frozenset({"US", "IVUS", "SC", "OT", "XA", "RF", "ES", "XC", "GM", "SM", "DOC"})
SECONDARY_CAPTURE = frozenset(uid for uid, (name, _) in uids().items() if "Secondary Capture" in name)
#: ImageType values (any position) that say the picture is a capture of a screen or a derived picture.
#: Dose screens come as DERIVED\SECONDARY\SCREEN SAVE, DOSE_INFO or CSA REPORT depending on the vendor, and
#: show the patient's name.
SCREEN_WORDS = frozenset({"SECONDARY", "SCREEN", "SCREENSHOT", "SCREEN SAVE", "SCREENSAVE", "SAVE", "CAPTURE",
                          "DOSE_INFO", "DOSE INFO", "CSA REPORT", "REPORT"})


def check(policy: str) -> str:
    """``policy`` normalised (case, spaces, underscore for hyphen), or a DeidError naming the valid ones."""
    p = str(policy or "").strip().lower().replace("_", "-")
    if p not in POLICIES:
        raise DeidError(f"pixel policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    return p


def strictness(policy: str) -> int:
    return POLICIES.index(check(policy))


def at_least(deployment: str, requested: str | None) -> str:
    """The policy of a run: ``requested`` if it is at least as strict as ``deployment``; None keeps it.

    A weaker request is an error (a run must not relax what the deployment promises).
    """
    deployment = check(deployment)
    if requested is None or str(requested).strip() == "":
        return deployment
    requested = check(requested)
    if strictness(requested) < strictness(deployment):
        raise DeidError(
            f"pixel policy {requested!r} is weaker than the deployment's {deployment!r}; a run may only make it "
            f"stricter ({' < '.join(POLICIES)})"
        )
    return requested


def scan_reason(modality: str, sop_class: str, burned_in: str, image_type: str, *, scan_all: bool = False) -> str | None:
    """Why an instance's pixels are read, or None. Arguments are the raw header strings ('' when absent);
    ``image_type`` is ImageType with its values joined by backslashes. The reason holds no PHI."""
    modality = (modality or "").strip().upper()
    if (burned_in or "").strip().upper() == "YES":
        return "BurnedInAnnotation is YES"
    if sop_class.strip() in SECONDARY_CAPTURE:
        return "secondary capture SOP class"
    if modality in SCANNED_MODALITIES:
        return f"modality {modality}"
    words = {w.strip().upper() for w in (image_type or "").split("\\")}
    if words & SCREEN_WORDS:
        return "ImageType says secondary or screen capture"
    if scan_all:
        return "every image is read (scan_all)"
    return None
