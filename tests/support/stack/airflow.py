"""A real Airflow 3 for the local stack and the end-to-end tests: api-server, scheduler, dag-processor, triggerer.

LocalExecutor (or, given a ``CeleryConfig``, the CeleryExecutor with Redis as broker, the metadata database as
result backend and ``celery_workers`` ``airflow celery worker`` processes) on a PostgreSQL metadata database, the
SimpleAuthManager (authentication on) with one user per role the relay's operations use: ``viewer`` (reads), ``op``
(answers reviews, acts on runs), ``admin``; and ``relay`` (role User), the account tasks use to write run notes
through the REST API. The project's ``dags/`` and ``plugins/`` folders; the tests may add DAG folders of their own
(as extra DAG bundles). Every port is chosen freely so two stacks (``make run`` and a
test run) can live side by side.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import requests

from dicom_relay.airflow_client import AirflowClient

from dicom_relay.files import write_private_text

from .. import REPO
from .process import ManagedProcess, free_port, wait_until

#: Airflow's local settings, shared with docker-compose.yaml (which mounts ./config as $AIRFLOW_HOME/config).
LOCAL_SETTINGS = REPO / "config" / "airflow_local_settings.py"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: Extra arguments per component. Airflow's log servers (the scheduler's for LocalExecutor tasks, the triggerer's)
#: listen on every interface and have no setting for the address (airflow.utils.serve_logs binds host ""); on one
#: machine the api-server reads the task and trigger logs from the shared log folder, so they are not started.
COMPONENT_ARGS = {"scheduler": ("--skip-serve-logs",), "triggerer": ("--skip-serve-logs",)}


#: For tests that kill Airflow's processes: a task whose process died is noticed after 20 s without a heartbeat
#: (default 300 s), checked every 3 s; process_study retries after 2 s, doubling (default 20 s; see
#: dags/process_study.py); folders are claimed quickly.
QUICK_RECOVERY_ENV = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
    "RELAY_TASK_RETRY_DELAY_SECONDS": "2",
    "RELAY_STABLE_SECONDS": "1",
    "RELAY_POLL_SECONDS": "1",
}


def worker_name(i: int) -> str:
    """The managed-process name of the i-th Celery worker (1-based): its pid file and log file carry it."""
    return f"airflow-celery-worker-{i}"


@dataclass
class CeleryConfig:
    """The CeleryExecutor's broker and result backend, and how many workers (each with ``concurrency`` slots)."""

    broker_url: str = field(repr=False)
    result_backend: str = field(repr=False)
    workers: int = 2
    concurrency: int = 2

    def env(self) -> dict[str, str]:
        # Same shape as docker-compose.yaml's x-airflow-common (tests/static/test_compose.py checks both).
        return {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": self.result_backend,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
        }


