"""Every service of the local stack listens on loopback only (the Airflow components: tests/e2e)."""

import pytest

from tests.support.stack.process import is_loopback, listening_addresses

pytestmark = pytest.mark.integration


def test_services_listen_on_loopback_only(postgres, orthanc, gcs_emulator, identifier_service):
    handles = {"postgres": postgres, "orthanc": orthanc, "gcs": gcs_emulator, "identifier-service": identifier_service}
    for name, handle in handles.items():
        addresses = listening_addresses(handle.process.pid())
        assert addresses, f"{name}: no listening socket found (is psutil allowed to see it?)"
        exposed = {a for a in addresses if not is_loopback(a[0])}
        assert not exposed, f"{name} listens beyond loopback: {sorted(exposed)}"
    # Both of Orthanc's servers, which have no listening-address option of their own (see loopback_bind.c).
    assert {orthanc.http_port, orthanc.dicom_port} <= {port for _, port in listening_addresses(orthanc.process.pid())}
