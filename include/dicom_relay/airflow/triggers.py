"""A deferrable trigger that fires when the inbox has work: a finished, quiet folder, or a claim awaiting its run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent

from dicom_relay import inbox


class InboxTrigger(BaseTrigger):
    """Polls the inbox without holding a worker slot; fires once, with no folder names in the event.

    The filesystem scan runs in a thread so the triggerer's event loop is never blocked. The event carries
    only a count: folder names may be PHI and trigger events are stored in Airflow's database.
    """

    def __init__(self, inbox_dir: str, batches_dir: str, stable_seconds: float = 2.0, poll_seconds: float = 2.0):
        super().__init__()
        self.inbox_dir = inbox_dir
        self.batches_dir = batches_dir
        self.stable_seconds = stable_seconds
        self.poll_seconds = poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "dicom_relay.airflow.triggers.InboxTrigger",
            {
                "inbox_dir": self.inbox_dir,
                "batches_dir": self.batches_dir,
                "stable_seconds": self.stable_seconds,
                "poll_seconds": self.poll_seconds,
            },
        )

    def waiting(self) -> int:
        """How much work waits now (a count, never names)."""
        return inbox.waiting_work(Path(self.inbox_dir), Path(self.batches_dir), self.stable_seconds)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            waiting = await asyncio.to_thread(self.waiting)
            if waiting:
                yield TriggerEvent({"waiting": waiting})
                return
            await asyncio.sleep(self.poll_seconds)
