"""The relay's modules are imported once in the Airflow components that fork task and DAG-parsing processes."""

import os
import subprocess
import sys

from dicom_relay.airflow.preload import MODULES, forks_relay_code, preload
from tests.support import REPO


def test_only_forking_components_preload():
    assert forks_relay_code(["/venv/bin/airflow", "scheduler", "--skip-serve-logs"])
    assert forks_relay_code(["airflow", "dag-processor"])
    assert forks_relay_code(["airflow", "celery", "worker", "--concurrency", "2"])
    for argv in (["airflow", "api-server"], ["airflow", "triggerer"], ["airflow", "celery", "flower"],
                 ["airflow", "connections", "import", "f.json"], ["airflow"], ["python", "-m", "pytest"]):
        assert not forks_relay_code(argv), argv
    assert preload(["airflow", "api-server"]) == []


def test_every_preloaded_module_imports():
    # A module renamed or moved would otherwise only show as a warning in the scheduler's log.
    assert preload(["airflow", "scheduler"]) == [*MODULES, "airflow.sdk.listener (plugins)"]


def test_airflow_imports_the_local_settings_and_preloads_in_a_scheduler(tmp_path):
    """As make run and docker-compose.yaml set it up: $AIRFLOW_HOME/config/airflow_local_settings.py."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "airflow_local_settings.py").symlink_to(REPO / "config" / "airflow_local_settings.py")
    probe = "import sys; import airflow; print('pydicom' in sys.modules, 'pynetdicom' in sys.modules)"
    results = {}
    for component in ("scheduler", "api-server"):
        done = subprocess.run(
            [sys.executable, "-c", f"import sys; sys.argv = ['airflow', {component!r}]; {probe}"],
            env={**os.environ, "AIRFLOW_HOME": str(tmp_path)}, capture_output=True, text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        results[component] = done.stdout.split()[-2:]
    assert results == {"scheduler": ["True", "True"], "api-server": ["False", "False"]}


def test_a_task_process_parses_the_dag_files_without_importing_anything_heavy(tmp_path):
    """Each task process re-parses its DAG file; what that imports for the first time, every task pays (it was
    ~0.15 s: the ``task`` decorator's operators, packaging's parser, the assets). After the preload, parsing all
    three DAG files may import nothing of the relay, the standard provider, the Task SDK's definitions or
    packaging."""
    code = (
        "import os, sys\n"
        "from dicom_relay.airflow.preload import preload\n"
        "preload(['airflow', 'scheduler'])\n"
        "from airflow.dag_processing.dagbag import BundleDagBag\n"
        "before = set(sys.modules)\n"
        "for f in ('process_study.py', 'watch_inbox.py', 'rerun_errors.py'):\n"
        f"    BundleDagBag(dag_folder=os.path.join({str(REPO / 'dags')!r}, f), safe_mode=False, load_op_links=False,\n"
        f"                 bundle_path={str(REPO / 'dags')!r}, bundle_name='dags-folder')\n"
        "print('NEW', *sorted(set(sys.modules) - before))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
    assert done.returncode == 0, done.stderr[-2000:]
    new = [line for line in done.stdout.splitlines() if line.startswith("NEW")][-1].split()[1:]
    heavy = [m for m in new if m.startswith(("dicom_relay", "packaging", "airflow.providers.standard.operators",
                                             "airflow.sdk.definitions", "airflow.sdk.bases", "pydicom", "numpy"))]
    assert heavy == []
