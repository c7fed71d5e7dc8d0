"""A batch's quarantine: files held back with a reason, and the index that names them.

``<batch>/quarantine/qNNNN/<original relative path>`` holds each file; ``quarantine/index.json`` maps the label
to the original relative path and the reason. Errors, logs and the UI name a file only by its label, since file
names may be PHI. Labels are never handed out twice in a batch, even after a file was released.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .files import write_json_atomically

QUARANTINE = "quarantine"
INDEX_FILE = "index.json"


def read_index(qdir: Path) -> dict[str, dict]:
    path = qdir / INDEX_FILE
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def write_index(qdir: Path, entries: dict[str, dict]) -> None:
    """Replace the index atomically: a crash leaves the old index or the new one, never half of one."""
    qdir.mkdir(parents=True, exist_ok=True)
    # It names the original files (PHI): owner only from its creation.
    write_json_atomically(qdir / INDEX_FILE, entries, indent=2, mode=0o600)


def next_number(qdir: Path) -> int:
    """One more than the highest label ever used in this batch (by the index or by a folder)."""
    used = [0] + [int(label[1:]) for label in read_index(qdir) if label[1:].isdigit()]
    if qdir.exists():
        used += [int(p.name[1:]) for p in qdir.iterdir() if p.is_dir() and p.name[1:].isdigit()]
    return max(used) + 1


def hold(incoming: Path, qdir: Path, relpath: str, reason: str, number: int) -> str:
    """Move ``incoming/relpath`` into quarantine under label ``q<number>``; return the label."""
    label = f"q{number:04d}"
    source = incoming / relpath
    target = qdir / label / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.exists() or source.is_symlink():
        os.rename(source, target)
    entries = read_index(qdir)
    entries[label] = {"relpath": relpath, "reason": reason}
    write_index(qdir, entries)
    return label


def kept_files(qdir: Path) -> int:
    """How many files the quarantine holds."""
    if not qdir.exists():
        return 0
    return sum(1 for p in qdir.rglob("*") if p.is_file() and p.name not in (INDEX_FILE, INDEX_FILE + ".partial"))


def held(qdir: Path) -> dict[str, str]:
    """``{label: reason}`` of the files still held: neither released back into incoming nor discarded."""
    return {label: entry.get("reason", "") for label, entry in sorted(read_index(qdir).items())
            if not entry.get("released_at") and not entry.get("discarded_at")}
