"""The one in-task retry layer (dicom_relay.retrying) and the work area's file helpers (dicom_relay.files)."""

import json
import os
import stat

import pytest

from dicom_relay.errors import PermanentError, TransientError
from dicom_relay.files import remove_empty_dirs, write_json_atomically
from dicom_relay.retrying import call


def test_transient_errors_are_retried_then_reported_with_the_count(caplog):
    calls = []

    def down():
        calls.append(1)
        raise TransientError("connection refused")

    with pytest.raises(TransientError, match=r"orthanc: connection refused \(gave up after 3 attempts\)"):
        call("orthanc", 3, 0.01, down)
    assert len(calls) == 3
    assert sum("retrying in" in r.getMessage() for r in caplog.records) == 2


def test_success_after_a_transient_error_and_permanent_errors_are_not_retried():
    answers = iter([TransientError("busy"), "stored"])

    def flaky():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert call("orthanc", 3, 0.01, flaky) == "stored"
    calls = []

    def refused():
        calls.append(1)
        raise PermanentError("association rejected")

    with pytest.raises(PermanentError, match="association rejected"):
        call("orthanc", 5, 0.01, refused)
    assert len(calls) == 1


def test_json_written_atomically_with_its_mode_from_the_start(tmp_path):
    target = tmp_path / "identifiers.json"
    write_json_atomically(target, {"patients": {"p1": "x"}}, mode=0o600)
    assert json.loads(target.read_text()) == {"patients": {"p1": "x"}}
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    write_json_atomically(target, {"patients": {}}, mode=0o600)
    assert json.loads(target.read_text()) == {"patients": {}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identifiers.json"]  # no .partial left behind


def test_remove_empty_dirs_keeps_files_and_stops_where_told(tmp_path):
    (tmp_path / "in" / "a" / "b").mkdir(parents=True)
    (tmp_path / "in" / "c").mkdir()
    (tmp_path / "in" / "c" / "kept.dcm").write_bytes(b"x")
    remove_empty_dirs(tmp_path / "in")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["in", "in/c", "in/c/kept.dcm"]
    (tmp_path / "q" / "q0001" / "deep").mkdir(parents=True)
    remove_empty_dirs(tmp_path / "q" / "q0001" / "deep", stop=tmp_path / "q")
    assert (tmp_path / "q").is_dir() and not (tmp_path / "q" / "q0001").exists()
