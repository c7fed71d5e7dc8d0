"""The inbox trigger: serialisable, fires on a finished quiet folder or a waiting claim, never names a folder."""

import asyncio
import json

from airflow.triggers.base import TaskSuccessEvent


from dicom_relay import inbox
from dicom_relay.airflow.triggers import InboxTrigger


def make_trigger(tmp_path, stable=0.0):
    (tmp_path / "inbox").mkdir(exist_ok=True)
    return InboxTrigger(str(tmp_path / "inbox"), str(tmp_path / "batches"), stable_seconds=stable, poll_seconds=0.05)


def test_serialize_round_trip(tmp_path):
    trigger = make_trigger(tmp_path)
    classpath, kwargs = trigger.serialize()
    assert classpath == "dicom_relay.airflow.triggers.InboxTrigger"
    json.dumps(kwargs)  # stored in Airflow's database: must be JSON
    again = InboxTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)


async def test_waits_while_only_tmp_folders_then_fires_without_names(tmp_path):
    trigger = make_trigger(tmp_path)
    (tmp_path / "inbox" / "ACC999.tmp12").mkdir()
    run = trigger.run()
    task = asyncio.ensure_future(run.__anext__())
    await asyncio.sleep(0.3)
    assert not task.done()  # a .tmp folder is never work
    (tmp_path / "inbox" / "ACC999.tmp12").rename(tmp_path / "inbox" / "ACC999")
    event = await asyncio.wait_for(task, timeout=5)
    assert event.xcoms == {"return_value": 1}
    assert "ACC999" not in json.dumps([event.payload, event.xcoms])
    assert isinstance(event, TaskSuccessEvent)


async def test_fires_for_a_claim_waiting_for_its_run(tmp_path):
    trigger = make_trigger(tmp_path)
    (tmp_path / "inbox" / "S1").mkdir()
    (tmp_path / "inbox" / "S1" / "f").write_text("x")
    inbox.claim(tmp_path / "inbox", tmp_path / "batches", "S1")
    event = await asyncio.wait_for(trigger.run().__anext__(), timeout=5)
    assert event.xcoms["return_value"] == 1


async def test_stability_guard_holds_a_busy_folder(tmp_path):
    trigger = make_trigger(tmp_path, stable=30)
    (tmp_path / "inbox" / "S2").mkdir()
    (tmp_path / "inbox" / "S2" / "f").write_text("still writing")
    task = asyncio.ensure_future(trigger.run().__anext__())
    await asyncio.sleep(0.3)
    assert not task.done()
    task.cancel()


async def test_empty_inbox_fires_zero_at_its_deadline(tmp_path):
    """The waiting task must end before its execution_timeout: at the deadline the trigger fires with nothing."""
    import time

    (tmp_path / "inbox").mkdir()
    trigger = InboxTrigger(str(tmp_path / "inbox"), str(tmp_path / "batches"), poll_seconds=0.05,
                           deadline=time.time() + 0.3)
    assert InboxTrigger(**trigger.serialize()[1]).deadline == trigger.deadline
    event = await asyncio.wait_for(trigger.run().__anext__(), timeout=10)
    assert event.xcoms == {"return_value": 0}


async def test_claims_a_quiet_folder_within_one_poll_of_turning_quiet(tmp_path):
    """Detection: the folder is claimed (moved into the work area) by the trigger itself, at most one poll after it
    has been quiet for stable_seconds (the default poll, 0.5 s, keeps that within stable_seconds + 1 s)."""
    import time

    (tmp_path / "inbox").mkdir()
    trigger = InboxTrigger(str(tmp_path / "inbox"), str(tmp_path / "batches"), stable_seconds=0.5, poll_seconds=0.5)
    (tmp_path / "inbox" / "ACC7.tmp1").mkdir()
    (tmp_path / "inbox" / "ACC7.tmp1" / "f").write_text("x")
    task = asyncio.ensure_future(trigger.run().__anext__())
    await asyncio.sleep(0.2)
    written = (tmp_path / "inbox" / "ACC7.tmp1" / "f").stat().st_mtime
    (tmp_path / "inbox" / "ACC7.tmp1").rename(tmp_path / "inbox" / "ACC7")
    renamed = time.time()
    event = await asyncio.wait_for(task, timeout=5)
    assert event.xcoms == {"return_value": 1}
    assert not (tmp_path / "inbox" / "ACC7").exists()
    (claim,) = inbox.undispatched(tmp_path / "batches")
    assert claim.folder == "ACC7" and (claim.incoming / "f").read_text() == "x"
    claimed_at = inbox.read_claim(claim.path) and json.loads((claim.path / inbox.CLAIM_FILE).read_text())["claimed_at"]
    import datetime as dt

    claimed = dt.datetime.fromisoformat(claimed_at).timestamp()
    assert written + 0.5 <= claimed < max(written + 0.5, renamed) + 1.0
