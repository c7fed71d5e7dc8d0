"""The local stack's process handling: an early exit is reported at once with its log; stop ends every process a
service started, also those that left its process group (as Airflow's task processes do)."""

import os
import time

import pytest

from tests.support.stack.process import ManagedProcess, ServiceError, marked_processes

pytestmark = pytest.mark.integration


def test_an_early_exit_is_reported_at_once_with_the_end_of_its_log(tmp_path):
    proc = ManagedProcess("doomed", ["sh", "-c", "echo 'FATAL: cannot bind'; exit 3"], tmp_path).start()
    started = time.monotonic()
    with pytest.raises(ServiceError, match=r"(?s)doomed exited with code 3.*FATAL: cannot bind"):
        proc.wait_ready(lambda: False, timeout=60)
    assert time.monotonic() - started < 10, "the exit must not wait for the readiness timeout"


def test_stop_ends_descendants_that_left_the_process_group(tmp_path):
    # ``setsid`` puts the child in a session (and process group) of its own, as Airflow does with task processes.
    proc = ManagedProcess("svc", ["sh", "-c", "setsid sleep 300 & exec sleep 300"], tmp_path).start()
    time.sleep(0.5)
    members = marked_processes(proc.marker)
    assert len(members) == 2
    assert len({os.getpgid(p.pid) for p in members}) == 2  # one of them is outside the service's group
    proc.stop(timeout=2)
    assert marked_processes(proc.marker) == []
    assert not any(p.is_running() for p in members)
