"""Operations for the person on call and for the scheduled rerun: rerun decisions, requeue, quarantine.

Library code: no Airflow import. ``dags/rerun_errors.py`` calls :func:`decide_reruns` through
``dicom_relay.airflow.tasks``; ``dicom-relay requeue`` and ``dicom-relay quarantine`` call the rest.

Rerun rule (the ``rerun_errors`` DAG). A batch in ERROR is rerun when

* its latest run is over (the run recorded on the batch is not queued/running: Airflow may still be retrying),
* every failure of its latest run is *transient* (``errors[*].transient``; a destination or service was down),
* and it has reruns left (``rerun_count < RELAY_MAX_RERUNS``, default 3).

Otherwise it is left for a person, with the reason recorded in ``relay_batch.last_decision``. The failures of the
latest run are the batch errors recorded since the batch last went to PROCESSING (``run_started_at``), and always
the last failure; quarantine notes (``file qNNNN ...``) are not failures. A rerun is requested with the run id
``rerun__<batch_id>__<n>``; if that run has not started by the next cycle it is requested again under the same run
id (a second request is skipped by Airflow), so a rerun attempt is never spent twice.

Nothing here prints, logs or returns a folder name, a file name or a patient identifier: batches by batch id, files
by quarantine label. Only ``QuarantineEntry.relpath`` holds a file path, for ``quarantine list --show-paths``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from . import inbox, quarantine
from .config import ConfigError, Settings
from .errors import PermanentError
from .files import remove_empty_dirs
from .status import Batch, StatusStore

PROCESS_DAG = "process_study"
INCOMING = "incoming"
# Entries of ``errors`` that describe a held-back file, not a failure of the batch (written by the pipeline's
# import and replace_identifiers with ``status=None``, and by :func:`release`).
_NOTE = re.compile(r"^file q\d{4,}\b")
_BATCH_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]*$")
_LABEL = re.compile(r"^q\d{4,}$")
# Statuses during which a run is working on the batch's files: no release while they last.
_BUSY = ("PROCESSING", "DONEPROCESSING", "SENT")
ACTIVE_RUN_STATES = ("queued", "running")


class OperationError(PermanentError):
    """An operation was refused or failed; the message is for the person on call and holds no PHI."""


def max_reruns(env=None) -> int:
    """RELAY_MAX_RERUNS (see config.Settings.max_reruns)."""
    try:
        return Settings.from_env(env).max_reruns
    except ConfigError as exc:
        raise OperationError(str(exc)) from None


def rerun_run_id(batch_id: str, n: int) -> str:
    return f"rerun__{batch_id}__{n}"


def release_run_id(batch_id: str, n: int) -> str:
    """The run that delivers files a review released (numbered with the requeues: one counter per batch)."""
    return f"release__{batch_id}__{n}"


def requeue_run_id(batch_id: str, n: int) -> str:
    return f"requeue__{batch_id}__{n}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _parse_at(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


# -- rerun decisions ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """What the rerun DAG decided for one batch. ``run_id`` is set when a process_study run is to be requested."""

    batch_id: str
    decision: str  # "rerun", "wait" or "leave"
    reason: str
    run_id: str | None = None

    def public(self) -> dict:
        """The decision as the decide task's XCom shows it: batch id, decision, reason (and run id). No PHI."""
        out = {"batch_id": self.batch_id, "decision": self.decision, "reason": self.reason}
        if self.run_id:
            out["run_id"] = self.run_id
        return out


def is_note(entry: dict) -> bool:
    """True for an ``errors`` entry that records a held-back or released file rather than a failure."""
    return bool(_NOTE.match(str(entry.get("message", ""))))


def latest_failures(batch: Batch) -> list[dict]:
    """The failures of the batch's latest run: errors since it last went to PROCESSING, and always the last one."""
    failures = [e for e in batch.errors if not is_note(e)]
    if not failures:
        return []
    if batch.run_started_at is None:
        return failures
    # Error times are stored to the second; a run start is compared at the same precision.
    since = batch.run_started_at.replace(microsecond=0)
    recent = [e for e in failures if (_parse_at(e.get("at")) or since) >= since]
    return recent if recent else failures[-1:]


