"""De-identification of DICOM instances (PS3.15 Annex E Basic Profile and options). pydicom only, no I/O policy.

Public contract (docs/ARCHITECTURE.md, docs/DEIDENTIFICATION.md)::

    from dicom_relay.deid import DeidOptions, PatientIdentity, Deidentifier, DeidResult, remap_uid, find_leaks, Leak
"""

from dicom_relay.deid.engine import Deidentifier, DeidResult, PatientIdentity
from dicom_relay.deid.errors import DeidError
from dicom_relay.deid.options import DeidOptions
from dicom_relay.deid.table import provenance
from dicom_relay.deid.uids import remap_uid
from dicom_relay.deid.verify import Leak, LeakCheck, find_leaks, identifying_values

__all__ = [
    "DeidError",
    "DeidOptions",
    "DeidResult",
    "Deidentifier",
    "Leak",
    "LeakCheck",
    "PatientIdentity",
    "find_leaks",
    "identifying_values",
    "provenance",
    "remap_uid",
]
