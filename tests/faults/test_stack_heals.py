"""A local stack that heals: each service SIGKILLed in turn with a batch in flight; the stack's ``up`` (what
``make run`` does) starts only what is down, leaves the rest and their tasks alone, and every batch ends DONE with
every instance delivered once; ``make stop`` then leaves no process behind (task processes included)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from tests.support.samples import drop_atomically, generate_ct_study
from tests.support.stack.local import SERVICE_NAMES, _service, start_stack, stop_all
from tests.support.stack.process import marked_processes, wait_until
from dicom_relay.status import StatusStore

from .helpers import delivery
from .test_airflow_kills import FAULT_ENV

pytestmark = pytest.mark.e2e

INSTANCES = 10


def main_pid(leader: int) -> int:
    """The process to kill: the service itself (PostgreSQL's postmaster, not the runuser that started it)."""
    proc = psutil.Process(leader)
    if Path(proc.exe()).name == "runuser":
        return proc.children()[0].pid
    return leader


def test_each_service_killed_with_a_batch_in_flight_heals_on_up(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("healing-stack").resolve()
    sources = tmp_path_factory.mktemp("healing-sources")
    # Durable like make run's: a SIGKILLed PostgreSQL without synchronous commit loses its last commits.
    stack = start_stack(run_dir, base_env=dict(FAULT_ENV), durable=True)
    env = stack.env
    store = StatusStore(env["RELAY_DB_URL"])
    planted = {}
    try:
        for n, name in enumerate(SERVICE_NAMES):
            folder = f"ACC-HEAL-{n}"
            study = generate_ct_study(sources / folder, patient_id=f"MRN-HEAL-{n}", n_instances=INSTANCES,
                                      rows=64, columns=64)
            drop_atomically(study.folder, Path(env["RELAY_INBOX"]), folder, suffix=".tmp0042")
            planted[folder] = study
            # In flight: claimed and its process_study run requested.
            wait_until(lambda: any(b.folder == folder and b.run_id for b in store.list_batches(limit=50)), 120,
                       f"the run of batch {n}", interval=0.3)
            os.kill(main_pid(_service(run_dir, name).pid()), signal.SIGKILL)
            wait_until(lambda: not _service(run_dir, name).is_running(), 30, f"{name} to die")
            before = {s: _service(run_dir, s).pid() for s in SERVICE_NAMES if _service(run_dir, s).is_running()}
            healed = start_stack(run_dir, base_env=dict(FAULT_ENV), durable=True)
            assert name in healed.started
            assert all(_service(run_dir, s).is_running() for s in SERVICE_NAMES)
            # What was running is left alone: the same processes, unless one exited by itself after losing a
            # service it depends on (Airflow's scheduler when PostgreSQL restarts), which is then started too.
            kept = {s: pid for s, pid in before.items() if s not in healed.started}
            assert {s: _service(run_dir, s).pid() for s in kept} == kept
            assert set(healed.started) - {name} <= {"airflow-scheduler", "airflow-triggerer",
                                                     "airflow-dag-processor", "airflow-api-server"}

        def all_done() -> bool:
            batches = [b for b in store.list_batches(limit=50) if b.folder in planted]
            return len(batches) == len(planted) and all(b.status == "DONE" for b in batches)

        wait_until(all_done, 240, "every batch DONE", interval=2)
        for folder, study in planted.items():
            batch = next(b for b in store.list_batches(limit=50) if b.folder == folder)
            found = delivery(env["RELAY_DB_URL"], batch.batch_id, study, env["ORTHANC_URL"],
                             (env["ORTHANC_USER"], env["ORTHANC_PASSWORD"]), env["STORAGE_EMULATOR_HOST"],
                             env["RELAY_GCS_BUCKET"])
            assert found.complete, (folder, found)
    finally:
        stopped = stop_all(run_dir)
    assert set(stopped) == set(SERVICE_NAMES)
    left = [p.pid for name in SERVICE_NAMES for p in marked_processes(_service(run_dir, name).marker)]
    assert left == [], "make stop left processes of the stack running"