def decide(batch: Batch, limit: int, run_state: Callable[[str], str | None] | None = None) -> Decision:
    """The rerun decision for one batch in ERROR (pure: reads the batch, asks ``run_state`` about Airflow runs).

    ``run_state(run_id)`` returns the state of that process_study run ("queued", "running", "success",
    "failed") or None when it is not known (no Airflow at hand, or no such run).
    """
    state_of = run_state or (lambda _run_id: None)
    if batch.status != "ERROR":
        return Decision(batch.batch_id, "leave", f"status is {batch.status}, not ERROR")
    if batch.run_id and state_of(batch.run_id) in ACTIVE_RUN_STATES:
        return Decision(batch.batch_id, "wait", f"its run {batch.run_id} is still active (Airflow retries)")
    last = batch.last_decision or {}
    if last.get("decision") in ("rerun", "requeue") and last.get("run_id"):
        requested_at = _parse_at(last.get("at"))
        pending = last["run_id"]
        # Import records its run id on the batch; run_started_at covers a later run started by hand.
        started = batch.run_id == pending or (
            batch.run_started_at is not None and requested_at is not None and batch.run_started_at >= requested_at)
        if not started:
            if state_of(pending) in ("success", "failed"):
                return Decision(batch.batch_id, "leave",
                                f"the requested run {pending} ended without starting the batch; a person must look")
            # Requested but not started yet: ask again under the same run id (Airflow skips a second request).
            return Decision(batch.batch_id, "wait", f"run {pending} was requested and has not started yet", pending)
    failures = latest_failures(batch)
    if not failures:
        return Decision(batch.batch_id, "leave", "ERROR without a recorded failure; a person must look")
    permanent = [e for e in failures if not e.get("transient")]
    if permanent:
        tasks = ", ".join(sorted({str(e.get("task", "?")) for e in permanent}))
        return Decision(batch.batch_id, "leave", f"permanent error in {tasks}; a person must look")
    if batch.rerun_count >= limit:
        return Decision(batch.batch_id, "leave",
                        f"out of reruns ({batch.rerun_count} of {limit} used); a person must look")
    n = batch.rerun_count + 1
    tasks = ", ".join(sorted({str(e.get("task", "?")) for e in failures}))
    return Decision(batch.batch_id, "rerun", f"transient error in {tasks}; rerun {n} of {limit}",
                    rerun_run_id(batch.batch_id, n))


def decide_reruns(store: StatusStore, limit: int | None = None,
                  run_state: Callable[[str], str | None] | None = None) -> list[Decision]:
    """Decide for every batch in ERROR, record each decision on the batch, and return the decisions.

    A rerun spends one attempt (``rerun_count``) when it is decided, guarded so that two deciders cannot spend
    the same one. "leave" decisions are recorded when they change; "wait" decisions are not recorded (the
    batch keeps the decision it waits on).
    """
    limit = max_reruns() if limit is None else limit
    if run_state is not None:
        mark_stuck(store, run_state)
    decisions = []
    for batch in store.batches_in("ERROR"):
        d = decide(batch, limit, run_state)
        if d.decision == "rerun":
            record = {"decision": "rerun", "reason": d.reason, "run_id": d.run_id}
            if store.record_decision(batch.batch_id, record, expect_rerun_count=batch.rerun_count, count_rerun=True) is None:
                d = Decision(batch.batch_id, "wait", "the batch changed while deciding; next cycle")
        elif d.decision == "leave":
            last = batch.last_decision or {}
            if (last.get("decision"), last.get("reason")) != ("leave", d.reason):
                store.record_decision(batch.batch_id, {"decision": "leave", "reason": d.reason})
        decisions.append(d)
    return decisions


# Statuses a batch has while a run works on it; a batch left in one of them by a failed run is stuck.
IN_FLIGHT = ("NEW", "PROCESSING", "DONEPROCESSING", "SENT")


def mark_stuck(store: StatusStore, run_state: Callable[[str], str | None]) -> list[str]:
    """Put batches whose run failed without recording why (the status database or the task's worker was lost,
    so neither the step nor the failure callback could write) into ERROR, as a transient failure.

    Without this such a batch would stay PROCESSING (or NEW) forever with its files kept but nobody told.
    Only a run Airflow reports as ``failed`` counts: a run not yet created, queued or running is left alone.
    Returns the batch ids marked.
    """
    marked = []
    for status in IN_FLIGHT:
        for batch in store.batches_in(status):
            run_id = batch.run_id or inbox.run_id_for(batch.batch_id)
            if run_state(run_id) == "failed":
                store.add_error(batch.batch_id, "rerun_errors",
                                f"its run {run_id} failed without recording why (the status database or the "
                                "task's worker was lost); treated as transient", transient=True)
                marked.append(batch.batch_id)
    return marked


