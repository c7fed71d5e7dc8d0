"""A real Airflow 3 for the local stack and the end-to-end tests: api-server, scheduler, dag-processor, triggerer.

LocalExecutor on a PostgreSQL metadata database, the SimpleAuthManager with one admin user (authentication on),
the project's ``dags/`` and ``plugins/`` folders. Every port is chosen freely so two stacks (``make run`` and a
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
from typing import Mapping

import requests

from dicom_relay.airflow_client import AirflowClient
from dicom_relay.files import write_private_text

from .. import REPO
from .process import ManagedProcess, free_port, wait_until

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: Extra arguments per component. Airflow's log servers (the scheduler's for LocalExecutor tasks, the triggerer's)
#: listen on every interface and have no setting for the address (airflow.utils.serve_logs binds host ""); on one
#: machine the api-server reads the task and trigger logs from the shared log folder, so they are not started.
COMPONENT_ARGS = {"scheduler": ("--skip-serve-logs",), "triggerer": ("--skip-serve-logs",)}


@dataclass
class AirflowHandle:
    home: Path
    url: str
    user: str
    password: str
    env: dict[str, str]
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop()

    def client(self) -> "AirflowClient":
        return AirflowClient(self.url, self.user, self.password)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the ``airflow`` command line against this Airflow."""
        return subprocess.run(
            [airflow_bin(), *args], env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout
        )


def airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def airflow_env(home: Path, metadata_db_url: str, port: int, relay_env: Mapping[str, str], password: str) -> dict[str, str]:
    secrets_file = home / "secrets.json"
    if secrets_file.exists():
        keys = json.loads(secrets_file.read_text())
    else:
        keys = {"jwt": secrets.token_urlsafe(32), "api": secrets.token_urlsafe(32)}
        write_private_text(secrets_file, json.dumps(keys))
    passwords_file = home / "simple_auth_manager_passwords.json"
    write_private_text(passwords_file, json.dumps({"admin": password}))
    return {
        **relay_env,
        "AIRFLOW_HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
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
        "AIRFLOW__TRIGGERER__DEFAULT_CAPACITY": "100",
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


def start_airflow(
    run_dir: Path, metadata_db_url: str, relay_env: Mapping[str, str], port: int | None = None,
    password: str | None = None, timeout: float = 240, connections: Mapping[str, Mapping] | None = None,
    reuse: bool = False,
) -> AirflowHandle:
    """Migrate the metadata database, create the relay's Connections, start the four components, and wait until
    both DAGs are parsed. With ``connections`` the components get no endpoint variable (ENDPOINT_VARIABLES)."""
    if connections is not None:
        relay_env = {**relay_env, **{name: "" for name in ENDPOINT_VARIABLES}}
    home = Path(run_dir) / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    password = password or secrets.token_urlsafe(12)
    env = airflow_env(home, metadata_db_url, port, relay_env, password)
    full_env = {**os.environ, **env}
    handle = AirflowHandle(home, f"http://127.0.0.1:{port}", "admin", password, env)
    for component in COMPONENTS:
        handle.processes[component] = ManagedProcess(
            f"airflow-{component}", [airflow_bin(), component, *COMPONENT_ARGS.get(component, ())], Path(run_dir),
            env=env,
        )
    running = {c for c, p in handle.processes.items() if reuse and p.is_running()}
    if not running:
        # A fresh start: the metadata database and the Connections first (both idempotent).
        migrate = subprocess.run([airflow_bin(), "db", "migrate"], env=full_env, capture_output=True, text=True)
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{migrate.stderr[-3000:]}")
        if connections:
            import_connections(env, connections)
    for component, proc in handle.processes.items():
        if component not in running:  # ``make run`` again: running components (and their tasks) are left alone
            proc.start()
    handle.processes["api-server"].wait_ready(
        lambda: requests.get(f"{handle.url}/api/v2/monitor/health", timeout=2).status_code == 200, timeout
    )
    client = handle.client()

    def parsed() -> bool:
        for proc in handle.processes.values():
            proc.check_alive()  # a component that exited early is reported at once, with the end of its log
        return {"watch_inbox", "process_study"} <= client.dag_ids()

    wait_until(parsed, timeout, "airflow DAG parsing")
    return handle
