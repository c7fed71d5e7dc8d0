"""process_study: one run per claimed inbox folder (a batch).

import -> get_identifiers -> replace_identifiers -> send_orthanc -> send_gcs -> cleanup
  -> held_back -> review -> apply_review -> start_release_run       (only when files were held back)

send_orthanc / send_gcs update the Assets in dicom_relay.airflow.assets (a de-identified study arrived).
review is a human-in-the-loop task (Required Actions): release / discard / keep held; no answer by
RELAY_REVIEW_TIMEOUT_SECONDS keeps the files held.

Started by watch_inbox with the run id ``batch__<batch_id>``, or by hand:
    airflow dags trigger process_study --conf '{"batch_id": "..."}'
The params deidentify / send_orthanc / send_gcs override DEIDENTIFY_RESTFUL / SEND_TO_ORTHANC / SEND_TO_GOOGLE;
pixel_policy may make RELAY_PIXEL_POLICY stricter (never weaker); deidentify and deid_options
may only make de-identification stricter unless RELAY_ALLOW_UNSAFE_OVERRIDES=true
(dicom_relay.overrides): a weaker run fails at import and sends nothing.
"""

from datetime import datetime, timedelta

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import DAG, Param, chain, task

from dicom_relay import review
from dicom_relay.airflow.assets import OUTLETS
from dicom_relay.airflow.operators import start_process_study_runs
from dicom_relay.airflow.tasks import apply_review_in_task, held_back_in_task, record_task_failure, run_step_in_task
from dicom_relay.config import Settings
from dicom_relay.pipeline import STEPS

defaults = Settings.from_env()

with DAG(
    dag_id="process_study",
    description="De-identify one claimed inbox folder and deliver it to Orthanc and GCS",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=8,
    tags=["dicom-relay"],
    params={
        "batch_id": Param("", type="string", description="The batch to process (see dicom-relay status)"),
        "deidentify": Param(defaults.deidentify, type="boolean", description="De-identify (DEIDENTIFY_RESTFUL)"),
        "send_orthanc": Param(defaults.send_orthanc, type="boolean", description="Send to Orthanc (SEND_TO_ORTHANC)"),
        "send_gcs": Param(defaults.send_gcs, type="boolean", description="Send to GCS (SEND_TO_GOOGLE)"),
        "deid_options": Param({}, type="object", description="PS3.15 profile options, see docs/DEIDENTIFICATION.md"),
        "pixel_policy": Param(
            "", type="string", enum=["", "clean", "all-text", "hold"],
            description="Burned-in text: empty = the deployment's RELAY_PIXEL_POLICY; only a stricter one is "
                        "accepted (clean < all-text < hold), a weaker one fails the run",
        ),
    },
    default_args={
        "retries": defaults.task_retries,
        "retry_delay": timedelta(seconds=defaults.task_retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(seconds=defaults.task_timeout_seconds),
        "on_failure_callback": record_task_failure,
    },
) as dag:
    # One task per pipeline step, in the pipeline's order; each runs dicom_relay.pipeline.STEPS[task_id].
    steps = [task(task_id=name, outlets=[OUTLETS[name]] if name in OUTLETS else [])(run_step_in_task)(name)
             for name in STEPS]
    # Nothing held back: held_back returns None and every task after it is skipped.
    held_back = task.short_circuit(task_id="held_back")(held_back_in_task)()
    ask = HITLOperator(
        task_id="review",
        subject="Held-back files of batch {{ params.batch_id }}: release, discard or keep held?",
        body="{{ ti.xcom_pull(task_ids='held_back')['body'] }}",
        options=list(review.OPTIONS),
        defaults=[review.KEEP_HELD],
        response_timeout=timedelta(seconds=defaults.review_timeout_seconds),
        retries=0,
    )
    # all_done: a review that ended without an answer (timed out) still records "kept held".
    answer = task(task_id="apply_review", trigger_rule="all_done", retries=0)(apply_review_in_task)(ask.output)
    release_run = start_process_study_runs("start_release_run", answer)
    chain(*steps, held_back, ask)
