"""GcsDestination against fake-gcs-server (session ``gcs_emulator``, a fresh ``gcs_bucket`` per test)."""

from __future__ import annotations

import time

import pytest

from dicom_relay.destinations.errors import DestinationConflict, DestinationRejected, DestinationUnavailable
from dicom_relay.destinations.gcs import GcsDestination, file_checksums
from tests.support.faults import FaultProxy
from tests.support.samples import generate_ct_study
from tests.support.stack.gcs import start_gcs_emulator

pytestmark = pytest.mark.integration

METADATA = {"batch_id": "20240314T101500-abcdef", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2"}


@pytest.fixture
def instance(tmp_path):
    sample = generate_ct_study(tmp_path / "study", n_instances=2, rows=64, columns=64)
    return sorted(sample.folder.glob("*.dcm"))


def name_for(dest: GcsDestination, sop: str = "2.25.3") -> str:
    return dest.object_name("PSN0001", "2.25.1", "2.25.2", sop)


def test_upload_then_verify(gcs_bucket, instance):
    dest = GcsDestination(gcs_bucket, project="relay-test")
    name = name_for(dest)

    result = dest.upload(instance[0], name, METADATA)

    assert result.skipped is False and result.object_name == name
    assert result.verified, "GCS answered the upload with the CRC32C of what it stored"
    md5, crc = file_checksums(instance[0])
    assert result.crc32c_b64 == crc and result.md5_b64 == md5, "the MD5 recorded is GCS's, of the same bytes"
    assert dest.verify(name, result.md5_b64) is True
    assert dest.list_objects() == [(name, result.md5_b64, METADATA)]
    assert dest.bucket.get_blob(name).content_type == "application/dicom"


def test_second_upload_of_the_same_bytes_is_skipped(gcs_bucket, instance):
    dest = GcsDestination(gcs_bucket, project="relay-test")
    name = name_for(dest)
    first = dest.upload(instance[0], name, METADATA)

    again = dest.upload(instance[0], name, METADATA)

    assert again.skipped is True and again.md5_b64 == first.md5_b64


def test_different_bytes_under_an_existing_name_conflict_and_never_overwrite(gcs_bucket, instance):
    dest = GcsDestination(gcs_bucket, project="relay-test")
    name = name_for(dest)
    first = dest.upload(instance[0], name, METADATA)

    with pytest.raises(DestinationConflict, match="never overwritten") as caught:
        dest.upload(instance[1], name, METADATA)

    assert not caught.value.transient
    assert dest.verify(name, first.md5_b64) is True


def test_verify_is_false_for_a_wrong_md5_or_a_missing_object(gcs_bucket, instance):
    dest = GcsDestination(gcs_bucket, project="relay-test")
    name = name_for(dest)
    dest.upload(instance[0], name, METADATA)

    assert dest.verify(name, file_checksums(instance[1])[0]) is False
    assert dest.verify(name_for(dest, sop="2.25.999"), file_checksums(instance[0])[0]) is False


def test_bytes_damaged_on_the_way_fail_the_upload(gcs_bucket, gcs_emulator, instance):
    """What GCS stored must have the CRC32C of the bytes read here: one byte inverted in transit fails the upload.

    Real GCS refuses such an upload (the request declares the file's CRC32C); fake-gcs-server stores the
    damaged bytes and answers with their CRC32C, which the destination must not take for a success."""
    port = int(gcs_emulator.host.rsplit(":", 1)[1])
    with FaultProxy("127.0.0.1", port, name="gcs") as proxy:
        dest = GcsDestination(gcs_bucket, project="relay-test", emulator_host=proxy.url, retry_deadline=5.0)
        proxy.set("corrupt", at_byte=3000)  # past the request head and the JSON part: inside the DICOM file

        with pytest.raises(DestinationUnavailable, match="CRC32C|checksums") as caught:
            dest.upload(instance[0], name_for(dest), METADATA)

        assert proxy.stats.corrupted == 1
        assert caught.value.transient


def test_large_files_are_create_only_too(gcs_bucket, tmp_path):
    # Above 8 MiB the client switches to resumable uploads, whose precondition the emulator ignores: the
    # destination must still refuse to overwrite.
    dest = GcsDestination(gcs_bucket, project="relay-test")
    big = tmp_path / "big.dcm"
    big.write_bytes(b"\1" * (9 * 1024 * 1024))
    name = name_for(dest)
    assert dest.upload(big, name, {}).skipped is False
    assert dest.upload(big, name, {}).skipped is True

    big.write_bytes(b"\2" * (9 * 1024 * 1024))
    with pytest.raises(DestinationConflict):
        dest.upload(big, name, {})


def test_manifest_is_json_and_replaced_on_rewrite(gcs_bucket):
    dest = GcsDestination(gcs_bucket, project="relay-test")
    name = "studies/PSN0001/2.25.1/manifest.json"

    dest.write_manifest(name, {"instances": 1})
    second = dest.write_manifest(name, {"instances": 2})

    blob = dest.bucket.get_blob(name)
    assert blob.content_type == "application/json"
    assert blob.download_as_bytes() and dest.verify(name, second.md5_b64)


def test_missing_bucket_is_a_permanent_error(gcs_bucket, instance):
    dest = GcsDestination(gcs_bucket + "-missing", project="relay-test")

    with pytest.raises(DestinationRejected, match="does not exist"):
        dest.upload(instance[0], name_for(dest), METADATA)


def test_stopped_emulator_is_unavailable_within_the_retry_deadline(tmp_path, monkeypatch, instance):
    # A private emulator: the session one must keep running for the other tests.
    emulator = start_gcs_emulator(tmp_path / "private", bucket="doomed")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.host)
    dest = GcsDestination("doomed", project="relay-test", retry_deadline=3.0)
    dest.upload(instance[0], name_for(dest), METADATA)
    emulator.stop()

    started = time.monotonic()
    with pytest.raises(DestinationUnavailable, match="unavailable") as caught:
        dest.upload(instance[1], name_for(dest, sop="2.25.4"), METADATA)

    assert time.monotonic() - started < 10
    assert caught.value.transient
    assert dest.ping() is False


def test_emulator_given_as_a_plain_value_not_the_environment(gcs_bucket, gcs_emulator, instance, monkeypatch):
    """Inside Airflow the emulator comes from the relay_gcs Connection, not from STORAGE_EMULATOR_HOST."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    dest = GcsDestination(gcs_bucket, project="relay-test", emulator_host=gcs_emulator.host)
    name = "studies/P/1.2/1.2.3/plain-value.dcm"
    result = dest.upload(instance[0], name, METADATA)
    assert dest.verify(name, result.md5_b64)
