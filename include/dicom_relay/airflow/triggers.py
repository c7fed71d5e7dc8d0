"""A deferrable trigger that fires when the inbox has work: a finished, quiet folder, or a claim awaiting its run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent

from dicom_relay import inbox


class InboxTrigger(BaseTrigger):
    """Polls the inbox without holding a worker slot; fires once, with no folder names in the event.

    The filesystem scan runs in a thread so the triggerer's event loop is never blocked. The event carries
    only a count: folder names may be PHI and trigger events are stored in Airflow's database.

    ``deadline`` (seconds since the epoch, or None): when the inbox stays empty until then, the trigger fires with
    ``{"waiting": 0}``, so the waiting task ends well within its ``execution_timeout`` (which also bounds the
    deferral) and the continuous DAG simply starts its next run. An absolute time survives a triggerer restart.
    """

    def __init__(self, inbox_dir: str, batches_dir: str, stable_seconds: float = 2.0, poll_seconds: float = 2.0,
                 deadline: float | None = None):
        super().__init__()
        self.inbox_dir = inbox_dir
        self.batches_dir = batches_dir
        self.stable_seconds = stable_seconds
        self.poll_seconds = poll_seconds
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "dicom_relay.airflow.triggers.InboxTrigger",
            {
                "inbox_dir": self.inbox_dir,
                "batches_dir": self.batches_dir,
                "stable_seconds": self.stable_seconds,
                "poll_seconds": self.poll_seconds,
                "deadline": self.deadline,
            },
        )

    def waiting(self) -> int:
        """How much work waits now (a count, never names)."""
        return inbox.waiting_work(Path(self.inbox_dir), Path(self.batches_dir), self.stable_seconds)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            waiting = await asyncio.to_thread(self.waiting)
            if waiting or (self.deadline is not None and time.time() >= self.deadline):
                yield TriggerEvent({"waiting": waiting})
                return
            await asyncio.sleep(self.poll_seconds)
