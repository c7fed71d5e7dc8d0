"""A throwaway PostgreSQL cluster for the local stack and the tests.

Uses Debian's server binaries (``/usr/lib/postgresql/<major>/bin``). PostgreSQL refuses to run as root, so when
we are root the cluster belongs to the ``postgres`` system user (created by Debian's package) and every server
command runs through ``runuser``. Authentication is on (scram-sha-256, a random password) even on loopback, so
a URL without the password does not work by accident.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg

from dicom_relay.files import write_private_text

from .process import ManagedProcess, ServiceError, free_port, wait_until

SUPERUSER = "relay"


def pg_bin_dir() -> Path:
    """The newest Debian PostgreSQL server bin directory on this machine."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise ServiceError("PostgreSQL server not found under /usr/lib/postgresql; install postgresql-15")
    return Path(candidates[-1]).parent


def _as_owner(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def _chown_to_owner(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


@dataclass
class PostgresHandle:
    process: ManagedProcess
    host: str
    port: int
    password: str

    def url(self, database: str = "relay", driver: str = "postgresql") -> str:
        return f"{driver}://{SUPERUSER}:{self.password}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        self.process.stop()


def start_postgres(
    base_dir: Path, port: int | None = None, databases: tuple[str, ...] = ("relay",), durable: bool = True,
    reuse: bool = False,
) -> PostgresHandle:
    """Initialise (first time) and start a cluster in ``base_dir``; return once it accepts connections.

    ``base_dir`` keeps the data directory and the password, so starting again on the same directory reuses the
    cluster and its data. ``durable=False`` turns fsync off: for test clusters that are thrown away anyway.
    """
    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    # The postgres user must be able to reach the data directory through every parent.
    for parent in [base_dir, *base_dir.parents]:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if os.geteuid() == 0 and not mode & 0o001:
            os.chmod(parent, mode | 0o011)
    data_dir = base_dir / "data"
    password_file = base_dir / "password"
    bindir = pg_bin_dir()
    if not (data_dir / "PG_VERSION").exists():
        password = secrets.token_urlsafe(18)
        write_private_text(password_file, password)
        pwfile = base_dir / ".initdb-pw"
        write_private_text(pwfile, password)
        _chown_to_owner(base_dir)
        _chown_to_owner(pwfile)
        subprocess.run(
            _as_owner([
                str(bindir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, "--auth=scram-sha-256",
                f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C.UTF-8",
            ]),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        pwfile.unlink()
    password = password_file.read_text().strip()
    port = port or free_port()
    socket_dir = base_dir
    argv = _as_owner([
        str(bindir / "postgres"), "-D", str(data_dir), "-p", str(port), "-k", str(socket_dir),
        "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
        # A session notices that its client died only when it next reads from it: one waiting for a lock when its
        # client is SIGKILLed (Airflow's scheduler, mid-loop) goes on holding every row it had locked for as long as
        # it waits. Seen in the healing test: the restarted scheduler skipped the two dag runs locked that way
        # (FOR UPDATE SKIP LOCKED) for minutes, and the continuous watch_inbox never ran again. With this check a
        # running statement whose client has gone is cancelled within the interval and its locks are released.
        "-c", "client_connection_check_interval=2s",
    ])
    if not durable:
        argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    proc = ManagedProcess("postgres", argv, base_dir)
    handle = PostgresHandle(proc, "127.0.0.1", port, password)
    if reuse and proc.is_running():
        return handle  # ``make run`` again: a running server is left alone
    (base_dir / "logs").mkdir(exist_ok=True)
    proc.start()

    def accepts() -> bool:
        with psycopg.connect(handle.url("postgres"), connect_timeout=2):
            return True

    proc.wait_ready(accepts, timeout=60)
    for name in databases:
        handle.create_database(name)
    return handle


def wait_for(url: str, timeout: float = 30) -> None:
    def accepts() -> bool:
        with psycopg.connect(url, connect_timeout=2):
            return True

    wait_until(accepts, timeout, "postgres")
