"""The whole local stack, for ``make run`` / ``make stop`` and for the end-to-end tests.

    python -m tests.support.stack.local up   [--run-dir .run] [--no-sample] [--executor local|celery]
    python -m tests.support.stack.local down [--run-dir .run]

``up`` starts (or finds again) PostgreSQL, Orthanc, the GCS emulator, the identifier service and Airflow
(api-server, scheduler, dag-processor, triggerer; with ``--executor celery`` also Redis and two
``airflow celery worker`` processes under the CeleryExecutor), unpauses the DAGs, writes ``<run-dir>/stack.env``, drops a
generated sample CT study into the inbox the atomic way and waits until it is delivered. ``down`` stops exactly
the processes ``up`` started (by their pid files).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from dotenv import dotenv_values

from dicom_relay.airflow_client import AirflowClient
from dicom_relay.files import write_private_text
from dicom_relay.status import StatusStore

from .. import REPO
from .airflow import COMPONENTS, ENDPOINT_VARIABLES, AirflowHandle, CeleryConfig, start_airflow, worker_name
from .gcs import start_gcs_emulator
from .identifier_service import start_identifier_service
from .orthanc import start_orthanc
from .postgres import start_postgres
from .process import ManagedProcess, free_port, port_open, wait_until
from .redis import start_redis

EXECUTORS = ("local", "celery")
CELERY_WORKERS = 2

SERVICE_NAMES = ("postgres", "orthanc", "gcs", "identifier-service", *(f"airflow-{c}" for c in COMPONENTS))
CELERY_NAMES = ("redis", *(worker_name(i) for i in range(1, CELERY_WORKERS + 1)))
# Ports a person would expect; a free one is taken instead when something else listens there.
PREFERRED_PORTS = {"airflow": 8080, "orthanc_http": 8042, "orthanc_dicom": 4242, "gcs": 4443, "identifier": 8765}


def _port(name: str) -> int:
    preferred = PREFERRED_PORTS[name]
    return preferred if not port_open("127.0.0.1", preferred) else free_port()


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` (or ``export KEY=VALUE``) lines of an env file, quoted or not, as python-dotenv reads them;
    values are taken literally (no ``${...}`` expansion: compose's own .env is interpolated by compose)."""
    if not path.exists():
        return {}
    return {k: v or "" for k, v in dotenv_values(path, interpolate=False).items()}


def write_env_file(path: Path, env: dict[str, str]) -> None:
    write_private_text(path, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items())))


def relay_connections(db_url: str, orthanc, bucket: str, project: str, emulator_host: str, identifier_url: str,
                      identifier_token: str) -> dict[str, dict]:
    """The relay's Airflow Connections (dicom_relay.airflow.connections) for services started here."""
    from psycopg.conninfo import conninfo_to_dict

    db = conninfo_to_dict(db_url)
    return {
        "relay_db": {"conn_type": "postgres", "host": db["host"], "port": int(db["port"]), "schema": db["dbname"],
                     "login": db["user"], "password": db["password"]},
        "orthanc_default": {"conn_type": "http", "host": orthanc.host, "port": orthanc.http_port,
                            "login": orthanc.user, "password": orthanc.password,
                            "extra": {"ae_title": orthanc.ae_title, "dicom_port": orthanc.dicom_port}},
        "relay_gcs": {"conn_type": "google_cloud_platform",
                      "extra": {"bucket": bucket, "project": project, "emulator_host": emulator_host}},
        "relay_identifier_service": {"conn_type": "http", "host": identifier_url, "password": identifier_token},
    }


def relay_env(inbox: Path, work_dir: Path, db_url: str, orthanc, gcs_bucket: str, identifier_url: str,
              identifier_token: str, secret_key: str) -> dict[str, str]:
    """The relay's settings (as environment variables) for services started by ``tests.support.stack``."""
    return {
        "RELAY_INBOX": str(inbox),
        "RELAY_WORK_DIR": str(work_dir),
        "RELAY_DB_URL": db_url,
        "RELAY_SECRET_KEY": secret_key,
        "RELAY_IDENTIFIER_URL": identifier_url,
        "RELAY_IDENTIFIER_TOKEN": identifier_token,
        "ORTHANC_HOST": orthanc.host,
        "ORTHANC_DICOM_PORT": str(orthanc.dicom_port),
        "ORTHANC_AE_TITLE": orthanc.ae_title,
        "ORTHANC_URL": orthanc.url,
        "ORTHANC_USER": orthanc.user,
        "ORTHANC_PASSWORD": orthanc.password,
        "RELAY_GCS_BUCKET": gcs_bucket,
    }