def runs_to_request(decisions: Iterable[dict]) -> list[dict]:
    """``TriggerDagRunOperator.expand_kwargs`` input: one run per decision that names a run id."""
    return [{"trigger_run_id": d["run_id"], "conf": {"batch_id": d["batch_id"]}} for d in decisions if d.get("run_id")]


# -- requeue (the person on call) --------------------------------------------------------------------------------

def requeue(store: StatusStore, client, batch_id: str, force: bool = False) -> str:
    """Request a process_study run for the batch through the Airflow REST API; return its run id.

    ``client`` is a :class:`dicom_relay.airflow_client.AirflowClient`. Refused for a DONE batch (a rerun of a
    DONE batch does nothing) and while the batch's run is still active, unless ``force``.
    """
    _check_batch_id(batch_id)
    batch = store.get_batch(batch_id)
    if batch is None:
        raise OperationError(f"no batch {batch_id}")
    if batch.status in ("DONE", "HELD_BACK") and not force:
        raise OperationError(
            f"batch {batch_id} is {batch.status}: every deliverable instance was delivered and verified (a run would "
            "do nothing). "
            "Release a quarantined file first, or use --force"
        )
    if batch.run_id and not force:
        state = _run_state(client, batch.run_id)
        if state in ACTIVE_RUN_STATES:
            raise OperationError(f"the batch's run {batch.run_id} is still {state}; wait for it, or use --force")
    for _ in range(10):
        run_id = requeue_run_id(batch_id, store.next_requeue_number(batch_id))
        response = client.trigger(PROCESS_DAG, run_id, {"batch_id": batch_id})
        if response.status_code == 409:  # that number was used already (by hand?): take the next
            continue
        if response.status_code >= 300:
            raise OperationError(f"Airflow refused the run {run_id} (HTTP {response.status_code})")
        reason = "requested by a person (dicom-relay requeue" + (" --force)" if force else ")")
        store.record_decision(batch_id, {"decision": "requeue", "reason": reason, "run_id": run_id})
        return run_id
    raise OperationError(f"could not find a free requeue run id for batch {batch_id}")


def _run_state(client, run_id: str) -> str | None:
    response = client.request("GET", f"/dags/{PROCESS_DAG}/dagRuns/{run_id}")
    if response.status_code == 404:
        return None
    if response.status_code >= 300:
        raise OperationError(f"could not read the state of run {run_id} from Airflow (HTTP {response.status_code})")
    return response.json().get("state")


# -- quarantine --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QuarantineEntry:
    batch_id: str
    label: str
    reason: str
    size_bytes: int | None  # None: the file is no longer in the quarantine folder
    relpath: str  # the original path in the batch: may be PHI, only for --show-paths
    released_at: str | None = None

    def public(self, show_paths: bool = False) -> dict:
        out = asdict(self)
        if not show_paths:
            out.pop("relpath")
        return out


def _check_batch_id(batch_id: str) -> None:
    if not _BATCH_ID.match(batch_id or ""):
        raise OperationError("that is not a batch id (see dicom-relay status)")


def _quarantine_dir(settings: Settings, batch_id: str) -> Path:
    _check_batch_id(batch_id)
    return settings.batches_dir / batch_id / quarantine.QUARANTINE


def _size(folder: Path) -> int | None:
    if not folder.exists() and not folder.is_symlink():
        return None
    total, found = 0, False
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            total += os.lstat(os.path.join(root, name)).st_size
            found = True
    return total if found else None


def quarantine_entries(settings: Settings, batch_id: str | None = None, include_released: bool = False
                       ) -> list[QuarantineEntry]:
    """The files held in quarantine, per batch (every batch in the work area, or one)."""
    if batch_id is not None:
        _check_batch_id(batch_id)
        if not (settings.batches_dir / batch_id).is_dir():
            raise OperationError(f"no batch {batch_id} in the work area")
        batch_ids = [batch_id]
    else:
        root = settings.batches_dir
        batch_ids = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []
    found = []
    for bid in batch_ids:
        qdir = _quarantine_dir(settings, bid)
        for label, entry in sorted(quarantine.read_index(qdir).items()):
            if (entry.get("released_at") or entry.get("discarded_at")) and not include_released:
                continue
            found.append(QuarantineEntry(bid, label, entry.get("reason", ""), _size(qdir / label), entry.get("relpath", ""),
                                         entry.get("released_at")))
    return found


