"""OrthancDestination against a real Orthanc (the session ``orthanc`` fixture): storing over both transports
(``rest``: POST /instances, ``dicom``: C-STORE), the REST checks, failures.

Tests about DICOM itself (associations, presentation contexts, TCP_NODELAY, the DICOM port) pin ``dicom``; the
ones about storing and verifying run over both."""

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
from dicom_relay.destinations import orthanc_rest
from dicom_relay.destinations.orthanc import OrthancDestination
from dicom_relay.destinations.orthanc_rest import DEFAULT_WORKERS
from tests.support.faults import FaultProxy
from tests.support.samples import generate_ct_study
from tests.support.stack.process import free_port

pytestmark = pytest.mark.integration


TRANSPORTS = pytest.mark.parametrize("transport", ["rest", "dicom"])


def destination(orthanc, **overrides) -> OrthancDestination:
    params = dict(
        transport="rest",
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


@TRANSPORTS
def test_store_then_study_instances_lists_exactly_the_sent_instances(orthanc, tmp_path, transport):
    sample = study(tmp_path, f"five-{transport}", 5)
    paths = sorted(sample.folder.glob("*.dcm"))

    report = destination(orthanc, transport=transport).store(paths)

    assert report.ok and report.stored_count == 5 and report.failed_count == 0
    assert report.transport == transport
    assert [o.path for o in report.outcomes] == paths
    if transport == "dicom":
        assert report.associations == 1
        assert all(o.status == 0x0000 and o.http_status is None for o in report.outcomes)
    else:
        assert report.workers == 5 and report.associations == 0  # no more threads than files
        assert all(o.http_status == 200 and o.status is None and o.reason is None for o in report.outcomes)
    assert destination(orthanc).study_instances(sample.study_instance_uid) == set(sample.sop_instance_uids)


@TRANSPORTS
def test_verify_reports_the_instance_that_was_not_sent(orthanc, tmp_path, transport):
    sample = study(tmp_path, f"four-{transport}", 4)
    paths = sorted(sample.folder.glob("*.dcm"))
    held_back = pydicom.dcmread(paths[-1], stop_before_pixels=True).SOPInstanceUID

    destination(orthanc, transport=transport).store(paths[:-1])

    assert destination(orthanc).verify(sample.study_instance_uid, set(sample.sop_instance_uids)) == {held_back}
    assert destination(orthanc).study_instances("1.2.826.0.1.3680043.2.1143.404") == set()


@TRANSPORTS
def test_resending_a_stored_instance_succeeds(orthanc, tmp_path, transport):
    sample = study(tmp_path, f"resend-{transport}", 2)
    paths = sorted(sample.folder.glob("*.dcm"))
    destination(orthanc, transport=transport).store(paths)

    report = destination(orthanc, transport=transport).store(paths)

    assert report.ok and report.stored_count == 2
    if transport == "rest":
        # What a resend after a crash gets: Orthanc answers AlreadyStored and keeps its one copy.
        assert {(o.http_status, o.reason) for o in report.outcomes} == {(200, "AlreadyStored")}
    assert destination(orthanc).study_instances(sample.study_instance_uid) == set(sample.sop_instance_uids)


@TRANSPORTS
def test_an_unreadable_file_is_reported_not_raised(orthanc, tmp_path, transport):
    sample = study(tmp_path, f"mixed-{transport}", 2)
    junk = sample.folder / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 20)
    paths = sorted(sample.folder.glob("IM*.dcm")) + [junk]

    report = destination(orthanc, transport=transport).store(paths)

    assert report.stored_count == 2 and report.failed_count == 1
    (failure,) = report.failed
    assert failure.path == junk and failure.status is None
    if transport == "dicom":
        assert "unreadable" in failure.reason  # its File Meta Information is read before the association
    else:
        # Orthanc parses it, refuses it (HTTP 400) and says why by its error name, without quoting the file.
        assert (failure.http_status, failure.reason) == (400, "refused by Orthanc: Bad file format")
        assert failure.describe() == "junk.dcm: HTTP 400 (refused by Orthanc: Bad file format)"
    assert report.summary()["failures"] == [failure.describe()]
    # Nothing lost: the file is where it was, the others are in Orthanc.
    assert junk.read_bytes() == b"not dicom at all" * 20
    assert destination(orthanc).study_instances(sample.study_instance_uid) == set(sample.sop_instance_uids)


