"""GcsDestination without a server: object layout, checksums, settings (the client is created lazily)."""

from __future__ import annotations

import base64
import hashlib

import google_crc32c
import pytest

from dicom_relay.config import Settings
from dicom_relay.destinations.gcs import GcsDestination, crc32c_of, file_checksums, md5_of


def test_object_name_layout():
    dest = GcsDestination("bucket", "project")
    assert dest.object_name("PSN01", "2.25.1", "2.25.2", "2.25.3") == "studies/PSN01/2.25.1/2.25.2/2.25.3.dcm"


def test_object_name_honours_the_prefix_and_an_empty_one():
    assert GcsDestination("b", "p", prefix="archive/ct/").object_name("P", "1", "2", "3") == "archive/ct/P/1/2/3.dcm"
    assert GcsDestination("b", "p", prefix="").object_name("P", "1", "2", "3") == "P/1/2/3.dcm"


@pytest.mark.parametrize("bad", ["", "a/b", "..", ".", "x\ny"])
def test_object_name_rejects_components_that_would_change_the_layout(bad):
    with pytest.raises(ValueError, match="patient_pseudonym"):
        GcsDestination("b", "p").object_name(bad, "1", "2", "3")


def test_object_name_errors_do_not_echo_the_value():
    with pytest.raises(ValueError) as caught:
        GcsDestination("b", "p").object_name("PSN", "1", "DOE^JANE/1970", "3")
    assert "series_uid" in str(caught.value) and "DOE" not in str(caught.value)


def test_file_checksums_are_base64_as_gcs_reports_them(tmp_path):
    data = bytes(range(256)) * 5000  # spans several read chunks
    path = tmp_path / "f.dcm"
    path.write_bytes(data)

    md5_b64, crc_b64 = file_checksums(path)

    assert md5_b64 == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert crc_b64 == base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
    # The in-memory checksums of a file up to the multipart limit are the same values.
    assert (md5_of(data), crc32c_of(data)) == (md5_b64, crc_b64)
    assert file_checksums(path, md5=False) == (None, crc_b64)  # the upload's one pass over a large file


def test_from_settings_reads_bucket_project_prefix_and_does_not_connect():
    settings = Settings(gcs_bucket="bkt", gcs_project="prj", gcs_prefix="pre")

    dest = GcsDestination.from_settings(settings, retry_deadline=5)

    assert (dest.bucket_name, dest.project, dest.prefix, dest.retry_deadline) == ("bkt", "prj", "pre", 5.0)
    assert dest._client is None


def test_the_environment_is_read_once_for_the_gcs_endpoint(monkeypatch):
    """Proxy and CA bundle settings still apply although requests no longer re-reads them for every request."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.hospital.example:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.hospital.example:3128")
    monkeypatch.setenv("NO_PROXY", "localhost")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/hospital.pem")
    session = GcsDestination("b", "p", emulator_host="http://gcs.example:4443").client._http

    assert session.trust_env is False
    assert session.proxies["http"] == "http://proxy.hospital.example:3128"
    assert session.verify == "/etc/ssl/certs/hospital.pem"

    monkeypatch.setenv("NO_PROXY", "gcs.example")
    assert "http" not in GcsDestination("b", "p", emulator_host="http://gcs.example:4443").client._http.proxies
