"""Ports, readiness polling and child processes for the integration tests.

Readiness is always polled (socket connects, HTTP probes), never slept for.
Child processes are signalled by their own PID only: SIGTERM, then SIGKILL after
a bound.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import urlsplit

__all__ = [
    "ManagedProcess",
    "ProcessDiedError",
    "free_port",
    "wait_for_http",
    "wait_for_tcp",
]

_POLL = 0.02  # seconds between readiness probes


class ProcessDiedError(RuntimeError):
    """A process exited while we were waiting for it to become ready."""


# Ports for servers the tests start later: below the kernel's ephemeral range, so the
# source port of some outgoing connection (there are thousands under load) cannot take
# one between the moment it is chosen and the moment the server binds it. Envoy's
# listeners refuse a port in use (no SO_REUSEPORT), so such a race would fail a start.
_EPHEMERAL_LOW = 32768
_PICK_LOW = 15000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _EPHEMERAL_LOW


_given: set[int] = set()  # ports this process has handed out: never hand one out twice


def _pick_range() -> tuple[int, int]:
    """The ports this test process may pick from. `RELAY_TEST_PORTS=LOW-HIGH` gives
    pytest processes run side by side (scripts/run_tests.py) ranges that do not overlap,
    so two of them cannot choose the same port in the same moment."""
    given = os.environ.get("RELAY_TEST_PORTS", "")
    if match := re.fullmatch(r"(\d+)-(\d+)", given):
        return int(match[1]), int(match[2])
    return _PICK_LOW, _ephemeral_low() - 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago, outside the ephemeral range (bound once
    to check, then closed), and not one this process has handed out before: a stack
    asks for several ports before it binds any, so a port that is merely free could
    come back twice and fail the second bind."""
    low, high = _pick_range()
    for _ in range(200):
        port = random.randint(low, high)
        if port in _given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _given.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # crowded: any port
        s.bind((host, 0))
        chosen: int = s.getsockname()[1]
        _given.add(chosen)
        return chosen


def _check_alive(process: ManagedProcess | None) -> None:
    if process is not None and not process.alive():
        raise ProcessDiedError(
            f"{process.name} exited with {process.returncode} while waiting; log:\n"
            + process.log_tail()
        )


def wait_for_tcp(
    host: str, port: int, timeout: float = 10.0, *, process: ManagedProcess | None = None
) -> None:
    """Poll until a TCP connect to host:port succeeds, else raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while True:
        _check_alive(process)
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} not accepting connections after {timeout}s: {last}")
        time.sleep(_POLL)


def _default_ok(status: int) -> bool:
    return 200 <= status < 300


def wait_for_http(
    url: str,
    timeout: float = 10.0,
    ok: Callable[[int], bool] = _default_ok,
    *,
    ca_file: str | os.PathLike[str] | None = None,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    process: ManagedProcess | None = None,
) -> int:
    """Poll ``url`` until ``ok(status)`` is true; returns that status.

    https URLs are verified against ``ca_file`` (or the system store when None).
    If ``process`` is given and exits meanwhile, raises ProcessDiedError at once.
    """
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    ctx: ssl.SSLContext | None = None
    if parts.scheme == "https":
        ctx = ssl.create_default_context(cafile=os.fspath(ca_file) if ca_file else None)
    deadline = time.monotonic() + timeout
    last: str = "no attempt"
    while True:
        _check_alive(process)
        conn: http.client.HTTPConnection
        if ctx is not None:
            conn = http.client.HTTPSConnection(host, parts.port or 443, timeout=2.0, context=ctx)
        else:
            conn = http.client.HTTPConnection(host, parts.port or 80, timeout=2.0)
        try:
            conn.request(method, target, headers=dict(headers or {}))
            resp = conn.getresponse()
            resp.read()
            if ok(resp.status):
                return resp.status
            last = f"status {resp.status}"
        except (OSError, http.client.HTTPException) as exc:
            last = repr(exc)
        finally:
            conn.close()
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} not ready after {timeout}s: {last}")
        time.sleep(_POLL)


class ManagedProcess:
    """A child process whose stdout and stderr go to ``log_path``.

    ``env`` holds overrides laid over the current environment (or, with
    ``inherit_env=False``, the whole environment); a value of None unsets. The child runs in its own
    session, so a terminal Ctrl-C does not reach it and signals go by PID only.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        env: Mapping[str, str | None] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        *,
        cwd: str | os.PathLike[str] | None = None,
        inherit_env: bool = True,
        name: str | None = None,
    ) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.env = dict(env or {})
        self.inherit_env = inherit_env
        self.cwd = cwd
        self.name = name or Path(self.argv[0]).name
        if log_path is None:
            import tempfile

            fd, tmp = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
            os.close(fd)
            log_path = tmp
        self.log_path = Path(log_path)
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Self:
        if self._popen is not None and self._popen.poll() is None:
            raise RuntimeError(f"{self.name} already running (pid {self._popen.pid})")
        merged: dict[str, str | None] = {**os.environ} if self.inherit_env else {}
        merged.update(self.env)
        env = {k: v for k, v in merged.items() if v is not None}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._popen = subprocess.Popen(
            self.argv,
            env=env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the PID, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        popen = self._popen
        if popen is None:
            return None
        try:
            if popen.poll() is None:
                self._signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                self._signal(signal.SIGTERM)
                try:
                    popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    popen.wait(10.0)
            return popen.returncode
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def kill(self) -> None:
        """SIGKILL the PID at once (simulates a crash)."""
        if self.alive():
            self._signal(signal.SIGKILL)
            assert self._popen is not None
            self._popen.wait(10.0)

    def send_signal(self, sig: int) -> None:
        self._signal(sig)

    def _signal(self, sig: int) -> None:
        if self._popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._popen.pid, sig)

    # -- state -------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise RuntimeError(f"{self.name} not started")
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Poll the log until the regex ``pattern`` matches; returns the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_text())
            if m:
                return m
            _check_alive(self)
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name}: {pattern!r} not in log after {timeout}s:\n{self.log_tail()}"
                )
            time.sleep(_POLL)

    # -- context manager ---------------------------------------------------

    def __enter__(self) -> Self:
        if self._popen is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self._popen.pid if self._popen else None
        return f"ManagedProcess({self.name!r}, pid={pid}, alive={self.alive()})"


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in kB, from /proc."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values
