"""Destinations and the identifier service failing under the pipeline, without Airflow (Airflow adds nothing here).

Each real service (Orthanc DICOM and REST, the GCS emulator, the identifier service) sits behind a ``FaultProxy``
on loopback; the relay is pointed at the proxies. Each test switches a fault on, runs the pipeline steps as the
``process_study`` tasks would, and checks: the fault really hit; a fault that ends within the retry budget leaves a
complete delivery; one that outlasts it leaves the batch ``ERROR`` with a transient reason and every file kept; the
rerun once the service is back delivers every instance exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest

from dicom_relay import pipeline
from dicom_relay.config import Settings
from dicom_relay.errors import PermanentError, TransientError
from tests.support.samples import generate_ct_study
from tests.support.faults import FaultProxy
from dicom_relay.status import StatusStore

from .helpers import STEPS, claim_one, delivery, digests, run_all

pytestmark = pytest.mark.integration


@pytest.fixture
def proxies(orthanc, gcs_emulator, identifier_service):
    p = SimpleNamespace(
        dicom=FaultProxy(orthanc.host, orthanc.dicom_port, name="orthanc-dicom").start(),
        rest=FaultProxy(orthanc.host, orthanc.http_port, name="orthanc-rest").start(),
        gcs=FaultProxy("127.0.0.1", gcs_emulator.port, name="gcs").start(),
        ids=FaultProxy("127.0.0.1", identifier_service.port, name="identifier-service").start(),
    )
    yield p
    for proxy in vars(p).values():
        proxy.stop()


@pytest.fixture
def settings(tmp_path, relay_db_url, orthanc, gcs_bucket, identifier_service, proxies, monkeypatch) -> Settings:
    # The GCS client reads STORAGE_EMULATOR_HOST itself: send it through the proxy.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxies.gcs.url)
    monkeypatch.setenv("RELAY_GCS_RETRY_SECONDS", "3")
    env = {
        "RELAY_INBOX": str(tmp_path / "inbox"),
        "RELAY_WORK_DIR": str(tmp_path / "relay"),
        "RELAY_DB_URL": relay_db_url,
        "RELAY_STABLE_SECONDS": "0",
        "RELAY_SECRET_KEY": "fault-suite-secret-key",
        "RELAY_IDENTIFIER_URL": proxies.ids.url,
        "RELAY_IDENTIFIER_TOKEN": identifier_service.token,
        "RELAY_IDENTIFIER_TIMEOUT": "1.5",
        "RELAY_IDENTIFIER_RETRIES": "2",
        "ORTHANC_HOST": "127.0.0.1",
        "ORTHANC_DICOM_PORT": str(proxies.dicom.port),
        "ORTHANC_AE_TITLE": orthanc.ae_title,
        "ORTHANC_URL": proxies.rest.url,
        "ORTHANC_USER": orthanc.user,
        "ORTHANC_PASSWORD": orthanc.password,
        "RELAY_GCS_BUCKET": gcs_bucket,
        # Budget of one task attempt: 4 tries, 0.4 s, 0.8 s, 1.6 s apart (2.8 s of waiting).
        "RELAY_SEND_ATTEMPTS": "4",
        "RELAY_SEND_BACKOFF_SECONDS": "0.4",
    }
    (tmp_path / "inbox").mkdir()
    return Settings.from_env(env)


@pytest.fixture
def check(settings, orthanc, gcs_emulator, figures):
    """``check(batch_id, study)``: the batch is DONE and every instance is at both destinations exactly once."""

    def _check(batch_id: str, study) -> None:
        store = StatusStore(settings.db_url)
        batch = store.get_batch(batch_id)
        d = delivery(settings.db_url, batch_id, study, orthanc.url, orthanc.auth, gcs_emulator.host,
                     settings.gcs_bucket, settings.gcs_prefix)
        figures.delivered(d.expected, d.found_both, d.extra)
        assert batch.status == "DONE", batch.errors
        assert d.complete, d

    return _check


def later(seconds: float, fn) -> threading.Timer:
    timer = threading.Timer(seconds, fn)
    timer.daemon = True
    timer.start()
    return timer


def retry_warnings(caplog, what: str) -> int:
    return sum(1 for r in caplog.records if r.levelno == logging.WARNING and r.getMessage().startswith(f"{what}: attempt"))


def assert_kept(settings: Settings, batch_id: str, originals: dict[str, str], deid_expected: int | None) -> None:
    root = settings.batches_dir / batch_id
    assert digests(root / "incoming") == originals, "an original was changed or lost"
    if deid_expected is not None:
        assert len(list((root / "deid").glob("*.dcm"))) == deid_expected


def last_error(settings: Settings, batch_id: str) -> dict:
    batch = StatusStore(settings.db_url).get_batch(batch_id)
    assert batch.status == "ERROR" and batch.has_error
    return batch.errors[-1]


# ---- Orthanc ---------------------------------------------------------------------------------------------------

def test_orthanc_down_when_send_starts_comes_back_within_budget(settings, proxies, tmp_path, caplog, check, figures):
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-FLT-ORTH-1", n_instances=6, rows=64, columns=64)
    batch_id = claim_one(settings, study.folder, "ACC-FLT-ORTHANC-BACK")
    run_all(batch_id, settings, STEPS[:3])
    proxies.dicom.down()
    proxies.rest.down()
    later(1.0, proxies.rest.up)
    later(1.0, proxies.dicom.up)
    caplog.set_level(logging.WARNING, logger="dicom_relay.pipeline")
    started = time.monotonic()
    summary = pipeline.send_orthanc(batch_id, settings)
    assert time.monotonic() - started >= 1.0
    refused = retry_warnings(caplog, "orthanc")
    figures.fault("orthanc down at send start, back within budget", refused)
    assert summary["verified"] == 6
    run_all(batch_id, settings, STEPS[4:])
    check(batch_id, study)


def test_orthanc_down_for_good_is_transient_error_with_files_kept(settings, proxies, tmp_path, check, figures):
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-FLT-ORTH-2", n_instances=5, rows=64, columns=64)
    originals = digests(study.folder)
    batch_id = claim_one(settings, study.folder, "ACC-FLT-ORTHANC-GONE")
    run_all(batch_id, settings, STEPS[:3])
    proxies.dicom.down()
    proxies.rest.down()
    with pytest.raises(TransientError, match="gave up after 4 attempts"):
        pipeline.send_orthanc(batch_id, settings)
    figures.fault("orthanc down for good", 1)
    error = last_error(settings, batch_id)
    assert error["task"] == "send_orthanc" and error["transient"] is True
    assert "Orthanc" in error["message"]
    with pytest.raises(PermanentError, match="every file is kept"):
        pipeline.cleanup(batch_id, settings)
    assert_kept(settings, batch_id, originals, deid_expected=5)
    # Orthanc is back; the scheduled rerun runs the whole DAG again.
    proxies.dicom.up()
    proxies.rest.up()
    run_all(batch_id, settings)
    check(batch_id, study)


@pytest.mark.parametrize("transport", ["dicom", "rest"])
def test_orthanc_connection_cut_mid_study(settings, proxies, tmp_path, orthanc, check, figures, transport):
    """The connection that carries the instances (the association, or the REST uploads) is cut after part of the
    study went over; Orthanc is unreachable for a moment."""
    settings = settings.with_overrides(orthanc_transport=transport)
    study = generate_ct_study(tmp_path / "src", patient_id=f"MRN-FLT-ORTH-3-{transport}", n_instances=30, rows=128,
                              columns=128)
    batch_id = claim_one(settings, study.folder, f"ACC-FLT-ORTHANC-CUT-{transport}")
    run_all(batch_id, settings, STEPS[:3])
    total = sum(p.stat().st_size for p in (settings.batches_dir / batch_id / "deid").glob("*.dcm"))
    proxy = proxies.dicom if transport == "dicom" else proxies.rest
    proxy.set("pass", cut_after_bytes=total // 3, then="refuse")
    later(1.2, proxy.up)
    summary = pipeline.send_orthanc(batch_id, settings)
    figures.fault(f"orthanc connection cut mid-study ({transport})", proxy.stats.cuts)
    assert summary["verified"] == 30 and summary["transport"] == transport
    run_all(batch_id, settings, STEPS[4:])
    check(batch_id, study)


def test_orthanc_killed_mid_study_then_restarted(settings, tmp_path, gcs_emulator, figures):
    """A private Orthanc is SIGKILLed while it receives the study; the budget runs out; it restarts; rerun."""
    import secrets
    import signal

    import requests

    from tests.support.stack.orthanc import start_orthanc

    password = secrets.token_urlsafe(12)
    private = start_orthanc(tmp_path / "orthanc", password=password)
    try:
        local = settings.with_overrides(orthanc_dicom_port=private.dicom_port, orthanc_url=private.url,
                                        orthanc_password=password)
        study = generate_ct_study(tmp_path / "src", patient_id="MRN-FLT-ORTH-4", n_instances=40, rows=128, columns=128)
        originals = digests(study.folder)
        batch_id = claim_one(local, study.folder, "ACC-FLT-ORTHANC-KILLED")
        run_all(batch_id, local, STEPS[:3])
        killed = {}

        def kill_when_receiving():
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    n = requests.get(f"{private.url}/statistics", auth=private.auth, timeout=2).json()["CountInstances"]
                except requests.RequestException:
                    n = 0
                if n >= 5:
                    killed["at"] = n
                    private.process.signal(signal.SIGKILL)
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=kill_when_receiving, daemon=True)
        watcher.start()
        with pytest.raises(TransientError):
            pipeline.send_orthanc(batch_id, local)
        watcher.join(timeout=30)
        assert "at" in killed, "Orthanc was never seen receiving: the kill did not happen mid-study"
        figures.fault("orthanc SIGKILLed mid-study", 1)
        error = last_error(local, batch_id)
        assert error["transient"] is True and error["task"] == "send_orthanc"
        assert_kept(local, batch_id, originals, deid_expected=40)
        # Restarted on the same ports and storage: what it had received survives; the rerun sends the rest once.
        private = start_orthanc(tmp_path / "orthanc", http_port=private.http_port, dicom_port=private.dicom_port,
                                password=password)
        run_all(batch_id, local)
        store = StatusStore(local.db_url)
        assert store.get_batch(batch_id).status == "DONE"
        d = delivery(local.db_url, batch_id, study, private.url, private.auth, gcs_emulator.host, local.gcs_bucket)
        figures.delivered(d.expected, d.found_both, d.extra)
        assert d.complete, d
    finally:
        private.stop()


# ---- GCS -------------------------------------------------------------------------------------------------------

def test_gcs_503_then_back_within_budget(settings, proxies, tmp_path, check, figures):
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-FLT-GCS-1", n_instances=5, rows=64, columns=64)
    batch_id = claim_one(settings, study.folder, "ACC-FLT-GCS-503")
    run_all(batch_id, settings, STEPS[:4])
    proxies.gcs.set("http", status=503, times=3)
    summary = pipeline.send_gcs(batch_id, settings)
    figures.fault("gcs answering 503", proxies.gcs.stats.http_answers)
    assert proxies.gcs.stats.http_answers == 3
    assert summary["verified"] == 5
    pipeline.cleanup(batch_id, settings)
    check(batch_id, study)


def test_gcs_503_for_good_is_transient_error_with_files_kept(settings, proxies, tmp_path, check, figures):
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-FLT-GCS-2", n_instances=4, rows=64, columns=64)
    originals = digests(study.folder)
    batch_id = claim_one(settings, study.folder, "ACC-FLT-GCS-GONE")
    run_all(batch_id, settings, STEPS[:4])
    proxies.gcs.set("http", status=503)
    with pytest.raises(TransientError, match="GCS unavailable .*gave up after"):
        pipeline.send_gcs(batch_id, settings)
    figures.fault("gcs 503 for good", proxies.gcs.stats.http_answers)
    error = last_error(settings, batch_id)
    assert error["task"] == "send_gcs" and error["transient"] is True and "GCS unavailable" in error["message"]
    with pytest.raises(PermanentError, match="every file is kept"):
        pipeline.cleanup(batch_id, settings)
    assert_kept(settings, batch_id, originals, deid_expected=4)
    proxies.gcs.up()
    run_all(batch_id, settings)
    check(batch_id, study)


def test_gcs_dropped_connections_and_lost_replies_send_nothing_twice(settings, proxies, tmp_path, check, figures):
    """Resets, then replies lost after GCS stored the object: the retry finds its own object, no second copy."""
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-FLT-GCS-3", n_instances=6, rows=64, columns=64)
    batch_id = claim_one(settings, study.folder, "ACC-FLT-GCS-DROP")
    run_all(batch_id, settings, STEPS[:4])
    proxies.gcs.set("reset", times=2)
    first = pipeline.send_gcs(batch_id, settings)
    figures.fault("gcs connections reset", proxies.gcs.stats.connections["reset"])
    assert proxies.gcs.stats.connections["reset"] == 2
    assert first["verified"] == 6
    # Second study of the same patient: now every answer of the first upload requests is lost.
    study2 = generate_ct_study(tmp_path / "src2", patient_id="MRN-FLT-GCS-3", n_instances=6, rows=64, columns=64,
                               study_date="20240202")
    b2 = claim_one(settings, study2.folder, "ACC-FLT-GCS-LOSTREPLY")
    run_all(b2, settings, STEPS[:4])
    proxies.gcs.set("lose_reply", times=3)
    second = pipeline.send_gcs(b2, settings)
    figures.fault("gcs replies lost after the object was stored", proxies.gcs.stats.connections["lose_reply"])
    assert second["verified"] == 6
    # At least one upload had in fact succeeded when its answer was lost: it was found, not written again.
    assert second["already_present"] >= 1
    pipeline.cleanup(batch_id, settings)
    pipeline.cleanup(b2, settings)
    check(batch_id, study)
    check(b2, study2)


# ---- identifier service ------------------------------------------------------------------------------------------

def test_identifier_service_500_then_back(settings, proxies, tmp_path, check, figures):
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-FLT-IDS-1", n_instances=3, rows=32, columns=32)
    batch_id = claim_one(settings, study.folder, "ACC-FLT-IDS-500")
    pipeline.import_batch(batch_id, settings)
    proxies.ids.set("http", status=500, times=2)
    summary = pipeline.get_identifiers(batch_id, settings)
    figures.fault("identifier service answering 500", proxies.ids.stats.http_answers)
    assert proxies.ids.stats.http_answers == 2 and summary["patients"] == 1
    run_all(batch_id, settings, STEPS[2:])
    check(batch_id, study)


@pytest.mark.parametrize("fault", ["hang", "http500"])
def test_identifier_service_failing_for_good_is_transient_error(settings, proxies, tmp_path, check, figures, fault):
    study = generate_ct_study(tmp_path / "src", patient_id=f"MRN-FLT-IDS-{fault}", n_instances=3, rows=32, columns=32)
    originals = digests(study.folder)
    batch_id = claim_one(settings, study.folder, f"ACC-FLT-IDS-{fault.upper()}")
    pipeline.import_batch(batch_id, settings)
    if fault == "hang":
        proxies.ids.set("hang")  # accepts, never answers: the client's 1.5 s timeout, 3 times
    else:
        proxies.ids.set("http", status=500)
    with pytest.raises(TransientError, match="unavailable after 3 attempt"):
        pipeline.get_identifiers(batch_id, settings)
    figures.fault(f"identifier service {fault} for good", proxies.ids.stats.faulted())
    assert proxies.ids.stats.faulted() == 3
    error = last_error(settings, batch_id)
    assert error["task"] == "get_identifiers" and error["transient"] is True
    assert ("no answer within" in error["message"]) if fault == "hang" else ("HTTP 500" in error["message"])
    root = settings.batches_dir / batch_id
    assert not (root / "identifiers.json").exists() and not (root / "deid").exists()
    assert_kept(settings, batch_id, originals, deid_expected=None)
    proxies.ids.up()
    run_all(batch_id, settings)
    check(batch_id, study)
