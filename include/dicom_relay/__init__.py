"""dicom-relay: de-identify incoming DICOM studies and deliver them to Orthanc and Google Cloud Storage.

The library is usable without Airflow; the Airflow glue lives in ``dicom_relay.airflow``.
"""

__version__ = "0.1.0"