@dataclass
class Stack:
    run_dir: Path
    env: dict[str, str]
    airflow: AirflowHandle | None = None
    services: list = field(default_factory=list)
    started: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.airflow:
            self.airflow.stop()
        for service in reversed(self.services):
            service.stop()

    # ``with start_stack(...) as stack:`` stops it whatever happens inside (a module fixture yields inside it).
    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _secrets(run_dir: Path) -> dict[str, str]:
    """The stack's generated secrets, kept across restarts; a key a newer stack needs is added, none replaced."""
    path = run_dir / "secrets.json"
    values = json.loads(path.read_text()) if path.exists() else {}
    wanted = {"orthanc_password": 16, "airflow_password": 12, "identifier_token": 24, "relay_secret_key": 32,
              "redis_password": 24}
    missing = {k: secrets.token_urlsafe(n) for k, n in wanted.items() if k not in values}
    if missing:
        values.update(missing)
        write_private_text(path, json.dumps(values))
    return values


def _ports(run_dir: Path, fixed_ports: bool) -> dict[str, int]:
    """The stack's ports, chosen at its first start and kept (``ports.json``) so that a service started again
    after it died answers where the others and ``stack.env`` expect it."""
    path = run_dir / "ports.json"
    ports = json.loads(path.read_text()) if path.exists() else {}
    wanted = [*PREFERRED_PORTS, "postgres", "redis"]
    missing = [name for name in wanted if name not in ports]
    if missing:  # a port a newer stack needs is added, none replaced
        for name in missing:
            ports[name] = _port(name) if fixed_ports and name in PREFERRED_PORTS else free_port()
        write_private_text(path, json.dumps(ports))
    return ports


#: After PostgreSQL was started again under running services, how long they are watched: Airflow's scheduler
#: exits after its metadata database went away under it, once its running tasks finish (measured: 15-20 s later).
SETTLE_SECONDS = 30.0


