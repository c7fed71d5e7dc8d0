"""OrthancDestination against a real Orthanc (the session ``orthanc`` fixture): C-STORE, REST checks, failures."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import ImplicitVRLittleEndian

from dicom_relay.destinations.errors import DestinationRejected, DestinationUnavailable
from dicom_relay.destinations.orthanc import OrthancDestination
from tests.support.samples import generate_ct_study
from tests.support.stack.process import free_port

pytestmark = pytest.mark.integration


def destination(orthanc, **overrides) -> OrthancDestination:
    params = dict(
        host=orthanc.host,
        dicom_port=orthanc.dicom_port,
        ae_title=orthanc.ae_title,
        calling_ae_title="RELAYTEST",
        url=orthanc.url,
        user=orthanc.user,
        password=orthanc.password,
        timeout=10,
    )
    params.update(overrides)
    return OrthancDestination(**params)


def study(tmp_path: Path, name: str, n: int):
    # A distinct seed per test: the Orthanc instance is shared by the whole session.
    return generate_ct_study(tmp_path / name, n_instances=n, rows=64, columns=64, seed=f"{name}-{tmp_path.name}")


def orthanc_transfer_syntax(orthanc, sop_instance_uid: str) -> str:
    found = requests.post(
        f"{orthanc.url}/tools/find",
        json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}},
        auth=orthanc.auth,
        timeout=10,
    ).json()
    assert len(found) == 1
    return requests.get(
        f"{orthanc.url}/instances/{found[0]}/metadata/TransferSyntax", auth=orthanc.auth, timeout=10
    ).text


def test_store_then_study_instances_lists_exactly_the_sent_instances(orthanc, tmp_path):
    sample = study(tmp_path, "five", 5)
    paths = sorted(sample.folder.glob("*.dcm"))

    report = destination(orthanc).store(paths)

    assert report.ok and report.stored_count == 5 and report.failed_count == 0
    assert report.associations == 1
    assert [o.path for o in report.outcomes] == paths
    assert all(o.status == 0x0000 for o in report.outcomes)
    assert destination(orthanc).study_instances(sample.study_instance_uid) == set(sample.sop_instance_uids)


def test_verify_reports_the_instance_that_was_not_sent(orthanc, tmp_path):
    sample = study(tmp_path, "four", 4)
    paths = sorted(sample.folder.glob("*.dcm"))
    held_back = pydicom.dcmread(paths[-1], stop_before_pixels=True).SOPInstanceUID

    destination(orthanc).store(paths[:-1])

    assert destination(orthanc).verify(sample.study_instance_uid, set(sample.sop_instance_uids)) == {held_back}
    assert destination(orthanc).study_instances("1.2.826.0.1.3680043.2.1143.404") == set()


def test_resending_a_stored_instance_succeeds(orthanc, tmp_path):
    sample = study(tmp_path, "resend", 2)
    paths = sorted(sample.folder.glob("*.dcm"))
    destination(orthanc).store(paths)

    report = destination(orthanc).store(paths)

    assert report.ok and report.stored_count == 2


def test_an_unreadable_file_is_reported_not_raised(orthanc, tmp_path):
    sample = study(tmp_path, "mixed", 2)
    junk = sample.folder / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 20)
    paths = sorted(sample.folder.glob("IM*.dcm")) + [junk]

    report = destination(orthanc).store(paths)

    assert report.stored_count == 2 and report.failed_count == 1
    (failure,) = report.failed
    assert failure.path == junk and failure.status is None and "unreadable" in failure.reason
    assert report.summary()["failures"] == [failure.describe()]


def test_many_small_instances_store_without_delayed_ack_stalls(orthanc, tmp_path):
    # With Nagle's algorithm on either side each C-STORE waits for a delayed ACK (40+ ms on Linux loopback):
    # 200 instances would take over 8 s. With TCP_NODELAY they take about a second; the 5 s bound leaves a shared
    # 2-core machine room either way (no wall-clock bound under 2 s in this suite).
    sample = study(tmp_path, "many", 200)
    paths = sorted(sample.folder.glob("*.dcm"))

    started = time.monotonic()
    report = destination(orthanc).store(paths)
    elapsed = time.monotonic() - started

    assert report.stored_count == 200
    assert elapsed < 5.0, f"200 C-STOREs took {elapsed:.2f}s: is TCP_NODELAY set on both ends?"
    # Spread over several associations that ran side by side, every instance in the order given.
    assert report.associations == 4
    assert [o.path for o in report.outcomes] == paths
    assert destination(orthanc).study_instances(sample.study_instance_uid) == set(sample.sop_instance_uids)


def test_compressed_instances_are_stored_in_their_own_transfer_syntax(orthanc, tmp_path):
    source = Path(get_testdata_file("JPEG2000.dcm"))
    meta = pydicom.dcmread(source, stop_before_pixels=True)
    assert meta.file_meta.TransferSyntaxUID.is_compressed
    copy = tmp_path / source.name
    shutil.copyfile(source, copy)

    report = destination(orthanc).store([copy])

    assert report.ok
    assert orthanc_transfer_syntax(orthanc, meta.SOPInstanceUID) == meta.file_meta.TransferSyntaxUID


def test_one_sop_class_in_two_transfer_syntaxes_is_sent_as_stored(orthanc, tmp_path):
    sample = study(tmp_path, "two-syntaxes", 2)
    explicit, implicit = sorted(sample.folder.glob("*.dcm"))
    ds = pydicom.dcmread(implicit)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(implicit, implicit_vr=True, little_endian=True, enforce_file_format=True)

    report = destination(orthanc).store([explicit, implicit])

    assert report.ok and report.associations == 1
    syntaxes = {orthanc_transfer_syntax(orthanc, uid) for uid in sample.sop_instance_uids}
    assert syntaxes == {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2"}


def test_nothing_listening_on_the_dicom_port_is_unavailable_quickly(orthanc, tmp_path):
    sample = study(tmp_path, "refused", 1)
    dead = destination(orthanc, dicom_port=free_port())

    started = time.monotonic()
    with pytest.raises(DestinationUnavailable, match="unreachable") as caught:
        dead.store(sorted(sample.folder.glob("*.dcm")))

    assert time.monotonic() - started < 5
    assert caught.value.transient


def test_nothing_listening_on_the_rest_port_is_unavailable(orthanc):
    dead = destination(orthanc, url=f"http://127.0.0.1:{free_port()}")

    with pytest.raises(DestinationUnavailable, match="unreachable"):
        dead.study_instances("1.2.3")
    assert dead.ping() is False


def test_a_wrong_password_is_a_clear_permanent_error(orthanc):
    wrong = destination(orthanc, password="not-the-password")

    with pytest.raises(DestinationRejected, match="refused the credentials") as caught:
        wrong.study_instances("1.2.3")

    assert not caught.value.transient
    assert "not-the-password" not in str(caught.value)
    assert wrong.ping() is False
    assert destination(orthanc).ping() is True


def test_store_reports_progress_and_pynetdicom_stays_quiet(orthanc, tmp_path, caplog):
    import logging

    from dicom_relay.progress import Progress

    caplog.set_level(logging.INFO)  # the root at INFO, as in an Airflow task log
    paths = sorted(study(tmp_path, "progress", 20).folder.glob("*.dcm"))
    progress = Progress(logging.getLogger("dicom_relay.pipeline"), "send_orthanc", len(paths), "stored")
    report = destination(orthanc).store(paths, progress=progress.advance)
    assert report.stored_count == 20 and progress.done == 20
    lines = [r.getMessage() for r in caplog.records if r.name == "dicom_relay.pipeline"]
    assert [line.split(",")[0] for line in lines] == [f"send_orthanc: {n}/20 stored" for n in range(2, 21, 2)]
    # pynetdicom would log "Sending Store Request" / "Received Store Response" per instance at INFO.
    assert not [r for r in caplog.records if r.name.startswith("pynetdicom") and r.levelno < logging.WARNING]
