"""Start, find and stop the local stack's service processes.

One small mechanism serves both ``make run`` (a stack that outlives the command, found again by its pid files)
and the test harness (a stack that lives as long as a pytest session). Every process runs in its own session
(process group) so that stopping it also stops the children it forked (Airflow's api-server workers, say),
and writes its output to ``<run_dir>/logs/<name>.log``.

Some descendants leave the group: Airflow runs each task in a process group of its own, and a PostgreSQL
backend outlives a SIGKILLed postmaster. So every process is also marked through its environment
(``RELAY_STACK_PROCESS=<pid file>``, which every descendant inherits): ``stop`` ends the group and then every
marked process, and waits until none is left, so that a restart never meets the previous instance (PostgreSQL
refuses to start while an old backend holds its shared memory).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import psutil


class ServiceError(RuntimeError):
    """A service did not start or did not become ready; the message names it and points at its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket listening, and every UDP socket bound, in the process tree of ``pid``
    (the process and all its descendants: the log servers and workers a service forks count)."""
    try:
        root = psutil.Process(pid)
        pids = {pid, *(p.pid for p in root.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()
    return {
        (c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
        if c.pid in pids and (c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM)
    }


def is_loopback(address: str) -> bool:
    return address == "::1" or address.startswith("127.") or address == "::ffff:127.0.0.1"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``predicate`` until it is true; raise ``ServiceError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except ServiceError:
            raise  # a service that exited: say so at once, with its log, not after the whole timeout
        except Exception:  # noqa: BLE001 - a service that is starting may refuse, reset or time out
            pass
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie still answers ``kill(pid, 0)``)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's live process
        return True


MARKER = "RELAY_STACK_PROCESS"


def marked_processes(marker: str) -> list[psutil.Process]:
    """Every live process whose environment carries ``RELAY_STACK_PROCESS=marker`` (a service and everything it
    started, whatever process group or session they moved to)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


class ManagedProcess:
    """A named background process with a pid file and a log file under ``run_dir``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        run_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.run_dir = Path(run_dir)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.popen: subprocess.Popen | None = None

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "pids" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def is_running(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return pid_alive(pid)

    def start(self) -> "ManagedProcess":
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        # What a previous instance left behind (a backend of a killed postmaster, a task of a killed scheduler)
        # must be gone before this one starts.
        self.kill_leftovers()
        env = {**os.environ, **(self.env or {}), MARKER: self.marker}
        log = open(self.log_file, "ab")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        finally:
            log.close()
        self.pid_file.write_text(f"{self.popen.pid}\n")
        return self

    @property
    def marker(self) -> str:
        return str(self.pid_file.resolve())

    def kill_leftovers(self, timeout: float = 15.0) -> list[int]:
        """SIGKILL every process marked as this service's and wait until they are gone; return their pids."""
        leftovers = marked_processes(self.marker)
        for proc in leftovers:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        _gone, alive = psutil.wait_procs(leftovers, timeout=timeout)
        if alive:
            raise ServiceError(f"{self.name}: processes {[p.pid for p in alive]} survive SIGKILL")
        return [p.pid for p in leftovers]

    def check_alive(self) -> None:
        """Raise with the tail of the log if the process has already exited."""
        if self.popen is not None and self.popen.poll() is not None:
            raise ServiceError(
                f"{self.name} exited with code {self.popen.returncode}; last lines of {self.log_file}:\n"
                + self.log_tail()
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def wait_ready(self, predicate: Callable[[], bool], timeout: float) -> None:
        def ready() -> bool:
            self.check_alive()
            return predicate()

        try:
            wait_until(ready, timeout, self.name)
        except ServiceError as exc:
            raise ServiceError(f"{exc}; last lines of {self.log_file}:\n{self.log_tail()}") from None

    def signal(self, sig: int) -> None:
        pid = self.pid()
        if pid is None:
            return
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout`` seconds, then every process
        marked as this service's (see the module's docstring); return when all are gone."""
        pid = self.pid()
        if pid is None:
            self.kill_leftovers()
            return
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.is_running():
            if self.popen is not None:
                try:
                    self.popen.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.2)
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # Descendants outside the group (task processes, orphaned backends) end too.
        self.kill_leftovers()
        self.pid_file.unlink(missing_ok=True)