def test_rest_an_answer_lost_after_orthanc_stored_is_unavailable_and_the_resend_is_already_stored(orthanc, tmp_path):
    # Orthanc stores the instance, its answer never arrives (a crash, a cut connection): the store is unavailable
    # (transient); the resend that follows finds that instance AlreadyStored, which counts as stored.
    sample = study(tmp_path, "rest-lost-answer", 12)
    paths = sorted(sample.folder.glob("*.dcm"))
    with FaultProxy(orthanc.host, orthanc.http_port, name="orthanc-rest") as proxy:
        proxy.set("lose_reply", times=1)
        through = destination(orthanc, url=proxy.url)
        with pytest.raises(DestinationUnavailable, match="stopped answering during POST /instances") as caught:
            through.store(paths)
        assert proxy.stats.connections["lose_reply"] == 1
        first = caught.value.report
        assert first.failed_count == 0 and first.stored_count < len(paths)

        again = through.store(paths)

    assert again.ok and again.stored_count == len(paths)
    already = [o for o in again.outcomes if o.reason == "AlreadyStored"]
    # Those stored the first time, and the one whose answer was lost.
    assert len(already) == first.stored_count + 1
    assert {o.path for o in first.outcomes} < {o.path for o in already}
    assert destination(orthanc).study_instances(sample.study_instance_uid) == set(sample.sop_instance_uids)


def test_rest_an_orthanc_answering_503_is_unavailable_not_a_per_file_failure(orthanc, tmp_path):
    paths = sorted(study(tmp_path, "rest-503", 4).folder.glob("*.dcm"))
    with FaultProxy(orthanc.host, orthanc.http_port, name="orthanc-rest") as proxy:
        proxy.set("http", status=503)
        with pytest.raises(DestinationUnavailable, match="answered HTTP 503 to POST /instances") as caught:
            destination(orthanc, url=proxy.url).store(paths)
        assert proxy.stats.http_answers >= 1
    assert caught.value.transient and caught.value.report.outcomes == []


def test_rest_a_truncated_or_vanished_file_is_one_failure_among_stored_ones(orthanc, tmp_path):
    sample = study(tmp_path, "rest-cut", 3)
    first, second, third = sorted(sample.folder.glob("*.dcm"))
    cut = tmp_path / "2.25.77.dcm"
    cut.write_bytes(third.read_bytes()[:400])  # the preamble and part of the File Meta Information
    gone = tmp_path / "2.25.78.dcm"

    report = destination(orthanc).store([first, cut, second, gone])

    assert [o.stored for o in report.outcomes] == [True, False, True, False]
    assert report.outcomes[1].describe() == "2.25.77.dcm: HTTP 400 (refused by Orthanc: Bad file format)"
    assert report.outcomes[3].describe() == "2.25.78.dcm: no status (unreadable: FileNotFoundError)"
    assert str(tmp_path) not in " ".join(report.failure_messages())


@TRANSPORTS
def test_many_small_instances_store_without_delayed_ack_stalls(orthanc, tmp_path, transport):
    # With Nagle's algorithm on either side each C-STORE waits for a delayed ACK (40+ ms on Linux loopback):
    # 200 instances would take over 8 s. With TCP_NODELAY they take about a second (urllib3 sets it for REST); the
    # 5 s bound leaves a shared 2-core machine room either way (no wall-clock bound under 2 s in this suite).
    sample = study(tmp_path, f"many-{transport}", 200)
    paths = sorted(sample.folder.glob("*.dcm"))

    started = time.monotonic()
    report = destination(orthanc, transport=transport).store(paths)
    elapsed = time.monotonic() - started

    assert report.stored_count == 200
    assert elapsed < 5.0, f"200 instances over {transport} took {elapsed:.2f}s: is TCP_NODELAY set on both ends?"
    # Spread over several associations / workers that ran side by side, every instance in the order given.
    assert (report.associations, report.workers) == ((4, 0) if transport == "dicom" else (0, DEFAULT_WORKERS))
    assert [o.path for o in report.outcomes] == paths
    assert destination(orthanc).study_instances(sample.study_instance_uid) == set(sample.sop_instance_uids)


@TRANSPORTS
def test_compressed_instances_are_stored_in_their_own_transfer_syntax(orthanc, tmp_path, transport):
    # A different file per transport: Orthanc keeps one copy per SOP Instance UID.
    source = Path(get_testdata_file("JPEG2000.dcm" if transport == "dicom" else "MR_small_jp2klossless.dcm"))
    meta = pydicom.dcmread(source, stop_before_pixels=True)
    assert meta.file_meta.TransferSyntaxUID.is_compressed
    copy = tmp_path / source.name
    shutil.copyfile(source, copy)

    report = destination(orthanc, transport=transport).store([copy])

    assert report.ok
    assert orthanc_transfer_syntax(orthanc, meta.SOPInstanceUID) == meta.file_meta.TransferSyntaxUID


