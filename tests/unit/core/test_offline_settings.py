"""The offline commands' settings reader (no pydantic) against Settings.from_env: same values, same errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dicom_relay.config import ConfigError, Settings
from dicom_relay.offline_settings import OfflineSettings
from tests.support import REPO

FIELDS = ("identifier_id_source", "deid_options", "pixel_policy")
ENVIRONMENTS = [
    {},
    {"RELAY_SECRET_KEY": "a-long-key", "RELAY_IDENTIFIER_ID_SOURCE": "EPIC", "RELAY_PIXEL_POLICY": " All-Text "},
    {"RELAY_SECRET_KEY": "", "RELAY_IDENTIFIER_ID_SOURCE": "", "RELAY_DEID_OPTIONS": "", "RELAY_PIXEL_POLICY": ""},
    {"RELAY_DEID_OPTIONS": '{"retain_safe_private": true, "dates": "full"}', "RELAY_PIXEL_POLICY": "HOLD"},
    {"RELAY_DEID_OPTIONS": "{}", "RELAY_SECRET_KEY": " spaced key "},
    {"RELAY_DEID_OPTIONS": "null"},
]
BAD = [
    {"RELAY_DEID_OPTIONS": "not json"},
    {"RELAY_DEID_OPTIONS": "[1, 2]"},
    {"RELAY_DEID_OPTIONS": "true"},
    {"RELAY_PIXEL_POLICY": "strict"},
    {"RELAY_PIXEL_POLICY": "  "},
    {"RELAY_DEID_OPTIONS": "3", "RELAY_PIXEL_POLICY": "none"},
]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_same_values_as_settings(env):
    full, offline = Settings.from_env(env), OfflineSettings.from_env(env)
    assert {f: getattr(offline, f) for f in FIELDS} == {f: getattr(full, f) for f in FIELDS}
    assert offline.secret_key.get_secret_value() == full.secret_key.get_secret_value()
    assert bool(offline.secret_key) == bool(full.secret_key)


@pytest.mark.parametrize("env", BAD)
def test_same_errors_as_settings(env):
    with pytest.raises(ConfigError) as full:
        Settings.from_env(env)
    with pytest.raises(ConfigError) as offline:
        OfflineSettings.from_env(env)
    assert str(offline.value) == str(full.value)


def test_the_secret_stays_out_of_repr():
    s = OfflineSettings.from_env({"RELAY_SECRET_KEY": "s3cr3t-key"})
    assert "s3cr3t-key" not in repr(s) and "s3cr3t-key" not in str(s.secret_key)


def test_deidentify_runs_without_pydantic_or_pydicom(tmp_path):
    """What keeps ``dicom-relay deidentify`` fast to start and run: on files the raw path takes (a generated CT
    study), neither pydantic nor pydicom is imported (each costs more CPU than hundreds of files)."""
    from tests.support.samples import generate_ct_study

    study = generate_ct_study(tmp_path / "in", n_instances=2, n_series=1, rows=16, columns=16)
    code = ("import sys; from dicom_relay import cli; rc = cli.main(['deidentify', sys.argv[1], sys.argv[2]]); "
            "print(sorted(m for m in ('pydicom', 'pydantic', 'pydantic_settings', 'numpy', 'requests') "
            "if m in sys.modules)); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, str(study.folder), str(tmp_path / "out")], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": str(REPO / "include"),
                                         "RELAY_SECRET_KEY": "offline-test-key"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "[]"
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 2
