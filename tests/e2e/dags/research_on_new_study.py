"""A downstream "research" DAG, for the end-to-end tests only: scheduled on the relay's GCS asset.

Each run starts when send_gcs delivered a de-identified study; its task returns the pseudonymous Study Instance
UIDs it was told about (the asset event's extra), which tests/e2e/test_operator_view.py compares with GCS.
"""

from datetime import datetime

from airflow.sdk import DAG, task

from dicom_relay.airflow.assets import DEIDENTIFIED_STUDY_IN_GCS

with DAG(
    dag_id="research_on_new_study",
    schedule=[DEIDENTIFIED_STUDY_IN_GCS],
    start_date=datetime(2024, 1, 1),
    catchup=False,
    is_paused_upon_creation=False,
    tags=["dicom-relay-tests"],
):

    @task
    def new_studies(triggering_asset_events=None) -> list[dict]:
        return [
            {"batch_id": e.extra.get("batch_id"), "study_instance_uids": e.extra.get("study_instance_uids"),
             "new_instances": e.extra.get("new_instances")}
            for events in (triggering_asset_events or {}).values() for e in events
        ]

    new_studies()
