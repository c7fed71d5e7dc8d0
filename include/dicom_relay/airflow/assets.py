"""The Airflow Assets the relay updates, for downstream DAGs to be scheduled on.

``send_orthanc`` and ``send_gcs`` declare them as outlets: each successful task emits one asset event whose extra
names what it delivered, by pseudonymous identifiers only::

    {"batch_id": "...", "destination": "gcs", "study_instance_uids": ["2.25...."], "patient_pseudonyms": [...],
     "instances": 12, "new_instances": 12}

``study_instance_uids`` are the de-identified Study Instance UIDs (as stored in Orthanc and GCS). A rerun that
delivers nothing new still emits an event, with ``new_instances`` 0. A research DAG::

    from dicom_relay.airflow.assets import DEIDENTIFIED_STUDY_IN_GCS
    with DAG("research", schedule=[DEIDENTIFIED_STUDY_IN_GCS]): ...
"""

from __future__ import annotations

from airflow.sdk import Asset

DEIDENTIFIED_STUDY_IN_ORTHANC = Asset(name="dicom_relay_deidentified_study_orthanc",
                                      uri="dicom-relay://orthanc/deidentified-study", group="dicom-relay")
DEIDENTIFIED_STUDY_IN_GCS = Asset(name="dicom_relay_deidentified_study_gcs",
                                  uri="dicom-relay://gcs/deidentified-study", group="dicom-relay")

#: The asset each delivering task updates, by task id.
OUTLETS = {"send_orthanc": DEIDENTIFIED_STUDY_IN_ORTHANC, "send_gcs": DEIDENTIFIED_STUDY_IN_GCS}


def event_extra(summary: dict) -> dict:
    """The asset event's extra from a delivering step's summary: pseudonymous identifiers and counts only."""
    new = summary.get("stored", summary.get("uploaded", 0))
    return {
        "batch_id": summary.get("batch_id"),
        "destination": summary.get("destination"),
        "study_instance_uids": list(summary.get("studies") or []),
        "patient_pseudonyms": list(summary.get("patient_pseudonyms") or []),
        "instances": summary.get("verified", 0),
        "new_instances": new or 0,
    }