@dataclass
class AirflowHandle:
    home: Path
    url: str
    user: str
    password: str
    env: dict[str, str]
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    #: Every user's password, by user name (admin's is ``password``).
    passwords: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop()

    def client(self, user: str | None = None) -> "AirflowClient":
        user = user or self.user
        return AirflowClient(self.url, user, self.passwords.get(user, self.password))

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the ``airflow`` command line against this Airflow."""
        return subprocess.run(
            [airflow_bin(), *args], env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout
        )


def airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


#: user -> SimpleAuthManager role. Viewers read; op and admin also act (trigger, answer reviews, edit runs).
USERS = {"admin": "admin", "op": "op", "viewer": "viewer", "relay": "user"}


def _passwords(home: Path, admin_password: str) -> dict[str, str]:
    secrets_file = home / "secrets.json"
    keys = json.loads(secrets_file.read_text()) if secrets_file.exists() else {}
    wanted = ("jwt", "api", *(f"password_{u}" for u in USERS if u != "admin"))
    missing = {name: secrets.token_urlsafe(32 if name in ("jwt", "api") else 12) for name in wanted if name not in keys}
    if missing or not secrets_file.exists():
        keys.update(missing)
        write_private_text(secrets_file, json.dumps(keys))
    return {"_jwt": keys["jwt"], "_api": keys["api"], "admin": admin_password,
            **{u: keys[f"password_{u}"] for u in USERS if u != "admin"}}


def bundle_config(extra_dag_folders: Sequence[Path]) -> str:
    """AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST: the dags folder, and one local bundle per extra folder."""
    bundles = [{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}}]
    bundles += [{"name": f"extra-{n}", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                 "kwargs": {"path": str(folder), "refresh_interval": 5}} for n, folder in enumerate(extra_dag_folders, 1)]
    return json.dumps(bundles)


def airflow_env(home: Path, metadata_db_url: str, port: int, relay_env: Mapping[str, str], password: str,
                celery: CeleryConfig | None = None, extra_dag_folders: Sequence[Path] = ()) -> dict[str, str]:
    passwords = _passwords(home, password)
    keys = {"jwt": passwords.pop("_jwt"), "api": passwords.pop("_api")}
    passwords_file = home / "simple_auth_manager_passwords.json"
    write_private_text(passwords_file, json.dumps(passwords))
    extra = {"AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": bundle_config(extra_dag_folders)} if extra_dag_folders else {}
    return {
        **extra,
        **relay_env,
        "AIRFLOW_HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
        # The account tasks use for what the Task SDK cannot do (a run's note): role User, not admin.
        "AIRFLOW_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW_USER": "relay",
        "AIRFLOW_PASSWORD": passwords["relay"],
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_db_url,
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt"],
        "AIRFLOW__API__SECRET_KEY": keys["api"],
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # The scheduler sleeps up to this long when a loop found nothing to do (default 1 s): each task of a
        # process_study run would otherwise wait up to a second for its predecessor's end to be noticed.
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
        "AIRFLOW__TRIGGERER__DEFAULT_CAPACITY": "100",
        **(celery.env() if celery else {}),
    }


#: The relay settings that name an endpoint or carry its secret: inside Airflow they come from the Connections
#: (dicom_relay.airflow.connections), so the components get them blank (a value inherited from the shell that
#: starts the stack must not sneak in either).
ENDPOINT_VARIABLES = (
    "RELAY_DB_URL", "ORTHANC_HOST", "ORTHANC_DICOM_PORT", "ORTHANC_AE_TITLE", "ORTHANC_URL", "ORTHANC_USER",
    "ORTHANC_PASSWORD", "RELAY_GCS_BUCKET", "RELAY_GCS_PROJECT", "RELAY_GCS_PREFIX", "STORAGE_EMULATOR_HOST",
    "GOOGLE_APPLICATION_CREDENTIALS", "RELAY_IDENTIFIER_URL", "RELAY_IDENTIFIER_TOKEN",
)


def import_connections(env: Mapping[str, str], connections: Mapping[str, Mapping]) -> None:
    """Create (or replace) Airflow Connections in the metadata database with one ``airflow connections import``
    (the same as one ``airflow connections add`` per Connection, in one process start). The file holds
    passwords: created 0600 and removed at once."""
    path = Path(env["AIRFLOW_HOME"]) / "connections.import.json"
    write_private_text(path, json.dumps(
        {cid: {**c, "extra": json.dumps(c.get("extra") or {})} for cid, c in connections.items()}))
    try:
        done = subprocess.run([airflow_bin(), "connections", "import", "--overwrite", str(path)],
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    finally:
        path.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"airflow connections import failed:\n{done.stderr[-3000:]}")


def celery_worker(run_dir: Path, home: Path, env: Mapping[str, str], i: int, concurrency: int) -> ManagedProcess:
    """The i-th ``airflow celery worker``: its own Celery node name (``worker-<i>@host``) and pid file, so that two
    run side by side on one host; no log server (both would bind the same port; task logs are files under
    ``AIRFLOW_HOME/logs`` that the api-server reads)."""
    return ManagedProcess(
        worker_name(i),
        [airflow_bin(), "celery", "worker", "--celery-hostname", f"worker-{i}@%h", "--concurrency", str(concurrency),
         "--pid", str(home / f"celery-worker-{i}.pid"), "--skip-serve-logs"],
        Path(run_dir), env=env,
    )


def link_local_settings(home: Path) -> None:
    """``$AIRFLOW_HOME/config/airflow_local_settings.py``: the project's (as docker-compose.yaml mounts ./config), so
    that the scheduler, dag-processor and Celery workers preload the relay's modules (dicom_relay.airflow.preload)."""
    link = home / "config" / LOCAL_SETTINGS.name
    link.parent.mkdir(exist_ok=True)
    if not link.is_symlink() or link.resolve() != LOCAL_SETTINGS:
        link.unlink(missing_ok=True)
        link.symlink_to(LOCAL_SETTINGS)


