"""Operators that adapt the pipeline to Airflow."""

from __future__ import annotations

import time
from typing import Any

from airflow.sdk import BaseOperator

from dicom_relay.config import Settings

from .triggers import InboxTrigger


class WaitForInboxOperator(BaseOperator):
    """Succeeds when the inbox has work; otherwise defers to ``InboxTrigger`` (no worker slot while waiting).

    With an ``execution_timeout`` (which Airflow applies to the deferral too), the wait ends with 0 folders after
    nine tenths of it instead of failing: an idle inbox is not an error.
    """

    ui_color = "#d6eaf8"

    def execute(self, context: Any) -> int:
        settings = Settings.from_env()
        trigger = InboxTrigger(
            inbox_dir=str(settings.inbox),
            batches_dir=str(settings.batches_dir),
            stable_seconds=settings.stable_seconds,
            poll_seconds=settings.poll_seconds,
            deadline=time.time() + 0.9 * self.execution_timeout.total_seconds() if self.execution_timeout else None,
        )
        waiting = trigger.waiting()
        if waiting:
            return waiting
        self.defer(trigger=trigger, method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> int:
        # Not called by InboxTrigger (its TaskSuccessEvent ends the task in the triggerer); kept for a trigger
        # serialised by an earlier version that fires a plain {"waiting": n} event during an upgrade.
        return int((event or {}).get("waiting", 0))


def start_process_study_runs(task_id: str, runs):
    """One ``process_study`` run per ``{trigger_run_id, conf}`` in ``runs`` (an XComArg).

    The run ids are deterministic, so asking twice for the same one is *skipped* (HTTP 409), not failed: this is
    what makes "exactly one run per folder" survive restarts of the dispatcher.
    """
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

    return TriggerDagRunOperator.partial(
        task_id=task_id,
        trigger_dag_id="process_study",
        logical_date=None,
        skip_when_already_exists=True,
        wait_for_completion=False,
    ).expand_kwargs(runs)
