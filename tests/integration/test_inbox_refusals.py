"""Inbox entries the relay will not take: recorded once in the status table, shown by ``dicom-relay status`` by
id and kind (never by name), closed when they go; the work area the dispatcher writes is private."""

import json
import logging
import os
import stat

import pytest

from dicom_relay import pipeline
from dicom_relay.status import StatusStore
from tests.support.cli import run_cli as relay
from tests.support.samples import drop_atomically, generate_ct_study

pytestmark = pytest.mark.integration


def test_refused_entries_are_recorded_once_and_shown_without_names(relay_settings, make_relay_env, tmp_path, caplog):
    settings = relay_settings
    box = settings.inbox
    (tmp_path / "elsewhere-ACC-LINKED").mkdir()
    (box / "ACC-LINKED").symlink_to(tmp_path / "elsewhere-ACC-LINKED")
    (box / "ACC-LOOSE.dcm").write_bytes(b"x")
    study = generate_ct_study(tmp_path / "src", n_instances=1, rows=16, columns=16)
    drop_atomically(study.folder, box, "ACC-GOOD")
    store = StatusStore(settings.db_url)

    with caplog.at_level(logging.WARNING, logger="dicom_relay.pipeline"):
        runs = pipeline.claim_finished_folders(settings)
        assert len(runs) == 1  # the good folder is claimed as ever
        pipeline.mark_dispatched(settings, [runs[0]["conf"]["batch_id"]])
        assert pipeline.claim_finished_folders(settings) == []
    open_ = store.refusals()
    assert sorted(r.kind for r in open_) == ["file", "symlink"]
    assert sorted(r.entry for r in open_) == ["ACC-LINKED", "ACC-LOOSE.dcm"]  # kept, like relay_batch.folder
    warnings = [r.getMessage() for r in caplog.records if "not taken" in r.getMessage()]
    assert len(warnings) == 2, "each entry is announced once, however often the inbox is scanned"
    assert not any("ACC-" in w for w in warnings)

    env = make_relay_env()
    text = relay("status", env=env)
    assert text.returncode == 0, text.stderr
    assert "INBOX ENTRIES NOT TAKEN (2" in text.stdout and all(r.refusal_id in text.stdout for r in open_)
    listed = json.loads(relay("status", "--refused", "--json", env=env).stdout)
    assert sorted(r["kind"] for r in listed) == ["file", "symlink"]
    assert "ACC-" not in text.stdout + json.dumps(listed)

    # The sender fixes it: the record is closed, and the folder, now real, is claimed.
    (box / "ACC-LINKED").unlink()
    (tmp_path / "elsewhere-ACC-LINKED").rename(box / "ACC-LINKED")
    os.utime(box / "ACC-LINKED", (0, 0))
    assert len(pipeline.claim_finished_folders(settings)) == 1
    assert [r.kind for r in store.refusals()] == ["file"]
    assert "INBOX ENTRIES NOT TAKEN (1" in relay("status", "--refused", env=env).stdout


def test_work_area_is_private(relay_settings, tmp_path):
    settings = relay_settings
    settings.work_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(settings.work_dir, 0o755)
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-PRIVATE", n_instances=2, rows=16, columns=16)
    drop_atomically(study.folder, settings.inbox, "ACC-PRIVATE")
    [run] = pipeline.claim_finished_folders(settings)
    batch_id = run["conf"]["batch_id"]
    pipeline.import_batch(batch_id, settings)
    pipeline.get_identifiers(batch_id, settings)
    root = settings.batches_dir / batch_id

    def mode(p):
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(settings.work_dir) == mode(settings.batches_dir) == mode(root) == 0o700
    assert mode(root / "claim.json") == 0o600  # names the folder
    assert mode(root / pipeline.IDENTIFIERS_FILE) == 0o600  # the pseudonym mapping
