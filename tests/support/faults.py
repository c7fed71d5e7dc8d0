"""Fault injection for the tests: a switchable TCP proxy in front of a real service, and process helpers.

``FaultProxy`` listens on loopback and forwards to a real service (Orthanc's DICOM or REST port, the GCS emulator,
the identifier service). Point the relay at the proxy instead of the service, then switch what the proxy does at
any moment::

    proxy = FaultProxy("127.0.0.1", orthanc.dicom_port).start()
    proxy.set("refuse")                  # nothing listens: connection refused
    proxy.set("reset")                   # accept, then reset the connection at once
    proxy.set("hang")                    # accept, read, never answer (the client times out)
    proxy.set("http", status=503)        # answer every HTTP request with 503 and close
    proxy.set("lose_reply", times=1)     # forward the request, throw the service's answer away, close
    proxy.set("delay", latency=0.05)     # pass, each chunk held back ``latency`` seconds
    proxy.set("corrupt", at_byte=2000)   # pass, but invert the byte at that offset of what the client sends
    proxy.set("pass", cut_after_bytes=N) # pass, then cut every connection and refuse once N bytes went upstream
    proxy.cut_all()                      # close every open connection now (the service "went away")

``times=K`` makes a fault apply to the next K connections only, then the proxy passes again. ``stats`` counts what
happened (connections per mode, bytes each way, cuts), so a test can assert that its fault was really hit.

Everything is bounded: each connection has its own two pump threads, sockets time out, and ``stop()`` closes all.
Nothing here listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import psutil

from .stack.process import pid_alive

LOOPBACK = "127.0.0.1"
MODES = ("pass", "refuse", "reset", "hang", "http", "lose_reply", "delay", "corrupt")
_CHUNK = 256 * 1024
_HTTP_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
                 504: "Gateway Timeout", 429: "Too Many Requests"}


@dataclass
class ProxyStats:
    connections: Counter = field(default_factory=Counter)  # mode -> connections handled in that mode
    bytes_up: int = 0  # client -> service
    bytes_down: int = 0  # service -> client
    cuts: int = 0  # connections closed by ``cut_all`` / ``cut_after_bytes``
    corrupted: int = 0  # bytes inverted in ``corrupt`` mode
    http_answers: int = 0

    def faulted(self) -> int:
        """Connections that met a fault (anything but a plain pass)."""
        return sum(n for mode, n in self.connections.items() if mode != "pass") + self.cuts


class _Conn:
    def __init__(self, client: socket.socket, upstream: socket.socket | None):
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass


def _nodelay(sock: socket.socket) -> None:
    # DICOM sends many small PDUs; without TCP_NODELAY the proxy would add delayed-ACK stalls to every C-STORE.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def _rst(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    sock.close()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream_host:upstream_port`` whose behaviour can be switched."""

    def __init__(self, upstream_host: str, upstream_port: int, port: int | None = None, name: str = "proxy",
                 idle_timeout: float = 120.0):
        self.upstream = (upstream_host, int(upstream_port))
        self.name = name
        self.idle_timeout = idle_timeout
        self._lock = threading.RLock()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._conns: set[_Conn] = set()
        self._stopping = threading.Event()
        self.port = int(port) if port else 0
        self.mode = "pass"
        self.params: dict = {}
        self._times: int | None = None
        self._cut_after: int | None = None
        self._then = "refuse"
        self.stats = ProxyStats()

    # ---- addresses -----------------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def __repr__(self) -> str:
        return f"FaultProxy({self.name}: {LOOPBACK}:{self.port} -> {self.upstream[0]}:{self.upstream[1]}, {self.mode})"

    # ---- life cycle ----------------------------------------------------------------------------------------

    def start(self) -> "FaultProxy":
        self._listen()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._close_listener()
        self.cut_all(count=False)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _listen(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            deadline = time.monotonic() + 10
            while True:
                try:
                    sock.bind((LOOPBACK, self.port))
                    break
                except OSError as exc:  # the port is in TIME_WAIT use for a moment after a refuse
                    if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                        sock.close()
                        raise
                    time.sleep(0.05)
            sock.listen(64)
            self.port = sock.getsockname()[1]
            self._listener = sock
            self._accept_thread = threading.Thread(target=self._accept_loop, args=(sock,), daemon=True,
                                                   name=f"{self.name}-accept")
            self._accept_thread.start()

    def _close_listener(self) -> None:
        with self._lock:
            sock, self._listener = self._listener, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        thread = self._accept_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    # ---- switching -----------------------------------------------------------------------------------------

    def set(self, mode: str, *, times: int | None = None, cut_after_bytes: int | None = None,
            then: str = "refuse", **params) -> "FaultProxy":
        """Switch to ``mode`` (see the module doc). ``times``: only for the next K connections, then ``pass``.

        ``cut_after_bytes``: once that many more bytes went upstream, cut every connection and switch to ``then``.
        """
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}; one of {MODES}")
        with self._lock:
            self.mode = mode
            self.params = params
            self._times = times
            self._then = then
            self._cut_after = None if cut_after_bytes is None else self.stats.bytes_up + int(cut_after_bytes)
        if mode == "refuse":
            self._close_listener()
        elif not self._stopping.is_set():
            self._listen()
        return self

    def cut_all(self, count: bool = True) -> int:
        """Close every open connection now; returns how many were cut."""
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            conn.close()
        if count:
            self.stats.cuts += len(conns)
        return len(conns)

    def down(self) -> int:
        """The service goes away: refuse new connections and cut the open ones. Returns how many were cut."""
        self.set("refuse")
        return self.cut_all()

    def up(self) -> "FaultProxy":
        """The service is back: pass everything."""
        return self.set("pass")

    def _mode_for_new_connection(self) -> tuple[str, dict]:
        with self._lock:
            mode, params = self.mode, dict(self.params)
            if self._times is not None:
                self._times -= 1
                if self._times <= 0:
                    self.mode, self.params, self._times = "pass", {}, None
            self.stats.connections[mode] += 1
            return mode, params

    # ---- serving -------------------------------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed (refuse, stop)
            mode, params = self._mode_for_new_connection()
            threading.Thread(target=self._serve, args=(client, mode, params), daemon=True,
                             name=f"{self.name}-{mode}").start()

    def _serve(self, client: socket.socket, mode: str, params: dict) -> None:
        client.settimeout(self.idle_timeout)
        _nodelay(client)
        if mode == "reset":
            _rst(client)
            return
        if mode == "http":
            self._answer_http(client, int(params.get("status", 503)))
            return
        if mode == "hang":
            conn = _Conn(client, None)
            self._track(conn)
            try:
                while not conn.closed.is_set() and client.recv(_CHUNK):
                    pass
            except OSError:
                pass
            finally:
                self._untrack(conn)
                conn.close()
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            _rst(client)
            return
        upstream.settimeout(self.idle_timeout)
        _nodelay(upstream)
        conn = _Conn(client, upstream)
        self._track(conn)
        latency = float(params.get("latency", 0)) if mode == "delay" else 0.0
        lose = mode == "lose_reply"
        # Damage in transit that TCP's own checksum did not catch: one byte of the client's stream, once.
        corrupt_at = int(params.get("at_byte", 2000)) if mode == "corrupt" else None
        up = threading.Thread(target=self._pump, args=(conn, client, upstream, True, latency, False, corrupt_at),
                              daemon=True)
        up.start()
        self._pump(conn, upstream, client, False, latency, lose)
        up.join(timeout=self.idle_timeout)
        self._untrack(conn)
        conn.close()

    def _track(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.add(conn)

    def _untrack(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _pump(self, conn: _Conn, src: socket.socket, dst: socket.socket, upward: bool, latency: float,
              lose: bool, corrupt_at: int | None = None) -> None:
        passed = 0
        try:
            while not conn.closed.is_set():
                data = src.recv(_CHUNK)
                if not data:
                    break
                if corrupt_at is not None and passed <= corrupt_at < passed + len(data):
                    i = corrupt_at - passed
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
                    with self._lock:
                        self.stats.corrupted += 1
                passed += len(data)
                if lose:
                    # The service answered; its answer never reaches the client, whose connection now drops.
                    conn.close()
                    break
                if latency:
                    time.sleep(latency)
                dst.sendall(data)
                with self._lock:
                    if upward:
                        self.stats.bytes_up += len(data)
                        if self._cut_after is not None and self.stats.bytes_up >= self._cut_after:
                            self._cut_after = None
                            trip = True
                        else:
                            trip = False
                    else:
                        self.stats.bytes_down += len(data)
                        trip = False
                if trip:
                    self.set(self._then)
                    self.cut_all()
                    break
        except OSError:
            pass
        finally:
            conn.close()

    def _answer_http(self, client: socket.socket, status: int) -> None:
        """Read one HTTP request (head and Content-Length body), answer ``status`` and close."""
        try:
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 1 << 20:
                chunk = client.recv(_CHUNK)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip() or 0)
            remaining = max(0, length - len(body))
            while remaining > 0:
                chunk = client.recv(min(_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
            reason = _HTTP_REASONS.get(status, "Fault")
            payload = f'{{"error": {{"code": {status}, "message": "{reason} (injected)"}}}}'.encode()
            client.sendall(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
            )
            self.stats.http_answers += 1
        except OSError:
            pass
        finally:
            try:
                client.close()
            except OSError:
                pass


# ---- processes ---------------------------------------------------------------------------------------------

def process_cmdlines() -> dict[int, str]:
    """``{pid: command line}`` of every process (psutil), arguments joined by spaces."""
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline")  # None or [] when unreadable or a kernel thread
        if cmdline:
            found[proc.pid] = " ".join(cmdline).strip()
    return found


def process_group_members(pgid: int) -> list[int]:
    """Pids of the live processes in process group ``pgid``."""
    members = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and pid_alive(pid):
                members.append(pid)
        except ProcessLookupError:
            continue
    return sorted(members)


def find_processes(*needles: str, exclude: Iterable[str] = ()) -> list[int]:
    """Pids whose command line holds every needle and none of ``exclude``."""
    exclude = tuple(exclude)
    return sorted(
        pid for pid, cmd in process_cmdlines().items()
        if pid != os.getpid() and all(n in cmd for n in needles) and not any(x in cmd for x in exclude)
    )


def airflow_task_processes(ti_id: str) -> dict[str, list[int]]:
    """The OS processes running one Airflow 3 task instance under the LocalExecutor, by role.

    The LocalExecutor worker that supervises the task titles itself ``airflow worker -- LocalExecutor: <ti id>``;
    the task runner it forks titles itself ``airflow worker -- <ti id>`` (airflow.sdk task_runner).
    """
    supervisors = find_processes(f"LocalExecutor: {ti_id}")
    runners = find_processes(f"airflow worker -- {ti_id}")
    return {"supervisor": supervisors, "runner": runners}


def sigkill(pids: Iterable[int]) -> int:
    """SIGKILL each pid (no process group, no name matching); returns how many were signalled."""
    n = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            n += 1
        except ProcessLookupError:
            pass
    return n


def wait_gone(pids: Iterable[int], timeout: float = 10.0) -> bool:
    """Wait until none of ``pids`` exists (or is a zombie); bounded by ``timeout``."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pid_alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


# ---- leak scanning -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Leak:
    where: str  # a file path, "xcom ...", "gcs ..."; never the value itself
    value_index: int  # position of the planted value in the list that was searched for


def scan_texts(items: Iterable[tuple[str, bytes]], values: list[str]) -> list[Leak]:
    """Every (where, value) pair where a planted value occurs in the bytes (case-sensitive, exact)."""
    needles = [(i, v.encode()) for i, v in enumerate(values) if v]
    leaks = []
    for where, data in items:
        for i, needle in needles:
            if needle in data:
                leaks.append(Leak(where, i))
    return leaks


def files_under(*roots: Path, suffixes: tuple[str, ...] | None = None, skip: Iterable[Path] = ()) -> list[Path]:
    """Regular files under each root (links not followed), optionally only with these suffixes."""
    skip = [Path(s).resolve() for s in skip]
    found = []
    for root in roots:
        root = Path(root)
        if root.is_file():
            found.append(root)
            continue
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath).resolve()
            if any(here == s or s in here.parents for s in skip):
                dirnames[:] = []
                continue
            for name in filenames:
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file():
                    continue
                if suffixes is None or path.name.endswith(suffixes):
                    found.append(path)
    return sorted(found)


def scan_files(paths: Iterable[Path], values: list[str]) -> list[Leak]:
    def read():
        for path in paths:
            try:
                yield str(path), Path(path).read_bytes()
            except OSError:
                continue

    return scan_texts(read(), values)
