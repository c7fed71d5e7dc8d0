"""Small file operations of the work area that must not leave half a result behind after a crash."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomically(path: Path, data: Any, *, mode: int | None = None, indent: int | None = None) -> None:
    """Replace ``path`` with ``data`` as JSON: a crash leaves the old file or the new one, never half of one.

    ``mode`` is set on the temporary file before the rename, so the file never exists with looser permissions.
    """
    tmp = path.with_name(path.name + ".partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    with os.fdopen(fd, "w") as fh:
        if mode is not None:
            os.fchmod(fh.fileno(), mode)  # the umask may have narrowed or the file may have existed
        json.dump(data, fh, indent=indent)
    os.replace(tmp, path)


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600) from the first byte: the file is created with
    that mode (not chmod-ed after writing, which leaves a window), and narrowed if it existed already."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(text)


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) readable by its owner only (0700), or narrow it to 0700 if it
    exists: what it holds (folder names, mappings, originals) is for the relay's user alone."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def remove_empty_dirs(folder: Path, stop: Path | None = None) -> None:
    """Remove empty folders: with ``stop``, ``folder`` and its parents while they are empty, up to (not including)
    ``stop``; without it, every empty folder under ``folder`` (``folder`` included). Files are never touched."""
    if stop is None:
        if folder.exists():
            for root, _dirs, _files in os.walk(folder, topdown=False):
                if not os.listdir(root):
                    os.rmdir(root)
        return
    folder, stop = folder.resolve(), stop.resolve()
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
