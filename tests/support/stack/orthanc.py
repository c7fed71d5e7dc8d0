"""Start and stop a private Orthanc (the Debian ``/usr/sbin/Orthanc``) for ``make run`` and the tests.

The instance is isolated from any system Orthanc that the Debian package may have started on 4242/8042:
it gets its own configuration file, storage and index under ``run_dir``, its own ports (free ones unless
given), and loads no plugins (Debian's ``/usr/share/orthanc/plugins`` would otherwise be picked up through
the packaged configuration).

Exposure: both ports listen on loopback only. Orthanc 1.10.1 has no option for the address its servers listen
on (``RemoteAccessAllowed`` false only refuses remote HTTP clients once connected; the DICOM port has nothing),
so Orthanc runs with ``loopback_bind.so`` preloaded: a 30-line shim (``loopback_bind.c``, built here with the
system C compiler) that turns a bind to the wildcard address into a bind to loopback. The REST API also refuses
non-loopback clients and requires basic authentication.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import requests

from dicom_relay.files import write_private_text
from tests.support.stack.process import ManagedProcess, free_port, port_open

ORTHANC_BINARY = "/usr/sbin/Orthanc"
LOOPBACK = "127.0.0.1"
SHIM_SOURCE = Path(__file__).with_name("loopback_bind.c")


def loopback_shim(build_dir: Path) -> Path:
    """``loopback_bind.so`` built from ``loopback_bind.c`` into ``build_dir`` (again when the source is newer)."""
    shim = Path(build_dir) / "loopback_bind.so"
    if not shim.exists() or shim.stat().st_mtime < SHIM_SOURCE.stat().st_mtime:
        shim.parent.mkdir(parents=True, exist_ok=True)
        built = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(SHIM_SOURCE), "-ldl"],
                               capture_output=True, text=True)
        if built.returncode != 0:
            raise RuntimeError(f"could not build {shim.name} (gcc and libc6-dev: scripts/setup.sh):\n{built.stderr}")
    return shim


@dataclass
class OrthancHandle:
    """A running Orthanc: where to reach it over DICOM and REST, and the process to stop."""

    process: ManagedProcess
    url: str
    host: str
    dicom_port: int
    http_port: int
    ae_title: str
    user: str
    password: str = field(repr=False)

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    def stop(self) -> None:
        self.process.stop()


def orthanc_config(
    run_dir: Path, http_port: int, dicom_port: int, user: str, password: str, ae_title: str
) -> dict:
    """The complete Orthanc configuration of a relay stack (no setting is inherited from /etc/orthanc)."""
    return {
        "Name": "dicom-relay",
        "StorageDirectory": str(run_dir / "storage"),
        "IndexDirectory": str(run_dir / "index"),
        # Files are kept exactly as received (no zlib of the attachment): what we verify is what was sent.
        "StorageCompression": False,
        "MaximumStorageSize": 0,
        "MaximumPatientCount": 0,
        # Debian's packaged configuration points at the system plugin folder; load nothing.
        "Plugins": [],
        "ConcurrentJobs": 2,
        "SaveJobs": False,
        # REST: loopback clients only, with basic authentication.
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {user: password},
        "HttpDescribeErrors": True,
        "KeepAlive": True,
        "TcpNoDelay": True,
        # DICOM: accept C-STORE from any calling AE, for any storage SOP class and transfer syntax,
        # whatever called AE title the sender uses.
        "DicomServerEnabled": True,
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        # The largest P-DATA PDU Orthanc accepts (its maximum; the default is 16384). A sender splits each instance
        # into PDUs of at most this size: 5 instead of 33 for a 512x512 CT slice. pynetdicom's cost is per PDU,
        # so this cut the relay's CPU per C-STORE by about a quarter and Orthanc's by about a tenth
        # (scripts/bench_send.py, docs/MEASUREMENTS.md).
        "MaximumPduLength": 131072,
        "UnknownSopClassAccepted": True,
        "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],
        "DicomModalities": {},
        "OrthancPeers": {},
        # A resent instance keeps the first copy; "IngestTranscoding" is left unset so files are stored as sent.
        "OverwriteInstances": False,
        "DeidentifyLogs": True,
        # MainDicomTags (SOPInstanceUID among them) are in the index: /tools/find need not read files.
        "StorageAccessOnFind": "Never",
    }


def start_orthanc(
    run_dir: Path,
    http_port: int | None = None,
    dicom_port: int | None = None,
    user: str = "relay",
    password: str | None = None,
    ae_title: str = "ORTHANC",
    timeout: float = 60.0,
    reuse: bool = False,
) -> OrthancHandle:
    """Start Orthanc with its configuration, storage and index under ``run_dir``; wait until REST answers.

    ``run_dir`` holds ``orthanc.json`` (mode 0600), ``storage/``, ``index/``, ``logs/orthanc.log`` and
    ``pids/orthanc.pid``; a restart on the same ``run_dir`` finds the stored instances again.

    ``password`` is required (the REST API always has authentication). Ports default to free ones; never rely
    on 4242/8042, a system Orthanc may hold them.
    """
    if not password:
        raise ValueError("start_orthanc needs a password: the Orthanc REST API always requires authentication")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    http_port = http_port or free_port(LOOPBACK)
    dicom_port = dicom_port or free_port(LOOPBACK)
    if http_port == dicom_port:  # two free_port() calls can, rarely, return the same number
        dicom_port = free_port(LOOPBACK)

    config_path = run_dir / "orthanc.json"
    config = orthanc_config(run_dir, http_port, dicom_port, user, password, ae_title)
    write_private_text(config_path, json.dumps(config, indent=2))  # it holds the REST password

    process = ManagedProcess(
        "orthanc",
        [ORTHANC_BINARY, config_path],
        run_dir,
        # DCMTK (Orthanc's DICOM layer) leaves Nagle's algorithm on unless TCP_NODELAY is set: every C-STORE
        # response then waits for the peer's delayed ACK, 40-90 ms per instance on loopback.
        env={"TCP_NODELAY": "1", "LD_PRELOAD": str(loopback_shim(run_dir))},
        cwd=run_dir,
    )
    url = f"http://{LOOPBACK}:{http_port}"
    handle = OrthancHandle(process=process, url=url, host=LOOPBACK, dicom_port=dicom_port, http_port=http_port,
                           ae_title=ae_title, user=user, password=password)
    if reuse and process.is_running():
        return handle  # ``make run`` again: a running Orthanc is left alone
    process.start()
    try:
        process.wait_ready(
            lambda: requests.get(f"{url}/system", auth=(user, password), timeout=2).status_code == 200
            and port_open(LOOPBACK, dicom_port),
            timeout,
        )
    except BaseException:
        process.stop()
        raise
    return handle
