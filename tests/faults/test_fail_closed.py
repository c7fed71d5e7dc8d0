"""Faults where the relay must stop and send nothing: a pseudonym missing from the identifier service's answer,
and a work area that fills up while de-identifying. Pipeline level, real services, no Airflow needed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from dicom_relay import pipeline
from dicom_relay.config import Settings
from dicom_relay.errors import PermanentError, RelayError
from tests.support.samples import generate_ct_study
from tests.support.stack.gcs import emulator_client
from tests.support.stack.local import relay_env
from dicom_relay.status import StatusStore

from .helpers import STEPS, claim_one, delivery, digests, run_all

pytestmark = pytest.mark.integration


def base_env(tmp_path: Path, relay_db_url, orthanc, gcs_bucket, identifier_url: str, token: str = "") -> dict:
    env = relay_env(tmp_path / "inbox", tmp_path / "relay", relay_db_url, orthanc, gcs_bucket, identifier_url, token,
                    "fault-suite-secret-key")
    env.update({"RELAY_STABLE_SECONDS": "0", "RELAY_IDENTIFIER_RETRIES": "0", "RELAY_SEND_ATTEMPTS": "2",
                "RELAY_SEND_BACKOFF_SECONDS": "0.1"})
    return env


# ---- a pseudonym missing -----------------------------------------------------------------------------------------

class HalfAnswer:
    """A real HTTP identifier service that answers every entity but leaves one pseudonym out."""

    def __init__(self, blank: str):
        self.blank = blank  # "entity2": the second patient's suid; "item1": the first patient's first accession
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests += 1
                results = []
                for n, ent in enumerate(body["identifiers"], start=1):
                    items = [{"id": it["id"], "id_source": it["id_source"], "suid": f"A-{n}-{m}", "jitter": 7,
                              "jittered_timestamp": None} for m, it in enumerate(ent.get("items", []), start=1)]
                    if outer.blank == "item1" and n == 1 and items:
                        items[0]["suid"] = ""
                    results.append({"id": ent["id"], "id_source": ent["id_source"],
                                    "suid": "" if (outer.blank == "entity2" and n == 2) else f"P-FAULT{n:04d}",
                                    "jitter": 7, "jittered_timestamp": None, "items": items})
                data = json.dumps({"results": results}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # the test's own server logs nothing
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("blank,where", [("entity2", "entity #2"), ("item1", "entity #1, item #1")])
def test_missing_pseudonym_fails_closed_and_names_no_identifier(tmp_path, relay_db_url, orthanc, gcs_bucket,
                                                                gcs_emulator, figures, blank, where):
    service = HalfAnswer(blank)
    try:
        (tmp_path / "inbox").mkdir()
        # A real token: a step refuses to start with an empty one (the fake service does not check it).
        settings = Settings.from_env(base_env(tmp_path, relay_db_url, orthanc, gcs_bucket, service.url,
                                              "fault-suite-identifier-token-0f3a9c"))
        src = tmp_path / "src"
        # One folder, two patients (a sender put two studies in one folder).
        a = generate_ct_study(src / "a", patient_id="MRN-FLT-HALF-A", n_instances=2, rows=32, columns=32)
        b = generate_ct_study(src / "b", patient_id="MRN-FLT-HALF-B", n_instances=2, rows=32, columns=32)
        originals = digests(src)
        folder = f"ACC-FLT-HALF-{blank.upper()}"
        batch_id = claim_one(settings, src, folder)
        auth = (orthanc.user, orthanc.password)
        before = requests.get(f"{orthanc.url}/statistics", auth=auth, timeout=10).json()["CountInstances"]
        pipeline.import_batch(batch_id, settings)
        with pytest.raises(PermanentError) as info:
            pipeline.get_identifiers(batch_id, settings)
        assert service.requests == 1
        figures.fault(f"identifier service answered without a pseudonym ({blank})", service.requests)
        message = str(info.value)
        assert "without a pseudonym" in message and where in message
        batch = StatusStore(settings.db_url).get_batch(batch_id)
        assert batch.status == "ERROR" and batch.errors[-1]["transient"] is False
        recorded = json.dumps(batch.errors) + json.dumps(batch.summary)
        for value in [*a.identifiers(), *b.identifiers(), a.birth_date, folder, "MRN-FLT-HALF"]:
            assert value not in message and value not in recorded, "an identifier in the error"
        # Fail closed: nothing de-identified with a made-up pseudonym, nothing sent, whatever runs next.
        root = settings.batches_dir / batch_id
        assert not (root / "identifiers.json").exists()
        for step in STEPS[2:5]:
            try:
                step(batch_id, settings)
            except RelayError:
                pass
        with pytest.raises(PermanentError):
            pipeline.cleanup(batch_id, settings)
        assert not (root / "deid").exists() or not list((root / "deid").glob("*.dcm"))
        after = requests.get(f"{orthanc.url}/statistics", auth=auth, timeout=10).json()["CountInstances"]
        assert after == before, "something reached Orthanc"
        assert list(emulator_client(gcs_emulator.host, "dicom-relay").list_blobs(gcs_bucket)) == []
        assert digests(root / "incoming") == originals
        assert StatusStore(settings.db_url).get_batch(batch_id).status == "ERROR"
    finally:
        service.stop()


# ---- the disk fills up -----------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 5 MiB tmpfs holding both the inbox and the work area (claiming is a rename: one file system)."""
    mnt = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m,mode=0755", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_during_replace_identifiers(tmp_path, small_disk, relay_db_url, orthanc, gcs_bucket, gcs_emulator,
                                              identifier_service, figures):
    env = base_env(tmp_path, relay_db_url, orthanc, gcs_bucket, identifier_service.url, identifier_service.token)
    env.update({"RELAY_INBOX": str(small_disk / "inbox"), "RELAY_WORK_DIR": str(small_disk / "relay")})
    (small_disk / "inbox").mkdir()
    settings = Settings.from_env(env)
    # 24 slices of 256x256x16 bit: about 3.2 MB; the de-identified copy does not fit beside the originals.
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-FLT-DISK", n_instances=24, rows=256, columns=256)
    originals = digests(study.folder)
    batch_id = claim_one(settings, study.folder, "ACC-FLT-DISKFULL")
    pipeline.import_batch(batch_id, settings)
    pipeline.get_identifiers(batch_id, settings)
    root = settings.batches_dir / batch_id
    with pytest.raises(RelayError) as info:
        pipeline.replace_identifiers(batch_id, settings)
    figures.fault("work area full during replace_identifiers", 1)
    store = StatusStore(settings.db_url)
    batch = store.get_batch(batch_id)
    assert batch.status == "ERROR", batch.errors
    error = batch.errors[-1]
    assert error["task"] == "replace_identifiers"
    assert "space" in error["message"].lower(), error["message"]
    # A full disk is not the study's fault: once space is freed a rerun may work.
    assert error["transient"] is True, error
    assert info.value.transient is True
    # Originals untouched; partial output removed (not even a half-written .part file); instances back to NEW.
    assert digests(root / "incoming") == originals
    assert not (root / "deid").exists() or not any((root / "deid").iterdir())
    assert not list(root.rglob("*.part"))
    assert {i.state for i in store.instances(batch_id)} == {"NEW"}
    # The space the partial output held is given back: what is used is what the batch's files hold.
    assert shutil.disk_usage(small_disk).used <= sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) + 512 * 1024
    # Space is added; the rerun delivers every instance exactly once.
    subprocess.run(["mount", "-o", "remount,size=24m", str(small_disk)], check=True)
    run_all(batch_id, settings)
    d = delivery(settings.db_url, batch_id, study, orthanc.url, (orthanc.user, orthanc.password), gcs_emulator.host,
                 settings.gcs_bucket)
    figures.delivered(d.expected, d.found_both, d.extra)
    assert store.get_batch(batch_id).status == "DONE"
    assert d.complete, d
