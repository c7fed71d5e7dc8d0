"""Run a pipeline step inside an Airflow task: settings from the environment, options from the run's params.

Transient failures (a destination down) are raised as they are, so Airflow's retries (with exponential backoff)
apply. Permanent failures raise ``AirflowFailException``: retrying cannot help, and a person is told why through
the batch's errors.
"""

from __future__ import annotations

from typing import Any, Callable

from airflow.sdk.exceptions import AirflowFailException

from dicom_relay import pipeline
from dicom_relay.config import Settings
from dicom_relay.errors import PermanentError

STEPS: dict[str, Callable[..., dict]] = {
    "import": pipeline.import_batch,
    "get_identifiers": pipeline.get_identifiers,
    "replace_identifiers": pipeline.replace_identifiers,
    "send_orthanc": pipeline.send_orthanc,
    "send_gcs": pipeline.send_gcs,
    "cleanup": pipeline.cleanup,
}


def run_step(name: str, context: dict[str, Any]) -> dict:
    params = dict(context["params"])
    batch_id = params.get("batch_id")
    if not batch_id:
        raise AirflowFailException("the run has no batch_id param; trigger with --conf '{\"batch_id\": ...}'")
    settings = Settings.from_env()
    options = pipeline.RunOptions.resolve(settings, params)
    kwargs = {"run_id": context["run_id"]} if name == "import" else {}
    try:
        return STEPS[name](batch_id, settings, options, **kwargs)
    except PermanentError as exc:
        raise AirflowFailException(str(exc)) from None


def claim_folders() -> list[dict[str, Any]]:
    return pipeline.claim_finished_folders(Settings.from_env())


def mark_dispatched(runs: list[dict[str, Any]]) -> int:
    return pipeline.mark_dispatched(Settings.from_env(), [r["conf"]["batch_id"] for r in runs])