def worker_ready(proc: ManagedProcess) -> bool:
    """Celery prints ``celery@<node> ready.`` once it consumes from the broker."""
    return " ready." in proc.log_tail(200)


def start_airflow(
    run_dir: Path, metadata_db_url: str, relay_env: Mapping[str, str], port: int | None = None,
    password: str | None = None, timeout: float = 240, connections: Mapping[str, Mapping] | None = None,
    reuse: bool = False, celery: CeleryConfig | None = None, extra_dag_folders: Sequence[Path] = (),
) -> AirflowHandle:
    """Migrate the metadata database, create the relay's Connections, start the four components (and the Celery
    workers), and wait until both DAGs are parsed (and every worker consumes). With ``connections`` the components
    get no endpoint variable (ENDPOINT_VARIABLES). With ``reuse`` the components (and workers) that run already
    are left alone, with their tasks."""
    if connections is not None:
        relay_env = {**relay_env, **{name: "" for name in ENDPOINT_VARIABLES}}
    home = Path(run_dir) / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    link_local_settings(home)
    port = port or free_port()
    password = password or secrets.token_urlsafe(12)
    env = airflow_env(home, metadata_db_url, port, relay_env, password, celery, extra_dag_folders)
    full_env = {**os.environ, **env}
    handle = AirflowHandle(home, f"http://127.0.0.1:{port}", "admin", password, env,
                           passwords=json.loads((home / "simple_auth_manager_passwords.json").read_text()))
    for component in COMPONENTS:
        handle.processes[component] = ManagedProcess(
            f"airflow-{component}", [airflow_bin(), component, *COMPONENT_ARGS.get(component, ())], Path(run_dir),
            env=env,
        )
    for i in range(1, (celery.workers if celery else 0) + 1):
        proc = celery_worker(run_dir, home, env, i, celery.concurrency)
        handle.processes[proc.name] = proc
    running = {c for c, p in handle.processes.items() if reuse and p.is_running()}
    if not running:
        # A fresh start: the metadata database and the Connections first (both idempotent).
        migrate = subprocess.run([airflow_bin(), "db", "migrate"], env=full_env, capture_output=True, text=True)
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{migrate.stderr[-3000:]}")
        if connections:
            import_connections(env, connections)
    for component in COMPONENTS:
        if component not in running:  # ``make run`` again: running components (and their tasks) are left alone
            handle.processes[component].start()
    handle.processes["api-server"].wait_ready(
        lambda: requests.get(f"{handle.url}/api/v2/monitor/health", timeout=2).status_code == 200, timeout
    )
    for name, proc in handle.processes.items():
        if name.startswith("airflow-celery-worker-") and name not in running:
            proc.log_file.unlink(missing_ok=True)  # "ready." must be this start's
            proc.start()
    for name, proc in handle.processes.items():
        if name.startswith("airflow-celery-worker-") and name not in running:
            proc.wait_ready(lambda p=proc: worker_ready(p), timeout)
    client = handle.client()

    def parsed() -> bool:
        for proc in handle.processes.values():
            proc.check_alive()  # a component that exited early is reported at once, with the end of its log
        return {"watch_inbox", "process_study"} <= client.dag_ids()

    wait_until(parsed, timeout, "airflow DAG parsing")
    return handle
