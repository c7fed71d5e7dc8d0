"""Review of held-back instances: what a reviewer is shown, and what each answer does. No Airflow import.

A batch that ends HELD_BACK has files in its quarantine (see ``dicom_relay.quarantine``). A reviewer sees the
batch id, how many files are held and why, by label (never a file name, patient or study), and answers:

- ``release``: every held file goes back into the batch's incoming folder and the batch becomes NEW; a new
  process_study run then de-identifies, verifies and delivers them like any other instance (or holds them back
  again, with a reason, if they still cannot go).
- ``discard``: every held file is deleted; who and when is recorded per label; the batch becomes DONE.
- ``keep held``: nothing moves; the batch stays HELD_BACK. No answer by the deadline means the same.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from . import operations, quarantine
from .config import Settings
from .status import StatusStore

RELEASE = "release"
DISCARD = "discard"
KEEP_HELD = "keep held"
OPTIONS = (RELEASE, DISCARD, KEEP_HELD)
#: Who answered when nobody did: the review's deadline passed and its default (keep held) was taken.
NO_ANSWER = "nobody (no answer by the deadline)"


def held_back(settings: Settings, store: StatusStore, batch_id: str) -> dict[str, Any] | None:
    """What the reviewer is shown, or ``None`` when the batch holds nothing back.

    ``{"batch_id", "held_back": n, "delivered": n, "reasons": {reason: [labels]}, "body": markdown}``.
    """
    held = quarantine.held(settings.batches_dir / batch_id / quarantine.QUARANTINE)
    if not held:
        return None
    reasons: dict[str, list[str]] = defaultdict(list)
    for label, reason in held.items():
        reasons[reason].append(label)
    batch = store.get_batch(batch_id)
    delivered = (batch.counts.get("DONE", 0) + batch.counts.get("SENT", 0)) if batch else 0
    lines = [f"Batch `{batch_id}`: **{len(held)}** file(s) held back, {delivered} instance(s) delivered.", "",
             "| reason | files |", "|---|---|"]
    lines += [f"| {reason} | {len(labels)}: {', '.join(labels)} |" for reason, labels in sorted(reasons.items())]
    lines += ["", "**release**: de-identify, verify and deliver them in a new run. **discard**: delete them "
              "(recorded with your name). **keep held**: leave them in quarantine (also when nobody answers)."]
    return {"batch_id": batch_id, "held_back": len(held), "delivered": delivered, "reasons": dict(reasons),
            "body": "\n".join(lines)}


def summary_note(review: dict[str, Any]) -> str:
    """A one-line, PHI-free run note for a batch with held-back files."""
    reasons = "; ".join(f"{len(labels)} {reason}" for reason, labels in sorted(review["reasons"].items()))
    return f"HELD_BACK: {review['held_back']} file(s) held back ({reasons}); review under Required Actions"


def apply(settings: Settings, store: StatusStore, batch_id: str, decision: str, by: str | None,
          at: dt.datetime | str | None = None) -> dict[str, Any]:
    """Carry out a reviewer's answer for every file the batch still holds back; return what was done.

    ``by`` is the reviewer's name (``None``: nobody answered by the deadline). The result has ``rerun`` true
    when released files wait for a new process_study run.
    """
    if decision not in OPTIONS:
        raise operations.OperationError(f"a review answer is one of {', '.join(OPTIONS)}, not {decision!r}")
    who = by or NO_ANSWER
    labels = list(quarantine.held(settings.batches_dir / batch_id / quarantine.QUARANTINE))
    when = at.isoformat(timespec="seconds") if isinstance(at, dt.datetime) else (at or "")
    done: list[str] = []
    if decision == RELEASE:
        for label in labels:
            operations.release(settings, store, batch_id, label, by=who)
            done.append(label)
    elif decision == DISCARD:
        for label in labels:
            operations.discard(settings, store, batch_id, label, by=who)
            done.append(label)
    else:
        store.add_error(batch_id, "review", f"file {', '.join(labels)} kept held by {who}"
                        + (f" at {when}" if when else ""), transient=False, status=None)
    status = store.get_batch(batch_id).status
    note = {
        RELEASE: f"{len(done)} held-back file(s) released by {who}; a new run delivers them",
        DISCARD: f"{len(done)} held-back file(s) discarded by {who}" + (f" at {when}" if when else ""),
        KEEP_HELD: f"HELD_BACK: {len(labels)} file(s) kept held by {who}",
    }[decision]
    return {"batch_id": batch_id, "decision": decision, "by": who, "at": when, "labels": labels or done,
            "status": status, "rerun": decision == RELEASE and bool(done), "note": note}
