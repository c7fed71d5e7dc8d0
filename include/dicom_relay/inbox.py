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

What the relay will not take is never ignored in silence: ``refused_entries`` names every top-level entry that is
not a claimable folder (a symbolic link, a plain file, a folder the relay cannot read entirely, a socket...), the
dispatcher records each once in the status table and ``dicom-relay status`` shows it (by id, never by name).
Entries whose name says they are still being written (``NAME.tmpXXXX``, hidden names) are not refused: the
sender's protocol says they will change.
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
from .files import make_private_dir, write_json_atomically

CLAIM_FILE = "claim.json"
INCOMING = "incoming"
DISPATCHED = "dispatched"
#: In the work area, next to ``batches/``: the refused inbox entries last recorded (names: private, 0600).
REFUSED_FILE = "refused_entries.json"


@dataclass(frozen=True)
class RefusedEntry:
    """A top-level inbox entry the relay will not take. ``name`` may be PHI: it is stored, never shown."""

    name: str
    kind: str  # one of REFUSAL_KINDS
    reason: str  # holds no part of the name


REFUSAL_KINDS = ("symlink", "file", "unreadable", "special")


def _unreadable(folder: str) -> bool:
    """Whether some folder at or below ``folder`` cannot be listed or entered (os.walk would skip it silently)."""
    if not os.access(folder, os.R_OK | os.X_OK):
        return True
    failed = []
    for _root, _dirs, _files in os.walk(folder, onerror=failed.append):
        if failed:
            return True
    return bool(failed)


def refused_entries(inbox: Path) -> list[RefusedEntry]:
    """Every top-level entry of ``inbox`` the relay will not take, by name order. Cheap enough for each poll
    (a walk per finished folder, the same as ``latest_change``)."""
    found = []
    try:
        entries = sorted(os.scandir(inbox), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    for entry in entries:
        if not is_finished(entry.name):
            continue  # being written, by the sender's protocol
        try:
            if entry.is_symlink():
                found.append(RefusedEntry(entry.name, "symlink", "a symbolic link: the relay takes real folders only "
                                          "(a link could point anywhere, and moving it moves no data)"))
            elif entry.is_file(follow_symlinks=False):
                found.append(RefusedEntry(entry.name, "file", "a plain file at the top of the inbox: a study must "
                                          "come as a folder"))
            elif not entry.is_dir(follow_symlinks=False):
                found.append(RefusedEntry(entry.name, "special", "neither a folder nor a file (socket, pipe, "
                                          "device)"))
            elif _unreadable(entry.path):
                found.append(RefusedEntry(entry.name, "unreadable", "a folder the relay cannot read entirely: fix "
                                          "its permissions and it is taken"))
        except FileNotFoundError:
            continue  # gone while we looked
    return found


def unreported_refusals(inbox: Path, batches_dir: Path) -> list[RefusedEntry]:
    """Refused entries not in the set last recorded by ``remember_refusals`` (new ones, or changed kinds), and
    recorded ones that are gone: either way the dispatcher has something to write to the status table."""
    current = {(r.name, r.kind) for r in refused_entries(inbox)}
    return [RefusedEntry(n, k, "") for n, k in sorted(current ^ _remembered(batches_dir))]


def remember_refusals(batches_dir: Path, refused: list[RefusedEntry]) -> None:
    write_json_atomically(batches_dir.parent / REFUSED_FILE, sorted([r.name, r.kind] for r in refused), mode=0o600)


def _remembered(batches_dir: Path) -> set[tuple[str, str]]:
    try:
        return {(n, k) for n, k in json.loads((batches_dir.parent / REFUSED_FILE).read_text())}
    except (FileNotFoundError, json.JSONDecodeError, ValueError, TypeError):
        return set()


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
        if not entry.is_dir(follow_symlinks=False) or not is_finished(entry.name) or _unreadable(entry.path):
            continue  # refused_entries reports what is not taken
        changed = latest_change(Path(entry.path))
        if now - changed >= stable_seconds:
            found.append((changed, entry.name))
    return [name for _, name in sorted(found)]


def seconds_until_quiet(inbox: Path, stable_seconds: float, now: float | None = None) -> float | None:
    """Seconds until the first finished folder that is not quiet yet will be (None: no such folder)."""
    now = time.time() if now is None else now
    waits = []
    try:
        entries = list(os.scandir(inbox))
    except FileNotFoundError:
        return None
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and is_finished(entry.name):
            left = stable_seconds - (now - latest_change(Path(entry.path)))
            if left > 0:
                waits.append(left)
    return min(waits) if waits else None


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
    make_private_dir(batches_dir)
    batch_id = new_batch_id()
    path = batches_dir / batch_id
    path.mkdir(mode=0o700)
    # claim.json names the folder (PHI): owner only from its creation.
    write_json_atomically(
        path / CLAIM_FILE,
        {"batch_id": batch_id, "folder": name, "claimed_at": dt.datetime.now(dt.timezone.utc).isoformat()},
        mode=0o600,
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
    """How much is waiting for the dispatcher: finished quiet folders, claims awaiting their run, claims a crash
    interrupted before the rename, and refused entries not yet recorded. Cheap: used by the trigger's poll."""
    return (len(finished_folders(inbox, stable_seconds)) + len(undispatched(batches_dir))
            + len(interrupted_claims(batches_dir)) + len(unreported_refusals(inbox, batches_dir)))


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
