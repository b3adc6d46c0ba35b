"""A real redis-server (Debian's package) on a free loopback port, persistence off.

`RedisServer.start()` installs Debian's redis-server with scripts/install-redis.sh when
it is missing (root only; otherwise the error says what to run). `kill()` is a crash
(SIGKILL); `start()` again comes back on the same port, empty; `pause()`/`resume()`
(SIGSTOP/SIGCONT) make it a Redis that accepts connections and answers nothing.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from tests.support.processes import ManagedProcess, free_port

__all__ = ["RedisServer", "find_redis_server"]

_INSTALL = Path(__file__).resolve().parents[2] / "scripts" / "install-redis.sh"


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found is None:
        subprocess.run(["sh", str(_INSTALL)], check=True, timeout=600)
        found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is not installed: run scripts/install-redis.sh as root")
    return found


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_dir = log_dir
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> Self:
        self.process = ManagedProcess(
            [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.log_dir)],
            log_path=self.log_dir / f"redis-{self.port}.log", name="redis-server",
        ).start()
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if not self.process.alive():
                raise RuntimeError("redis-server exited:\n" + self.process.log_tail())
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server not answering PING on {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def pause(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            assert sock.recv(64).startswith(b"+OK")
