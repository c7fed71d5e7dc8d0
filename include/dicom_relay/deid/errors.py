"""Errors of the de-identification engine. Messages name attributes by keyword and files by name, never a value."""

from dicom_relay.errors import PermanentError


class DeidError(PermanentError):
    """An instance could not be de-identified safely (unreadable, unmapped accession, bad option)."""
