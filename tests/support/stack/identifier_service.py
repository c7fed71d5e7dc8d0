"""Start and stop the reference identifier service for ``make run`` and the tests.

The service runs as ``python -m dicom_relay.identifiers.service`` under ``ManagedProcess`` (pid file and log
under ``run_dir``), on loopback, with its SQLite mapping under ``run_dir`` so that a restart with the same
``run_dir`` finds every pseudonym again. The token is handed over in the environment, not on the command line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests

from dicom_relay.identifiers.service import TOKEN_ENV
from tests.support.stack.process import ManagedProcess, ServiceError, free_port

LOOPBACK = "127.0.0.1"
NAME = "identifier-service"


@dataclass
class IdentifierServiceHandle:
    """A running service: ``url`` is the value for ``RELAY_IDENTIFIER_URL``, ``token`` for ``RELAY_IDENTIFIER_TOKEN``."""

    process: ManagedProcess
    url: str
    port: int
    db_path: Path
    token: str = field(default="", repr=False)

    def stop(self) -> None:
        self.process.stop()


def start_identifier_service(
    run_dir: Path,
    port: int | None = None,
    token: str = "",
    db_path: Path | None = None,
    timeout: float = 30.0,
    reuse: bool = False,
) -> IdentifierServiceHandle:
    """Start the service on loopback (a free port unless ``port`` is given) and wait until ``/health`` answers."""
    run_dir = Path(run_dir)
    db_path = Path(db_path) if db_path is not None else run_dir / NAME / "identifiers.sqlite"
    port = port or free_port(LOOPBACK)
    url = f"http://{LOOPBACK}:{port}"
    process = ManagedProcess(
        NAME,
        [sys.executable, "-m", "dicom_relay.identifiers.service", "--host", LOOPBACK, "--port", port, "--db", db_path],
        run_dir,
        # Always set, even empty: a token inherited from the caller's environment must not sneak in.
        env={TOKEN_ENV: token, "PYTHONUNBUFFERED": "1"},
    )
    handle = IdentifierServiceHandle(process=process, url=url, port=port, db_path=db_path, token=token)
    if reuse and process.is_running():
        return handle  # ``make run`` again: a running service is left alone
    if process.is_running():
        raise ServiceError(f"{NAME} is already running (pid {process.pid()}); stop it first")
    process.start()
    try:
        process.wait_ready(lambda: requests.get(f"{url}/health", timeout=2).status_code == 200, timeout)
    except BaseException:
        process.stop()
        raise
    return handle
