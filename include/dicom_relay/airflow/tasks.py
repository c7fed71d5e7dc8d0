"""Run a pipeline step inside an Airflow task: endpoints and secrets from the Airflow Connections
(:mod:`dicom_relay.airflow.connections`), the rest of the settings from the environment, options from the run's
params.

Transient failures (a destination down) are raised as they are, so Airflow's retries (with exponential backoff)
apply. Permanent failures raise ``AirflowFailException``: retrying cannot help, and a person is told why through
the batch's errors.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from dicom_relay import operations, pipeline
from dicom_relay.airflow import connections
from dicom_relay.config import ConfigError, Settings
from dicom_relay.errors import PermanentError
from dicom_relay.status import StatusStore

STEPS = pipeline.STEPS


def run_step(name: str, context: dict[str, Any]) -> dict:
    params = dict(context["params"])
    batch_id = params.get("batch_id")
    if not batch_id:
        raise AirflowFailException("the run has no batch_id param; trigger with --conf '{\"batch_id\": ...}'")
    kwargs = {"run_id": context["run_id"]} if name == "import" else {}
    try:
        settings = connections.task_settings()
        return STEPS[name](batch_id, settings, params=params, **kwargs)
    except (PermanentError, ConfigError) as exc:
        # A setting or secret that is wrong stays wrong on retry: fail at once with the reason (it names the
        # setting, never its value).
        raise AirflowFailException(str(exc)) from None


def run_step_in_task(name: str) -> dict:
    """The callable of every process_study task: run the pipeline step ``name`` for this run's batch."""
    from airflow.sdk import get_current_context

    return run_step(name, get_current_context())


def record_task_failure(context: dict[str, Any]) -> None:
    """Last resort (``on_failure_callback``): a task that failed for good without the pipeline recording why
    (killed, timed out, its worker lost) still leaves the batch ERROR with a reason, never silently NEW."""
    batch_id = (context.get("params") or {}).get("batch_id")
    if not batch_id:
        return
    store = StatusStore(connections.status_db_url())
    batch = store.get_batch(batch_id)
    if batch is None or batch.status in ("ERROR", "EMPTY", "DONE"):
        return
    task_id = getattr(context.get("task_instance") or context.get("ti"), "task_id", "task")
    store.add_error(batch_id, task_id, "the task failed in Airflow after its retries (killed, timed out or its "
                    "worker lost); see the task log", transient=True)


def claim_folders() -> list[dict[str, Any]]:
    return pipeline.claim_finished_folders(connections.task_settings())


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