def test_one_sop_class_in_two_transfer_syntaxes_is_sent_as_stored(orthanc, tmp_path):
    sample = study(tmp_path, "two-syntaxes", 2)
    explicit, implicit = sorted(sample.folder.glob("*.dcm"))
    ds = pydicom.dcmread(implicit)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(implicit, implicit_vr=True, little_endian=True, enforce_file_format=True)

    report = destination(orthanc, transport="dicom").store([explicit, implicit])

    assert report.ok and report.associations == 1
    syntaxes = {orthanc_transfer_syntax(orthanc, uid) for uid in sample.sop_instance_uids}
    assert syntaxes == {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2"}


def test_nothing_listening_on_the_dicom_port_is_unavailable_quickly(orthanc, tmp_path):
    sample = study(tmp_path, "refused", 1)
    dead = destination(orthanc, transport="dicom", dicom_port=free_port())

    started = time.monotonic()
    with pytest.raises(DestinationUnavailable, match="unreachable") as caught:
        dead.store(sorted(sample.folder.glob("*.dcm")))

    assert time.monotonic() - started < 5
    assert caught.value.transient


def test_nothing_listening_on_the_rest_port_is_unavailable(orthanc, tmp_path):
    dead = destination(orthanc, url=f"http://127.0.0.1:{free_port()}")

    with pytest.raises(DestinationUnavailable, match="unreachable"):
        dead.study_instances("1.2.3")
    assert dead.ping() is False
    # Storing over REST: the same error family as an unreachable DICOM port, raised quickly, nothing recorded stored.
    paths = sorted(study(tmp_path, "rest-refused", 6).folder.glob("*.dcm"))
    started = time.monotonic()
    unreachable = "unreachable or stopped answering during POST /instances"
    with pytest.raises(DestinationUnavailable, match=unreachable) as caught:
        dead.store(paths)
    assert time.monotonic() - started < 5
    assert caught.value.transient and caught.value.report.stored_count == 0


def test_a_wrong_password_is_a_clear_permanent_error(orthanc, tmp_path):
    wrong = destination(orthanc, password="not-the-password")

    with pytest.raises(DestinationRejected, match="refused the credentials") as caught:
        wrong.study_instances("1.2.3")

    assert not caught.value.transient
    assert "not-the-password" not in str(caught.value)
    assert wrong.ping() is False
    assert destination(orthanc).ping() is True
    # Storing over REST with it: the same permanent error at once, not one failure per file.
    sample = study(tmp_path, "rest-wrong-password", 8)
    refused = "refused the credentials of user 'relay' .*ORTHANC_PASSWORD"
    with pytest.raises(DestinationRejected, match=refused) as caught:
        wrong.store(sorted(sample.folder.glob("*.dcm")))
    assert not caught.value.transient and "not-the-password" not in str(caught.value)
    assert destination(orthanc).study_instances(sample.study_instance_uid) == set()


def test_rest_streams_files_above_the_in_memory_limit(orthanc, tmp_path, monkeypatch):
    # Large (multi-frame) files are streamed from disk so that memory stays bounded; here every file counts as large.
    sample = study(tmp_path, "rest-streamed", 3)
    paths = sorted(sample.folder.glob("*.dcm"))
    monkeypatch.setattr(orthanc_rest, "IN_MEMORY_LIMIT", 1024)
    assert all(p.stat().st_size > 1024 for p in paths)

    report = destination(orthanc).store(paths)

    assert report.ok and {o.reason for o in report.outcomes} == {None}
    assert destination(orthanc).study_instances(sample.study_instance_uid) == set(sample.sop_instance_uids)


def test_rest_url_that_is_not_orthancs_api_is_a_permanent_error(orthanc, tmp_path):
    paths = sorted(study(tmp_path, "rest-wrong-url", 2).folder.glob("*.dcm"))

    not_orthanc = r"no Orthanc REST API \(HTTP 40[45] to POST /instances\); check ORTHANC_URL"
    with pytest.raises(DestinationRejected, match=not_orthanc):
        destination(orthanc, url=f"{orthanc.url}/app").store(paths)


@TRANSPORTS
def test_store_reports_progress_and_pynetdicom_stays_quiet(orthanc, tmp_path, caplog, transport):
    import logging

    from dicom_relay.progress import Progress

    caplog.set_level(logging.INFO)  # the root at INFO, as in an Airflow task log
    paths = sorted(study(tmp_path, f"progress-{transport}", 20).folder.glob("*.dcm"))
    progress = Progress(logging.getLogger("dicom_relay.pipeline"), "send_orthanc", len(paths), "stored")
    report = destination(orthanc, transport=transport).store(paths, progress=progress.advance)
    assert report.stored_count == 20 and progress.done == 20
    lines = [r.getMessage() for r in caplog.records if r.name == "dicom_relay.pipeline"]
    assert [line.split(",")[0] for line in lines] == [f"send_orthanc: {n}/20 stored" for n in range(2, 21, 2)]
    # pynetdicom would log "Sending Store Request" / "Received Store Response" per instance at INFO; over REST,
    # neither requests nor urllib3 log per request at INFO; the relay logs one line per store.
    chatty = [r for r in caplog.records if r.name.startswith(("pynetdicom", "urllib3", "requests"))
              and r.levelno >= logging.INFO]
    assert not [r for r in chatty if r.levelno < logging.WARNING]
    summary = [r.getMessage() for r in caplog.records if r.name == "dicom_relay.destinations.orthanc"]
    assert len(summary) == 1 and f"(transport {transport}," in summary[0]
