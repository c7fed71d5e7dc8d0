"""rerun_errors: every 10 minutes, rerun batches whose latest run failed only for transient reasons.

A batch in ERROR is rerun (run id ``rerun__<batch_id>__<n>``) when its latest run is over, every failure of that run
was transient (a destination or service was down) and it has reruns left (RELAY_MAX_RERUNS, default 3). Otherwise it
is left for a person. The decide task's XCom lists every decision ({batch_id, decision, reason}); each decision is
also recorded on the batch (``dicom-relay status``). See dicom_relay.operations and docs/RUNBOOK.md.
"""

from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from dicom_relay.airflow import tasks
from dicom_relay.airflow.operators import start_process_study_runs
from dicom_relay.config import Settings

defaults = Settings.from_env()

with DAG(
    dag_id="rerun_errors",
    description="Rerun batches in ERROR whose latest failures were all transient (bounded by RELAY_MAX_RERUNS)",
    schedule=timedelta(minutes=10),
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    # A scheduled safety net must not wait for someone to unpause it.
    is_paused_upon_creation=False,
    tags=["dicom-relay"],
    default_args={"execution_timeout": timedelta(seconds=defaults.task_timeout_seconds)},
) as dag:

    @task
    def decide():
        return tasks.decide_reruns()

    @task
    def reruns(decisions):
        return tasks.reruns_to_request(decisions)

    runs = reruns(decide())
    start_process_study_runs("start_reruns", runs)
