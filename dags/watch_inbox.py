"""watch_inbox: wait (deferred, no worker slot) for finished inbox folders; claim each; start one run per batch.

Exactly one process_study run per folder: the folder is claimed by an atomic rename into the work area, the run id
is derived from the batch id (``batch__<batch_id>``), and a second request for the same run id is skipped.
"""

from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from dicom_relay.airflow import tasks
from dicom_relay.airflow.operators import WaitForInboxOperator, start_process_study_runs
from dicom_relay.config import Settings

defaults = Settings.from_env()

with DAG(
    dag_id="watch_inbox",
    description="Claim finished inbox folders and start process_study for each",
    schedule="@continuous",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["dicom-relay"],
    # The wait ends (with nothing to do) before its timeout; see WaitForInboxOperator.
    default_args={"execution_timeout": timedelta(seconds=defaults.task_timeout_seconds)},
) as dag:
    wait = WaitForInboxOperator(task_id="wait_for_folders")

    @task
    def claim_folders():
        return tasks.claim_folders()

    @task(trigger_rule="none_failed")
    def mark_dispatched(runs):
        return tasks.mark_dispatched(runs)

    runs = claim_folders()
    start = start_process_study_runs("start_runs", runs)
    wait >> runs >> start >> mark_dispatched(runs)