def start_stack(run_dir: Path, base_env: dict[str, str] | None = None, with_airflow: bool = True,
                fixed_ports: bool = False, rounds: int = 3, durable: bool | None = None, executor: str = "local",
                celery_workers: int = CELERY_WORKERS, extra_dag_folders: Sequence[Path] = ()) -> Stack:
    """Start every service under ``run_dir`` that is not running (those running, and their tasks, are left
    alone); return the stack and the environment that reaches it. ``stack.started`` names what was started.

    When PostgreSQL was started again under running services, those are watched for ``SETTLE_SECONDS``: one that
    exits (it lost its database) is reported with the end of its log and started too, up to ``rounds`` times.
    ``durable`` (default: ``fixed_ports``, i.e. ``make run``) keeps PostgreSQL's fsync and synchronous commit on:
    without them a killed server loses its last commits.

    ``executor="celery"``: Redis (broker) and ``celery_workers`` Celery workers too, result backend in Airflow's
    metadata database, as in docker-compose.yaml.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, not {executor!r}")
    durable = fixed_ports if durable is None else durable
    names = service_names(executor, celery_workers)

    def start() -> Stack:
        return _start_missing(run_dir, base_env, with_airflow, fixed_ports, durable, executor, celery_workers,
                              extra_dag_folders)

    stack = start()
    for _ in range(rounds - 1):
        reused = [n for n in names if n not in stack.started and (with_airflow or "airflow" not in n)]
        if "postgres" not in stack.started or not reused:
            break  # only a database restart takes others down with it
        deadline = time.monotonic() + SETTLE_SECONDS
        died: list[str] = []
        while time.monotonic() < deadline and not died:
            died = [n for n in reused if not _service(run_dir, n).is_running()]
            time.sleep(0.5)
        if not died:
            break
        for name in died:
            print(f"{name} exited after the restart; last lines of its log:\n{_service(run_dir, name).log_tail(10)}",
                  file=sys.stderr, flush=True)
        again = start()
        again.started = stack.started + again.started
        stack = again
    return stack


def service_names(executor: str = "local", celery_workers: int = CELERY_WORKERS) -> tuple[str, ...]:
    """Every managed process of a stack with this executor (Redis and the workers only under Celery)."""
    if executor != "celery":
        return SERVICE_NAMES
    return (*SERVICE_NAMES, "redis", *(worker_name(i) for i in range(1, celery_workers + 1)))


def _start_missing(run_dir: Path, base_env: dict[str, str] | None, with_airflow: bool, fixed_ports: bool,
                   durable: bool, executor: str, celery_workers: int, extra_dag_folders: Sequence[Path]) -> Stack:
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    keys = _secrets(run_dir)
    ports = _ports(run_dir, fixed_ports)
    stack = Stack(run_dir, {})
    # What was started is what runs under another pid afterwards (a service may die while the others start).
    names = service_names(executor, celery_workers)
    pids_before = {name: _service(run_dir, name).pid() if _service(run_dir, name).is_running() else None
                   for name in names}
    try:
        pg = start_postgres(run_dir / "postgres", port=ports["postgres"], databases=("relay", "airflow"),
                            durable=durable, reuse=True)
        stack.services.append(pg)
        StatusStore(pg.url("relay")).migrate()  # once at start, as the compose init service does (idempotent)
        orthanc = start_orthanc(
            run_dir / "orthanc", http_port=ports["orthanc_http"], dicom_port=ports["orthanc_dicom"],
            password=keys["orthanc_password"], reuse=True,
        )
        stack.services.append(orthanc)
        base = {**read_env_file(REPO / ".env"), **(base_env or {})}
        bucket = base.get("RELAY_GCS_BUCKET", "dicom-relay")
        gcs = start_gcs_emulator(run_dir / "gcs", port=ports["gcs"], bucket=bucket, reuse=True)
        stack.services.append(gcs)
        ids = start_identifier_service(
            run_dir / "identifier-service", port=ports["identifier"], token=keys["identifier_token"], reuse=True,
        )
        stack.services.append(ids)
        inbox = run_dir / "inbox"
        work = run_dir / "relay"
        inbox.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        stack.env = {
            **base,
            **relay_env(inbox, work, pg.url("relay"), orthanc, bucket, ids.url, keys["identifier_token"],
                        keys["relay_secret_key"]),
            "STORAGE_EMULATOR_HOST": gcs.host,
            "RELAY_PYTHON": sys.executable,
        }
        celery = None
        if with_airflow and executor == "celery":
            redis = start_redis(run_dir / "redis", port=ports["redis"], password=keys["redis_password"], reuse=True)
            stack.services.append(redis)
            celery = CeleryConfig(broker_url=redis.url(), result_backend="db+" + pg.url("airflow"),
                                  workers=celery_workers)
        if with_airflow:
            # Inside Airflow every endpoint and secret comes from a Connection, none from the environment.
            conns = relay_connections(pg.url("relay"), orthanc, bucket, base.get("RELAY_GCS_PROJECT") or "dicom-relay",
                                      gcs.host, ids.url, keys["identifier_token"])
            af = start_airflow(
                run_dir, pg.url("airflow", driver="postgresql+psycopg"), stack.env,
                port=ports["airflow"], password=keys["airflow_password"], connections=conns, reuse=True,
                celery=celery, extra_dag_folders=extra_dag_folders,
            )
            stack.airflow = af
            # The CLI and the tests read the endpoints from stack.env; only Airflow's components go without them.
            stack.env.update({k: v for k, v in af.env.items() if k not in ENDPOINT_VARIABLES})
            stack.env.update({"AIRFLOW_URL": af.url, "AIRFLOW_USER": af.user, "AIRFLOW_PASSWORD": af.password,
                              "AIRFLOW_OP_PASSWORD": af.passwords["op"],
                              "AIRFLOW_VIEWER_PASSWORD": af.passwords["viewer"]})
            client = af.client()
            for dag_id in ("process_study", "watch_inbox"):
                client.unpause(dag_id)
    except BaseException:
        stack.stop()
        raise
    stack.started = [name for name in names
                     if _service(run_dir, name).pid() != pids_before[name] or pids_before[name] is None
                     if with_airflow or not (name.startswith("airflow-") or name == "redis")]
    return stack


def _service(run_dir: Path, name: str) -> ManagedProcess:
    return ManagedProcess(name, [], run_dir_for(run_dir, name))


def running(run_dir: Path, executor: str = "local") -> bool:
    return all(_service(run_dir, name).is_running() for name in service_names(executor))


def run_dir_for(run_dir: Path, name: str) -> Path:
    """Each service keeps its pid file in its own folder; Airflow's components in the stack's folder."""
    sub = {"postgres": "postgres", "orthanc": "orthanc", "gcs": "gcs", "identifier-service": "identifier-service",
           "redis": "redis"}
    return run_dir / sub[name] if name in sub else run_dir


def stop_all(run_dir: Path) -> list[str]:
    stopped = []
    # Workers first (they run tasks), then Airflow, then the services (Redis before PostgreSQL).
    for name in (*reversed(CELERY_NAMES[1:]), *reversed(SERVICE_NAMES[4:]), CELERY_NAMES[0],
                 *reversed(SERVICE_NAMES[:4])):
        proc = ManagedProcess(name, [], run_dir_for(run_dir, name))
        if proc.pid() is not None:
            proc.stop()
            stopped.append(name)
    return stopped


def drop_sample(env: dict[str, str], n_instances: int = 12) -> str:
    """Generate a CT study and drop it into the inbox the atomic way; return the folder name used."""
    from tests.support.samples import drop_atomically, generate_ct_study

    run_dir = Path(env["RELAY_INBOX"]).parent
    name = f"SAMPLE-{time.strftime('%Y%m%d-%H%M%S')}"
    source = run_dir / "samples" / name
    generate_ct_study(source, patient_id=f"DEMO{secrets.randbelow(10**6):06d}", n_instances=n_instances)
    drop_atomically(source, Path(env["RELAY_INBOX"]), name, suffix=".tmp" + secrets.token_hex(2))
    return name


def wait_for_batch(env: dict[str, str], folder: str, timeout: float = 900):
    """Wait until the folder's batch has a finished run (retries included); return the batch."""
    from dicom_relay.inbox import run_id_for

    store = StatusStore(env["RELAY_DB_URL"])
    client = AirflowClient(env["AIRFLOW_URL"], env["AIRFLOW_USER"], env["AIRFLOW_PASSWORD"])
    found = {}

    def finished() -> bool:
        batch = next((b for b in store.list_batches(limit=200) if b.folder == folder), None)
        if batch is None:
            return False
        found["batch"] = batch
        if batch.status in ("DONE", "EMPTY"):
            return True
        run = client.request("GET", f"/dags/process_study/dagRuns/{run_id_for(batch.batch_id)}")
        return run.status_code == 200 and run.json()["state"] in ("success", "failed")

    wait_until(finished, timeout, "sample study delivery", interval=2)
    return store.get_batch(found["batch"].batch_id)


