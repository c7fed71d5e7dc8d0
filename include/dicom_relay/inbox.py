"""The inbox: which folders are finished, and how a finished folder is claimed exactly once.

The sender's protocol (sendit's watcher rule): a study is copied into ``NAME.tmpXXXX/`` and renamed to ``NAME/``
when every file is written. A folder is *finished* when its extension does not start with ``tmp``. Because some
senders rename early, a finished folder must also have been *quiet* (no file or folder in it changed) for
``stable_seconds`` before it is claimed.

Claiming moves the folder out of the inbox with one ``rename`` into the batch's work area, so that a folder is
claimed once whatever restarts happen. The steps, each safe to repeat after a crash:

1. ``mkdir <batches>/<batch_id>/`` and write ``claim.json`` naming the folder;
2. ``rename <inbox>/NAME -> <batches>/<batch_id>/incoming`` (atomic: the folder is either still in the inbox or
   in exactly one batch);
3. the orchestrator records the batch and requests its run, then writes the ``dispatched`` marker.

``recover_claims`` finishes step 2 for claims a crash interrupted; ``undispatched`` lists batches whose run was
not yet requested, so the next cycle requests it (a deterministic run id makes a second request harmless).
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import PermanentError
from .files import write_json_atomically

CLAIM_FILE = "claim.json"
INCOMING = "incoming"
DISPATCHED = "dispatched"


def is_finished(name: str) -> bool:
    """True when the folder name's extension does not start with ``tmp`` (and it is not a hidden name)."""
    if name.startswith("."):
        return False
    ext = os.path.splitext(name)[1]
    return not ext[1:].lower().startswith("tmp")


def latest_change(folder: Path) -> float:
    """The newest modification time of ``folder`` and everything below it (links are not followed)."""
    newest = folder.lstat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except FileNotFoundError:
                # Something is still moving files around in there: certainly not quiet.
                return time.time()
    return newest


def finished_folders(inbox: Path, stable_seconds: float = 0.0, now: float | None = None) -> list[str]:
    """Names of the finished, quiet folders in ``inbox``, oldest first. Symbolic links are never taken."""
    now = time.time() if now is None else now
    found: list[tuple[float, str]] = []
    try:
        entries = list(os.scandir(inbox))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False) or not is_finished(entry.name):
            continue
        changed = latest_change(Path(entry.path))
        if now - changed >= stable_seconds:
            found.append((changed, entry.name))
    return [name for _, name in sorted(found)]


def new_batch_id(now: dt.datetime | None = None) -> str:
    """A batch id: UTC claim time plus random hex. Never derived from the folder name."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def run_id_for(batch_id: str) -> str:
    """The deterministic ``process_study`` run id of a batch."""
    return f"batch__{batch_id}"


@dataclass(frozen=True)
class Claim:
    batch_id: str
    folder: str
    path: Path

    @property
    def incoming(self) -> Path:
        return self.path / INCOMING


def claim(inbox: Path, batches_dir: Path, name: str) -> Claim | None:
    """Claim the inbox folder ``name``; return None if it is gone (another claimer or the sender took it)."""
    batches_dir.mkdir(parents=True, exist_ok=True)
    batch_id = new_batch_id()
    path = batches_dir / batch_id
    path.mkdir()
    write_json_atomically(
        path / CLAIM_FILE,
        {"batch_id": batch_id, "folder": name, "claimed_at": dt.datetime.now(dt.timezone.utc).isoformat()},
    )
    try:
        os.rename(inbox / name, path / INCOMING)
    except FileNotFoundError:
        shutil.rmtree(path)
        return None
    except OSError as exc:
        shutil.rmtree(path, ignore_errors=True)
        if exc.errno == errno.EXDEV:
            raise PermanentError(
                "RELAY_WORK_DIR must be on the same file system as RELAY_INBOX: claiming a folder is a rename"
            ) from None
        raise
    return Claim(batch_id, name, path)


def read_claim(path: Path) -> Claim | None:
    try:
        data = json.loads((path / CLAIM_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return Claim(data["batch_id"], data["folder"], path)


def recover_claims(inbox: Path, batches_dir: Path) -> list[Claim]:
    """Finish claims that a crash interrupted between writing ``claim.json`` and the rename.

    If the folder is still in the inbox the rename is done now; if it has gone, the empty claim is dropped.
    Returns the claims that were completed.
    """
    completed = []
    if not batches_dir.exists():
        return completed
    for entry in sorted(os.scandir(batches_dir), key=lambda e: e.name):
        path = Path(entry.path)
        if not entry.is_dir() or (path / INCOMING).exists() or (path / DISPATCHED).exists():
            # Claimed already, or a finished batch whose originals were cleaned up: never claim again.
            continue
        c = read_claim(path)
        if c is None:
            # A crash before claim.json was complete: nothing was moved yet.
            if not any(p.name not in (CLAIM_FILE, CLAIM_FILE + ".partial") for p in path.iterdir()):
                shutil.rmtree(path)
            continue
        source = inbox / c.folder
        if source.is_dir() and not source.is_symlink():
            os.rename(source, path / INCOMING)
            completed.append(c)
        elif not any(p.name != CLAIM_FILE for p in path.iterdir()):
            shutil.rmtree(path)
    return completed


def undispatched(batches_dir: Path) -> list[Claim]:
    """Claimed batches whose run has not been requested yet, oldest first."""
    claims = []
    if not batches_dir.exists():
        return claims
    for entry in sorted(os.scandir(batches_dir), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.is_dir() and (path / INCOMING).exists() and not (path / DISPATCHED).exists():
            c = read_claim(path)
            if c is not None:
                claims.append(c)
    return claims


def mark_dispatched(batches_dir: Path, batch_id: str) -> None:
    (batches_dir / batch_id / DISPATCHED).touch()


def waiting_work(inbox: Path, batches_dir: Path, stable_seconds: float) -> int:
    """How much is waiting for the dispatcher: finished quiet folders, claims awaiting their run, and claims a
    crash interrupted before the rename. Cheap: used by the trigger's poll."""
    return (len(finished_folders(inbox, stable_seconds)) + len(undispatched(batches_dir))
            + len(interrupted_claims(batches_dir)))


def has_work(inbox: Path, batches_dir: Path, stable_seconds: float) -> bool:
    return waiting_work(inbox, batches_dir, stable_seconds) > 0


def interrupted_claims(batches_dir: Path) -> list[Path]:
    """Claim folders with a ``claim.json`` but neither the moved folder nor the dispatched marker."""
    if not batches_dir.exists():
        return []
    return [
        Path(e.path) for e in os.scandir(batches_dir)
        if e.is_dir() and not os.path.exists(os.path.join(e.path, INCOMING))
        and os.path.exists(os.path.join(e.path, CLAIM_FILE))
        and not os.path.exists(os.path.join(e.path, DISPATCHED))
    ]
