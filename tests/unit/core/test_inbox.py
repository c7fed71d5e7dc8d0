"""The finished-folder rule, the stability guard, and claiming exactly once (also after a crash)."""

import os
import time

import pytest

from dicom_relay import inbox


@pytest.mark.parametrize(
    "name, finished",
    [
        ("ST-000001", True),
        ("ST-000001.tmp2343", False),
        ("ST-000001.TMP", False),
        ("ST-000001.tmp", False),
        ("study.v2", True),
        ("ACC.123.tmpX", False),
        (".hidden", False),
        ("tmp-study", True),  # only the extension counts
    ],
)
def test_finished_rule(name, finished):
    assert inbox.is_finished(name) is finished


def make_folder(parent, name, files=2):
    d = parent / name
    d.mkdir()
    for i in range(files):
        (d / f"f{i}").write_bytes(b"x" * 10)
    return d


def test_finished_folders_skips_tmp_files_links_and_unquiet(tmp_path):
    box = tmp_path / "inbox"
    box.mkdir()
    make_folder(box, "A")
    make_folder(box, "B.tmp99")
    (box / "loose-file").write_text("x")
    outside = make_folder(tmp_path, "outside")
    os.symlink(outside, box / "LINK")
    assert inbox.finished_folders(box, stable_seconds=0) == ["A"]
    # A folder changed just now is not quiet yet.
    assert inbox.finished_folders(box, stable_seconds=30) == []
    old = time.time() - 60
    for p in [box / "A", *(box / "A").iterdir()]:
        os.utime(p, (old, old))
    assert inbox.finished_folders(box, stable_seconds=30) == ["A"]


def test_claim_moves_folder_once_and_batch_id_hides_name(tmp_path):
    box, batches = tmp_path / "inbox", tmp_path / "batches"
    box.mkdir()
    make_folder(box, "ACC12345")
    c = inbox.claim(box, batches, "ACC12345")
    assert c is not None and not (box / "ACC12345").exists()
    assert sorted(p.name for p in c.incoming.iterdir()) == ["f0", "f1"]
    assert "ACC12345" not in c.batch_id and "ACC12345" not in inbox.run_id_for(c.batch_id)
    # The folder has gone: a second claimer gets nothing, and leaves no claim behind.
    assert inbox.claim(box, batches, "ACC12345") is None
    assert len(list(batches.iterdir())) == 1
    assert [x.batch_id for x in inbox.undispatched(batches)] == [c.batch_id]
    inbox.mark_dispatched(batches, c.batch_id)
    assert inbox.undispatched(batches) == []


def test_recover_claim_interrupted_before_rename(tmp_path):
    box, batches = tmp_path / "inbox", tmp_path / "batches"
    box.mkdir()
    make_folder(box, "S1")
    # Simulate a crash between writing claim.json and the rename.
    path = batches / "20260101T000000-abcdef"
    path.mkdir(parents=True)
    (path / inbox.CLAIM_FILE).write_text('{"batch_id": "20260101T000000-abcdef", "folder": "S1", "claimed_at": "x"}')
    assert inbox.has_work(box, batches, 0)
    done = inbox.recover_claims(box, batches)
    assert [c.batch_id for c in done] == ["20260101T000000-abcdef"]
    assert (path / "incoming" / "f0").exists() and not (box / "S1").exists()


def test_recover_drops_empty_claim_whose_folder_is_gone(tmp_path):
    box, batches = tmp_path / "inbox", tmp_path / "batches"
    box.mkdir()
    path = batches / "20260101T000000-000000"
    path.mkdir(parents=True)
    (path / inbox.CLAIM_FILE).write_text('{"batch_id": "20260101T000000-000000", "folder": "GONE", "claimed_at": "x"}')
    assert inbox.recover_claims(box, batches) == []
    assert not path.exists()


def test_same_name_dropped_again_is_a_new_batch(tmp_path):
    box, batches = tmp_path / "inbox", tmp_path / "batches"
    box.mkdir()
    make_folder(box, "S1")
    first = inbox.claim(box, batches, "S1")
    inbox.mark_dispatched(batches, first.batch_id)
    # The first batch finished and its originals were removed.
    for f in first.incoming.iterdir():
        f.unlink()
    first.incoming.rmdir()
    make_folder(box, "S1")
    assert inbox.recover_claims(box, batches) == []  # the finished batch never claims it again
    second = inbox.claim(box, batches, "S1")
    assert second.batch_id != first.batch_id
    assert [c.batch_id for c in inbox.undispatched(batches)] == [second.batch_id]
