"""Run a pipeline step inside an Airflow task: endpoints and secrets from the Airflow Connections
(:mod:`dicom_relay.airflow.connections`), the rest of the settings from the environment, options from the run's
params.

Transient failures (a destination down) are raised as they are, so Airflow's retries (with exponential backoff)
apply. Permanent failures raise ``AirflowFailException``: retrying cannot help, and a person is told why through
the batch's errors.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from airflow.sdk.exceptions import AirflowFailException

from dicom_relay import operations, pipeline, review
from dicom_relay.airflow import connections
from dicom_relay.config import ConfigError, Settings
from dicom_relay.errors import PermanentError
from dicom_relay.status import StatusStore

STEPS = pipeline.STEPS
log = logging.getLogger(__name__)

_DB = connections.RelayDbHook
#: The Connections a process_study step reads: those it uses, so that a task holds no secret it does not need and
#: makes no request through the execution API it does not need (each Connection read is one; with the four read in
#: every task they were a third of a task's time outside its own work). ``import`` reads all of them (the
#: default): a deployment that lacks one fails at a run's first task, before any work, as the steps' own secret
#: check does (``pipeline.step``).
STEP_CONNECTIONS: dict[str, tuple[type, ...]] = {
    "get_identifiers": (_DB, connections.IdentifierServiceHook),
    "replace_identifiers": (_DB,),
    "send_orthanc": (_DB, connections.OrthancHook),
    "send_gcs": (_DB, connections.RelayGcsHook),
    "cleanup": (_DB,),
}


def run_step(name: str, context: dict[str, Any]) -> dict:
    params = dict(context["params"])
    batch_id = params.get("batch_id")
    if not batch_id:
        raise AirflowFailException("the run has no batch_id param; trigger with --conf '{\"batch_id\": ...}'")
    kwargs = {"run_id": context["run_id"]} if name == "import" else {}
    ti = context.get("ti") or context.get("task_instance")
    if getattr(ti, "try_number", None) is not None:
        kwargs["attempt"] = int(ti.try_number)
    try:
        settings = connections.task_settings(STEP_CONNECTIONS.get(name, connections.HOOKS))
        return STEPS[name](batch_id, settings, params=params, **kwargs)
    except (PermanentError, ConfigError) as exc:
        # A setting or secret that is wrong stays wrong on retry: fail at once with the reason (it names the
        # setting, never its value).
        raise AirflowFailException(str(exc)) from None


def run_step_in_task(name: str) -> dict:
    """The callable of every process_study task: run the pipeline step ``name`` for this run's batch.

    A delivering step (send_orthanc, send_gcs) also fills the extra of its asset event (see ``assets``).
    """
    from airflow.sdk import get_current_context

    from .assets import OUTLETS, event_extra

    context = get_current_context()
    summary = run_step(name, context)
    if name in OUTLETS:
        context["outlet_events"][OUTLETS[name]].extra = event_extra(summary)
    return summary


# -- review of held-back instances ---------------------------------------------------------------------------------

def _set_run_note(run_id: str, note: str) -> None:
    """Write the run's note through the REST API (the Task SDK cannot): the account in AIRFLOW_URL /
    AIRFLOW_USER / AIRFLOW_PASSWORD needs the User role. Without one, the note is only logged."""
    from dicom_relay.airflow_client import AirflowClient, AirflowClientError

    try:
        client = AirflowClient.from_env()
        response = client.request("PATCH", f"/dags/{operations.PROCESS_DAG}/dagRuns/{run_id}",
                                  json={"note": note}, params={"update_mask": "note"})
        if response.status_code >= 300:
            log.warning("run note not written (HTTP %d): %s", response.status_code, note)
    except (AirflowClientError, OSError, requests.RequestException) as exc:
        log.warning("run note not written (%s): %s", type(exc).__name__, note)


def held_back_in_task() -> dict | None:
    """The held_back task: what the reviewer is shown (counts and reasons by label), or ``None`` (nothing held
    back: the review is skipped). A batch with held-back files gets a run note saying so."""
    from airflow.sdk import get_current_context

    context = get_current_context()
    settings = connections.task_settings()
    found = review.held_back(settings, StatusStore(settings.db_url), context["params"]["batch_id"])
    if found is None:
        return None
    for reason, labels in sorted(found["reasons"].items()):
        log.warning("held back for review: %s: %s", ", ".join(labels), reason)
    _set_run_note(context["run_id"], review.summary_note(found))
    return found


def apply_review_in_task(answer: dict | None) -> list[dict[str, Any]]:
    """The apply_review task: carry out the reviewer's answer; return the process_study run to request (one for
    a release, none otherwise). A review that ended without an answer keeps the files held."""
    from airflow.sdk import get_current_context

    context = get_current_context()
    settings = connections.task_settings()
    store = StatusStore(settings.db_url)
    batch_id = context["params"]["batch_id"]
    chosen = (answer or {}).get("chosen_options") or [review.KEEP_HELD]
    user = (answer or {}).get("responded_by_user") or {}
    by = user.get("name") or user.get("id") or None
    try:
        result = review.apply(settings, store, batch_id, chosen[0], by, (answer or {}).get("responded_at"))
    except operations.OperationError as exc:
        raise AirflowFailException(str(exc)) from None
    log.info("review of batch %s: %s (labels %s)", batch_id, result["note"], ", ".join(result["labels"]))
    runs = []
    if result["rerun"]:
        run_id = operations.release_run_id(batch_id, store.next_requeue_number(batch_id))
        store.record_decision(batch_id, {"decision": "release", "reason": result["note"], "run_id": run_id})
        runs.append({"trigger_run_id": run_id, "conf": {"batch_id": batch_id}})
        result["note"] += f" ({run_id})"
    _set_run_note(context["run_id"], result["note"])
    return runs


def record_task_failure(context: dict[str, Any]) -> None:
    """Last resort (``on_failure_callback``): a task that failed for good without the pipeline recording why
    (killed, timed out, its worker lost) still leaves the batch ERROR with a reason, never silently NEW."""
    batch_id = (context.get("params") or {}).get("batch_id")
    if not batch_id:
        return
    store = StatusStore(connections.status_db_url())
    batch = store.get_batch(batch_id)
    if batch is None or batch.status in ("ERROR", "EMPTY", "DONE", "HELD_BACK"):
        return
    task_id = getattr(context.get("task_instance") or context.get("ti"), "task_id", "task")
    store.add_error(batch_id, task_id, "the task failed in Airflow after its retries (killed, timed out or its "
                    "worker lost); see the task log", transient=True,
                    attempt=getattr(context.get("task_instance") or context.get("ti"), "try_number", None))


def claim_folders() -> list[dict[str, Any]]:
    # Claiming needs the status database only (the inbox and work area are settings of the environment).
    return pipeline.claim_finished_folders(connections.task_settings((_DB,)))


def mark_dispatched(runs: list[dict[str, Any]]) -> int:
    return pipeline.mark_dispatched(Settings.from_env(), [r["conf"]["batch_id"] for r in runs])


# -- rerun_errors -------------------------------------------------------------------------------------------------

def _process_study_run_state(run_id: str) -> str | None:
    """The state of a process_study run, through the Task SDK (tasks may not use the metadata ORM)."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    try:
        state = RuntimeTaskInstance.get_dagrun_state(operations.PROCESS_DAG, run_id)
    except Exception:  # noqa: BLE001 - no such run (or not readable): unknown, the rules treat it so
        return None
    return str(getattr(state, "value", state)) if state is not None else None


def decide_reruns() -> list[dict[str, Any]]:
    """The decide task of rerun_errors: one {batch_id, decision, reason[, run_id]} per batch in ERROR."""
    settings = connections.task_settings()
    decisions = operations.decide_reruns(StatusStore(settings.db_url), run_state=_process_study_run_state)
    return [d.public() for d in decisions]


def reruns_to_request(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return operations.runs_to_request(decisions)
