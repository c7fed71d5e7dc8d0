"""A deferrable trigger that claims finished, quiet inbox folders and fires when claims await their run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from dicom_relay import inbox


class InboxTrigger(BaseTrigger):
    """Polls the inbox without holding a worker slot; claims what is finished and quiet; fires once, with no folder
    names in the event.

    The claim (``inbox.claim``: claim file, then an atomic rename into the work area) happens here, at the poll
    that first sees the folder quiet, rather than in a task the scheduler starts seconds later: detection is then
    at most ``stable_seconds`` + one poll after the folder was last written (its rename included). A claim is
    safe to attempt twice (two triggerers during a hand-over): the second rename finds nothing and gives up.
    ``watch_inbox``'s next task records the batches and requests their runs; a crash between claim and run
    request is what ``inbox.undispatched`` already covers.

    The filesystem work runs in a thread so the triggerer's event loop is never blocked. The event ends the
    waiting task where it is, in the triggerer (``TaskSuccessEvent``: no worker process is started to resume it,
    which took about a second of the dispatch), with the count as its XCom ``return_value``; it carries only a
    count: folder names may be PHI and trigger events are stored in Airflow's database.

    The event does not carry the run requests themselves for ``start_runs`` to map over: Airflow records no
    mapping length for an XCom pushed by a trigger event, so a task mapped over it never runs (tried: every
    run then waited for the next cycle of watch_inbox). ``claim_folders``, a task, returns them.

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
        """Claim every finished quiet folder; return how much work waits now (a count, never names)."""
        inbox_dir, batches_dir = Path(self.inbox_dir), Path(self.batches_dir)
        for name in inbox.finished_folders(inbox_dir, self.stable_seconds):
            inbox.claim(inbox_dir, batches_dir, name)
        return inbox.waiting_work(inbox_dir, batches_dir, self.stable_seconds)

    def next_poll(self) -> float:
        """Seconds until the next poll: ``poll_seconds``, or sooner when a finished folder turns quiet sooner."""
        quiet_in = inbox.seconds_until_quiet(Path(self.inbox_dir), self.stable_seconds)
        return max(0.05, min(self.poll_seconds, quiet_in if quiet_in is not None else self.poll_seconds))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until work waits (or the deadline passes); end the waiting task with the count of waiting work."""
        while True:
            waiting = await asyncio.to_thread(self.waiting)
            if waiting or (self.deadline is not None and time.time() >= self.deadline):
                yield TaskSuccessEvent(xcoms={"return_value": waiting})
                return
            await asyncio.sleep(await asyncio.to_thread(self.next_poll))
