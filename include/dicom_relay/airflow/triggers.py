"""A deferrable trigger that claims finished, quiet inbox folders and fires when claims await their run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from dicom_relay import inbox


class InboxTrigger(BaseTrigger):
    """Polls the inbox without holding a worker slot; claims what is finished and quiet; fires once with the runs
    to request, which name batches, never folders.

    The claim (``inbox.claim``: claim file, then an atomic rename into the work area) happens here, at the poll
    that first sees the folder quiet, rather than in a task the scheduler starts seconds later: detection is then
    at most ``stable_seconds`` + one poll after the folder was last written (its rename included). A claim is
    safe to attempt twice (two triggerers during a hand-over): the second rename finds nothing and gives up.

    The event ends the waiting task where it is, in the triggerer (``TaskSuccessEvent``: no worker process is
    started to resume it, which took about a second of the dispatch). Its XCom ``return_value`` is the list of run
    requests (``inbox.run_request``: run id and conf, from the batch id) for every claim still waiting for its run,
    so that ``start_runs`` follows directly; the batches are recorded in the status table beside it
    (``claim_folders``). Batch ids only: folder names may be PHI and trigger events are stored in Airflow's
    database. A crash between claim and run request is what ``inbox.undispatched`` already covers: the next poll
    fires at once with the same requests, and a run requested twice is skipped.

    The filesystem work runs in a thread so the triggerer's event loop is never blocked.

    ``deadline`` (seconds since the epoch, or None): when the inbox stays empty until then, the trigger fires with
    no request, so the waiting task ends well within its ``execution_timeout`` (which also bounds the deferral) and
    the continuous DAG simply starts its next run. An absolute time survives a triggerer restart. It also fires with
    no request when only other work waits (an entry to refuse, a claim a crash interrupted): ``claim_folders``
    does it.
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

    def poll(self) -> tuple[list[dict[str, Any]], int]:
        """Claim every finished quiet folder; return the run requests of the claims waiting for their run, and how
        much work waits in all (those claims, claims a crash interrupted, entries to refuse): ids and counts only."""
        inbox_dir, batches_dir = Path(self.inbox_dir), Path(self.batches_dir)
        for name in inbox.finished_folders(inbox_dir, self.stable_seconds):
            inbox.claim(inbox_dir, batches_dir, name)
        runs = [inbox.run_request(c.batch_id) for c in inbox.undispatched(batches_dir)]
        return runs, inbox.waiting_work(inbox_dir, batches_dir, self.stable_seconds)

    def next_poll(self) -> float:
        """Seconds until the next poll: ``poll_seconds``, or sooner when a finished folder turns quiet sooner."""
        quiet_in = inbox.seconds_until_quiet(Path(self.inbox_dir), self.stable_seconds)
        return max(0.05, min(self.poll_seconds, quiet_in if quiet_in is not None else self.poll_seconds))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until work waits (or the deadline passes); end the waiting task with the run requests."""
        while True:
            runs, waiting = await asyncio.to_thread(self.poll)
            if waiting or (self.deadline is not None and time.time() >= self.deadline):
                yield TaskSuccessEvent(xcoms={"return_value": runs})
                return
            await asyncio.sleep(await asyncio.to_thread(self.next_poll))
