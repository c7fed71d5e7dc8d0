"""Errors of the destinations (Orthanc, GCS), sorted into the relay's transient / permanent families.

Messages name the destination by role and files by basename; de-identified files are named by their new
SOP Instance UID, which is not an identifier of the patient.
"""

from dicom_relay.errors import PermanentError, TransientError


class DestinationUnavailable(TransientError):
    """The destination cannot be reached or did not answer in time (refused, reset, timed out, 5xx)."""


class DestinationRejected(PermanentError):
    """The destination answered but refused the request (bad credentials, missing bucket, bad request)."""


class DestinationConflict(PermanentError):
    """The destination already holds different content under the same name; it is never overwritten."""