def release(settings: Settings, store: StatusStore, batch_id: str, label: str, by: str | None = None) -> dict:
    """Move a quarantined file back into the batch's ``incoming/`` at its original path, for a requeue to pick up.

    The index entry is kept with ``released_at`` (a tombstone): the pipeline numbers new labels by the count of
    entries, so removing an entry would hand its label out again. The release is recorded in the batch errors by
    label. A DONE or HELD_BACK batch goes back to NEW (it has a file to process again); a batch a run is working on is refused.
    """
    if not _LABEL.match(label or ""):
        raise OperationError("a quarantine label looks like q0001 (see dicom-relay quarantine list)")
    qdir = _quarantine_dir(settings, batch_id)
    batch = store.get_batch(batch_id)
    if batch is None:
        raise OperationError(f"no batch {batch_id}")
    if batch.status in _BUSY:
        raise OperationError(f"batch {batch_id} is {batch.status}: a run is working on it; release when it has ended")
    entries = quarantine.read_index(qdir)
    entry = entries.get(label)
    if entry is None:
        raise OperationError(f"batch {batch_id} has no quarantined file {label}")
    if entry.get("released_at"):
        raise OperationError(f"file {label} of batch {batch_id} was released already")
    relpath = entry["relpath"]
    source = qdir / label / relpath
    incoming = settings.batches_dir / batch_id / INCOMING
    target = incoming / relpath
    if os.path.isabs(relpath) or ".." in Path(relpath).parts:
        raise OperationError(f"file {label}: its recorded path is not inside the batch; not released")
    if source.is_symlink():
        raise OperationError(f"file {label} is a symbolic link: links are never followed, so it is not released")
    if not source.is_file():
        raise OperationError(f"file {label} is no longer in the quarantine folder of batch {batch_id}")
    if target.exists() or target.is_symlink():
        raise OperationError(f"file {label}: a file already exists at its original path in incoming; not released")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(source, target)
    remove_empty_dirs(source.parent, qdir)
    entries[label] = {**entry, "released_at": _now().isoformat(timespec="seconds")}
    quarantine.write_index(qdir, entries)
    # A file held back by replace_identifiers has an instance row in ERROR: make it work again.
    store.set_instance_state(batch_id, "NEW", [relpath], from_states=("ERROR",))
    # ``by``: a reviewer in Airflow, whose answer starts the run itself; without it, the person on call's CLI.
    store.add_error(batch_id, "quarantine",
                    f"file {label} released back into incoming by {by}; a new run processes it" if by else
                    f"file {label} released back into incoming by the person on call; requeue the batch to process it",
                    transient=False, status=None)
    if batch.status in ("DONE", "HELD_BACK"):
        store.set_status(batch_id, "NEW")
    return {"batch_id": batch_id, "label": label, "status": store.get_batch(batch_id).status}


def discard(settings: Settings, store: StatusStore, batch_id: str, label: str, by: str) -> dict:
    """Delete a quarantined file for good, and record who discarded it and when.

    The index entry is kept with ``discarded_at`` and ``discarded_by`` (a tombstone, as for a release), and the
    batch errors get a note by label. A HELD_BACK batch with nothing left held becomes DONE.
    """
    if not _LABEL.match(label or ""):
        raise OperationError("a quarantine label looks like q0001 (see dicom-relay quarantine list)")
    qdir = _quarantine_dir(settings, batch_id)
    batch = store.get_batch(batch_id)
    if batch is None:
        raise OperationError(f"no batch {batch_id}")
    if batch.status in _BUSY:
        raise OperationError(f"batch {batch_id} is {batch.status}: a run is working on it; discard when it has ended")
    entries = quarantine.read_index(qdir)
    entry = entries.get(label)
    if entry is None:
        raise OperationError(f"batch {batch_id} has no quarantined file {label}")
    if entry.get("released_at") or entry.get("discarded_at"):
        raise OperationError(f"file {label} of batch {batch_id} is no longer held (released or discarded)")
    folder = qdir / label
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
    at = _now().isoformat(timespec="seconds")
    entries[label] = {**entry, "discarded_at": at, "discarded_by": by}
    quarantine.write_index(qdir, entries)
    store.add_error(batch_id, "review", f"file {label} discarded by {by} at {at}", transient=False, status=None)
    if batch.status == "HELD_BACK" and not quarantine_entries(settings, batch_id):
        store.set_status(batch_id, "DONE", finished=True)
    return {"batch_id": batch_id, "label": label, "discarded_at": at, "discarded_by": by}
