"""Run ``dicom-relay`` as a person does: a real subprocess with a minimal environment."""

from __future__ import annotations

import subprocess
import sys

from . import REPO


def run_cli(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """``python -m dicom_relay.cli ARGS`` with only PATH, HOME and ``env``; the checkout's library, not whatever an
    installed copy points at."""
    base = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": str(REPO / "include")}
    return subprocess.run([sys.executable, "-m", "dicom_relay.cli", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=120, **kw)
