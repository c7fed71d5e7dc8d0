"""Inbox entries the relay will not take are named (never silently ignored); what the work area writes is private."""

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from dicom_relay import inbox, quarantine
from dicom_relay.files import make_private_dir, write_private_text

INCLUDE = Path(inbox.__file__).resolve().parents[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def populated_inbox(root: Path) -> Path:
    box = root / "inbox"
    box.mkdir()
    (box / "GOOD").mkdir()
    (box / "GOOD" / "a.dcm").write_bytes(b"x")
    (root / "elsewhere").mkdir()
    (box / "LINKED-DIR").symlink_to(root / "elsewhere")
    (box / "LINKED-FILE").symlink_to(box / "GOOD" / "a.dcm")
    (box / "DANGLING").symlink_to(root / "nowhere")
    (box / "loose.dcm").write_bytes(b"x")
    os.mkfifo(box / "PIPE")
    (box / "WRITING.tmp1234").mkdir()  # still being written: the protocol says wait
    (box / ".hidden").write_bytes(b"x")
    return box


def test_every_entry_not_taken_is_named_with_its_kind(tmp_path):
    box = populated_inbox(tmp_path)
    refused = {r.name: r.kind for r in inbox.refused_entries(box)}
    assert refused == {"LINKED-DIR": "symlink", "LINKED-FILE": "symlink", "DANGLING": "symlink",
                       "loose.dcm": "file", "PIPE": "special"}
    assert inbox.finished_folders(box) == ["GOOD"]
    assert all(r.name not in r.reason for r in inbox.refused_entries(box))  # reasons never hold the name


def test_refusals_wake_the_dispatcher_until_recorded_then_when_they_change(tmp_path):
    box = populated_inbox(tmp_path)
    batches = tmp_path / "relay" / "batches"
    batches.mkdir(parents=True)
    (box / "GOOD").rename(tmp_path / "GOOD")  # only refusals left
    assert inbox.waiting_work(box, batches, 0) == 5
    inbox.remember_refusals(batches, inbox.refused_entries(box))
    assert inbox.waiting_work(box, batches, 0) == 0  # reported once, not on every poll
    assert mode(batches.parent / inbox.REFUSED_FILE) == 0o600  # it holds names
    (box / "loose.dcm").unlink()
    assert [r.name for r in inbox.unreported_refusals(box, batches)] == ["loose.dcm"]  # gone: close its record


def test_a_folder_the_relay_cannot_read_is_refused_not_claimed():
    """Permissions do not bind root, so the scan runs as ``nobody`` when the tests run as root."""
    root = Path(tempfile.mkdtemp(prefix="relay-unreadable-"))
    try:
        os.chmod(root, 0o755)
        box = root / "inbox"
        for path in (box / "OPEN", box / "CLOSED", box / "INNER-CLOSED" / "sub"):
            path.mkdir(parents=True)
        os.chmod(box / "CLOSED", 0o000)
        os.chmod(box / "INNER-CLOSED" / "sub", 0o000)
        code = (f"import json, sys; sys.path.insert(0, {str(INCLUDE)!r}); from dicom_relay import inbox; "
                f"print(json.dumps([[r.name, r.kind] for r in inbox.refused_entries({str(box)!r})]"
                f" + [inbox.finished_folders({str(box)!r})]))")
        argv = [sys.executable, "-c", code]
        if os.geteuid() == 0:
            # The system interpreter: the venv's lives under /root, which nobody may not enter. The inbox module
            # needs the standard library only.
            argv = ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", code]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
        *refused, finished = json.loads(out)
        assert refused == [["CLOSED", "unreadable"], ["INNER-CLOSED", "unreadable"]]
        assert finished == ["OPEN"]
    finally:
        for path in (root / "inbox" / "CLOSED", root / "inbox" / "INNER-CLOSED" / "sub"):
            os.chmod(path, 0o700)
        subprocess.run(["rm", "-rf", str(root)], check=True)


def test_claim_files_are_private_from_creation(tmp_path):
    box = tmp_path / "inbox"
    (box / "ACC-1").mkdir(parents=True)
    old = os.umask(0)  # the most permissive umask: modes must not depend on it
    try:
        claim = inbox.claim(box, tmp_path / "relay" / "batches", "ACC-1")
        label = quarantine.hold(claim.incoming, claim.path / "quarantine", "x.bin", "not DICOM", 1)
    finally:
        os.umask(old)
    assert label == "q0001"
    assert mode(tmp_path / "relay" / "batches") == 0o700
    assert mode(claim.path) == 0o700
    assert mode(claim.path / inbox.CLAIM_FILE) == 0o600
    assert mode(claim.path / "quarantine" / quarantine.INDEX_FILE) == 0o600


def test_private_helpers_narrow_what_exists(tmp_path):
    loose = tmp_path / "work"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    assert mode(make_private_dir(loose)) == 0o700
    f = tmp_path / "f"
    f.write_text("old")
    os.chmod(f, 0o644)
    write_private_text(f, "secret")
    assert mode(f) == 0o600 and f.read_text() == "secret"