def stack_executor(env: dict[str, str]) -> str:
    return "celery" if env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor" else "local"


def up(run_dir: Path, sample: bool = True, executor: str = "local") -> int:
    status = 0
    env_file = run_dir / "stack.env"
    previous = read_env_file(env_file)
    if previous and stack_executor(previous) == executor and running(run_dir, executor):
        env = previous
        print(f"dicom-relay stack already running (from {env_file}); reusing it.")
    else:
        if previous and stack_executor(previous) != executor:
            stop_all(run_dir)  # a stack with the other executor: its Airflow runs with the wrong settings
        # Only what is not running is started; what runs (and the tasks it runs) is left alone.
        missing = [name for name in service_names(executor) if not _service(run_dir, name).is_running()]
        extra = f" (CeleryExecutor: Redis, {CELERY_WORKERS} workers)" if executor == "celery" else ""
        print(f"starting {', '.join(missing)}{extra} ...", flush=True)
        stack = start_stack(run_dir, fixed_ports=True, executor=executor)
        env = stack.env
        write_env_file(env_file, env)
    if sample:
        folder = drop_sample(env)
        print("dropped a generated CT study into the inbox; waiting for delivery ...", flush=True)
        batch = wait_for_batch(env, folder)
        print(f"sample batch {batch.batch_id}: {batch.status} {batch.counts}")
        orthanc = batch.summary.get("send_orthanc", {})
        gcs = batch.summary.get("send_gcs", {})
        for study in orthanc.get("studies", []):
            print(f"  Orthanc: study {study} ({orthanc.get('verified')} instances verified)")
        for manifest in gcs.get("manifests", []):
            print(f"  GCS:     gs://{gcs.get('bucket')}/{manifest.rsplit('/', 1)[0]}/ ({gcs.get('verified')} objects verified)")
        if batch.status != "DONE":
            print(json.dumps(batch.errors, indent=2))
            status = 1
    print(
        f"""
Airflow UI      {env['AIRFLOW_URL']}   (user {env['AIRFLOW_USER']}, password {env['AIRFLOW_PASSWORD']};
                users op and viewer: AIRFLOW_OP_PASSWORD, AIRFLOW_VIEWER_PASSWORD in {env_file})
Orthanc         {env['ORTHANC_URL']}   (user {env['ORTHANC_USER']}, password in {env_file})
GCS emulator    {env['STORAGE_EMULATOR_HOST']}   bucket {env['RELAY_GCS_BUCKET']}
Inbox           {env['RELAY_INBOX']}
Status          . {env_file} && dicom-relay status
Stop            make stop
"""
    )
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.stack.local")
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--run-dir", type=Path, default=REPO / ".run")
    parser.add_argument("--no-sample", action="store_true")
    parser.add_argument("--executor", choices=EXECUTORS, default=os.environ.get("EXECUTOR", "local") or "local")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    if args.command == "up":
        return up(run_dir, sample=not args.no_sample, executor=args.executor)
    stopped = stop_all(run_dir)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
