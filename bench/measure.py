"""Measuring: per-process CPU and peak RSS from /proc, wrk runs, SSE timing, one-shot latency.

CPU per process is utime+stime from /proc/PID/stat (all threads), sampled around a
load run and divided by the requests wrk completed. wrk's own CPU comes from its
rusage when it is reaped. Peak RSS is VmHWM from /proc/PID/status (the process's
high-water mark since it started). "Other" CPU is the machine's busy time in the
same window minus what the measured processes used: anything else running on the
two cores, i.e. noise.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
LUA_SCRIPT = Path(__file__).with_name("rotate.lua")


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (every thread), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the comm field: state is fields[0]; utime, stime are stat fields 14, 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def system_busy_seconds() -> float:
    """CPU time the whole machine spent running processes (all cores), in seconds.

    Interrupt and softirq time is left out: the kernel's loopback networking for our
    own traffic lands there, not in any process's utime/stime, so counting it would
    make our own work look like someone else's.
    """
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system = values[:3]
    return (user + nice + system) / CLK_TCK


def wait_until_quiet(
    own_pids: Sequence[int], limit_cores: float = 0.25, max_wait_s: float = 20.0
) -> float:
    """Wait (bounded) until CPU used by processes other than ours is below a limit.

    Returns the last sampled foreign load in cores.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        b0, o0 = system_busy_seconds(), _sum_cpu(own_pids)
        time.sleep(0.3)
        foreign = max(0.0, (system_busy_seconds() - b0) - (_sum_cpu(own_pids) - o0)) / 0.3
        if foreign < limit_cores or time.monotonic() >= deadline:
            return foreign
        time.sleep(0.7)


def _sum_cpu(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(pid)
    return total


# --------------------------------------------------------------------------- wrk


def ensure_wrk() -> str:
    """wrk on PATH, installing Debian's package if it is missing (saying so)."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError("wrk is not installed and apt-get is not available: install wrk")
    print("bench: wrk not found; running: apt-get install -y wrk", flush=True)
    if subprocess.run([apt, "install", "-y", "wrk"], check=False).returncode != 0:
        print("bench: that failed; running: apt-get update, then the install again", flush=True)
        subprocess.run([apt, "update"], check=True)
        subprocess.run([apt, "install", "-y", "wrk"], check=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("apt-get installed wrk but it is not on PATH")
    return found


@dataclass
class LoadResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: dict[str, float]  # role -> µs of CPU per request
    rss_mb: dict[str, float]  # role -> VmHWM after the run
    other_cores: float  # busy CPU (in cores) that none of the measured processes used
    raw: dict[str, float] = field(default_factory=dict)
    cpu_us_by_pid: dict[int, float] = field(default_factory=dict)


def run_wrk(
    wrk: str,
    url: str,
    *,
    connections: int,
    duration_s: float,
    tokens_file: Path | None,
    roles: Mapping[str, Sequence[int]],
    offset: int = 0,
    log_dir: Path,
) -> LoadResult:
    """One wrk run (1 thread, keep-alive) with CPU sampled for every role's processes."""
    scheme_host, _, path = url.partition("://")[2].partition("/")
    env = {
        **os.environ,
        "BENCH_PATH": "/" + path,
        "BENCH_TOKENS": str(tokens_file) if tokens_file else "",
        "BENCH_OFFSET": str(offset),
    }
    argv = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA_SCRIPT),
        f"http://{scheme_host}/{path}",
    ]
    out_path = log_dir / "wrk.out"
    pids = [pid for group in roles.values() for pid in group]
    before = {pid: cpu_seconds(pid) for pid in pids}
    busy0 = system_busy_seconds()
    with open(out_path, "w", encoding="utf-8") as out:
        popen = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        # Reap it ourselves to get its rusage (its CPU); bounded wait, then SIGKILL.
        deadline = time.monotonic() + duration_s + 30
        while True:
            pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
            if pid:
                popen.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.kill(popen.pid, signal.SIGKILL)
                _, status, usage = os.wait4(popen.pid, 0)
                popen.returncode = -9
                break
            time.sleep(0.05)
    busy = system_busy_seconds() - busy0
    after = {pid: cpu_seconds(pid) for pid in pids}
    text = out_path.read_text(encoding="utf-8", errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if popen.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({popen.returncode}):\n{text}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    n = max(1, int(data["requests"]))
    seconds = data["duration_us"] / 1e6
    wrk_cpu = usage.ru_utime + usage.ru_stime
    cpu_us = {
        role: sum(after[p] - before[p] for p in group) * 1e6 / n for role, group in roles.items()
    }
    cpu_us["wrk"] = wrk_cpu * 1e6 / n
    used = sum(after[p] - before[p] for p in pids) + wrk_cpu
    errors = sum(
        int(data[k])
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return LoadResult(
        requests=n,
        seconds=seconds,
        rps=n / seconds,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=errors,
        cpu_us=cpu_us,
        rss_mb={role: max(peak_rss_mb(p) for p in group) for role, group in roles.items()},
        other_cores=max(0.0, busy - used) / seconds,
        raw=data,
        cpu_us_by_pid={p: (after[p] - before[p]) * 1e6 / n for p in pids},
    )


# --------------------------------------------------------------------------- one-shot HTTP

CHAT_BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}'


class KeepAliveClient:
    """One keep-alive HTTP/1.1 connection; times single requests (client-side)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def post(self, path: str, token: str | None, body: bytes = CHAT_BODY) -> tuple[int, float]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        started = time.perf_counter()
        self.conn.request("POST", path, body=body, headers=headers)
        response = self.conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        return response.status, elapsed

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- SSE


@dataclass
class SseTiming:
    status: int
    first_chunk_ms: float
    gaps_ms: list[float]
    events: int


def sse_stream(
    port: int, path: str, token: str | None, *, chunks: int, interval_ms: int
) -> SseTiming:
    """POST a streaming chat completion; time the first event and the gaps between events.

    Raw socket, HTTP/1.1: each recv() is timestamped and the new ``data: `` events it
    completes get that time, so buffering anywhere on the way shows as bunched events.
    """
    body = json.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        f"Content-Length: {len(body)}",
        f"x-test-chunks: {chunks}",
        f"x-test-chunk-interval-ms: {interval_ms}",
        "Connection: close",
    ]
    if token:
        head.append(f"Authorization: Bearer {token}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    times: list[float] = []
    buffer = b""
    seen = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        sock.sendall(request)
        while True:
            data = sock.recv(65536)
            now = time.perf_counter()
            if not data:
                break
            buffer += data
            count = buffer.count(b"data: ")
            times.extend([now] * (count - seen))
            seen = count
            if b"data: [DONE]" in buffer:
                break
    status_line = buffer.split(b"\r\n", 1)[0].decode("latin-1")
    status = int(status_line.split()[1]) if status_line.startswith("HTTP/") else 0
    if not times:
        return SseTiming(status, float("nan"), [], 0)
    words = times[:chunks]  # then the stop chunk and [DONE] follow at once
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(words)]
    return SseTiming(status, (times[0] - started) * 1000, gaps, len(times))
