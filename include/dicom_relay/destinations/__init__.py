"""Where de-identified instances go: Orthanc (REST uploads or DICOM C-STORE, verified over REST) and Google Cloud
Storage.

The two destination modules are imported on their own (``dicom_relay.destinations.orthanc``,
``dicom_relay.destinations.gcs``) so that a task that only talks to one does not import the other's client.
"""

from dicom_relay.destinations.errors import DestinationConflict, DestinationRejected, DestinationUnavailable

__all__ = ["DestinationConflict", "DestinationRejected", "DestinationUnavailable"]
