"""Start and stop Redis, the Celery broker of ``make run EXECUTOR=celery`` and of the Celery end-to-end test.

Debian's ``redis-server`` runs as a plain process under ``ManagedProcess`` (pid file and log under ``run_dir``),
bound to loopback, with a password. The password is in a configuration file readable by its owner only (the
command line would show it to ``ps``). Nothing is persisted: the broker holds only messages that Airflow's
scheduler re-sends when they are lost (a queued task instance whose message vanished is queued again).
"""

from __future__ import annotations

import secrets
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from dicom_relay.files import write_private_text

from .process import ManagedProcess, ServiceError, free_port

LOOPBACK = "127.0.0.1"
NAME = "redis"


@dataclass
class RedisHandle:
    process: ManagedProcess
    port: int
    password: str = field(repr=False)

    def url(self, db: int = 0) -> str:
        """The Celery broker URL (``AIRFLOW__CELERY__BROKER_URL``)."""
        return f"redis://:{self.password}@{LOOPBACK}:{self.port}/{db}"

    def stop(self) -> None:
        self.process.stop()


def redis_bin() -> str:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if not found:
        raise ServiceError("redis-server is not installed (Debian package redis-server; scripts/setup.sh installs it)")
    return found


def _ping(port: int, password: str) -> bool:
    """A RESP ``AUTH`` + ``PING`` over a raw socket: ready when Redis answers ``+PONG``."""
    with socket.create_connection((LOOPBACK, port), timeout=1) as sock:
        sock.sendall(f"AUTH {password}\r\nPING\r\n".encode())
        data = b""
        while b"PONG" not in data:
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
        return b"+PONG" in data


def start_redis(run_dir: Path, port: int | None = None, password: str | None = None,
                timeout: float = 30.0, reuse: bool = False) -> RedisHandle:
    """Start ``redis-server`` on loopback (a free port unless ``port`` is given) and wait until it answers.

    ``reuse``: a Redis already running under ``run_dir`` is left alone (``make run`` again); pass the same port
    and password as at its first start."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(LOOPBACK)
    password = password or secrets.token_urlsafe(24)
    conf = run_dir / "redis.conf"
    process = ManagedProcess(NAME, [redis_bin(), conf], run_dir)
    if reuse and process.is_running():
        return RedisHandle(process=process, port=port, password=password)
    # The password is in the file: private from its first byte.
    write_private_text(conf, f"bind {LOOPBACK}\nport {port}\nrequirepass {password}\ndir {run_dir}\n"
                       'save ""\nappendonly no\ndaemonize no\nprotected-mode yes\n')
    if process.is_running():
        raise ServiceError(f"{NAME} is already running (pid {process.pid()}); stop it first")
    process.start()
    try:
        process.wait_ready(lambda: _ping(port, password), timeout)
    except BaseException:
        process.stop()
        raise
    return RedisHandle(process=process, port=port, password=password)
