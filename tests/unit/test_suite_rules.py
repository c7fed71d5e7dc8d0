"""The suite's own rules (tests/conftest.py): under CI=true a skip fails the run; otherwise it stays a skip."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("ci", "expected"), [("true", "1 failed"), ("", "1 skipped")])
def test_a_skip_fails_under_ci(tmp_path, ci, expected):
    (tmp_path / "test_missing_tool.py").write_text(
        "import pytest\n\ndef test_needs_a_tool():\n    pytest.skip('the tool is not installed')\n")
    env = {**os.environ, "CI": ci, "PYTHONPATH": f"{REPO / 'include'}{os.pathsep}{REPO}"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "tests.conftest",
                          str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert expected in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    if ci:
        assert out.returncode == 1 and "skipped under CI=true" in out.stdout
