"""The relay benchmark: one command, one run, one table.

    python -m bench.run [--quick] [--duration S] [--connections 1,16,64] [--rounds N]
                        [--out FILE] [--variants authz2,envoy2,unix,reuseport2]

Starts, on 127.0.0.1 only: nginx (the fast upstream; see bench/upstreams.py for why),
the project's fake OpenAI (SSE upstream), an OpenBao dev server holding one key per
tenant, a Firebase-shaped cert endpoint, the real ``authz serve``, the trivial floor
ext_authz (bench/floor.py), and one Envoy per path, each from the one template:

  direct        wrk -> upstream
  envoy alone   wrk -> Envoy (template minus ext_authz) -> upstream
  floor         wrk -> Envoy (template) -> upstream, ext_authz = bench/floor.py
  relay         wrk -> Envoy (template) -> upstream, ext_authz = authz serve, real RS256
                tokens of many users over many tenants, keys from OpenBao
  fast path     the relay with AUTHZ_FAST_PATH=on: Envoy verifies the tokens (its Lua filter)
                and injects the keys (Lua) from what authz serves it over xDS

Every path gets the same load: wrk, 1 thread, keep-alive, a small non-streaming POST
/v1/chat/completions whose Authorization header rotates through every user's token
(bench/rotate.lua). Rounds are interleaved (every path at every connection count,
then again), and the table shows medians. Then, on the warm relay: SSE first chunk
and chunk spacing against direct, the cold paths (a new token, a new tenant), and
the Vault reads per tenant from authz's own /metrics.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from authz.stack.binaries import envoy_binary
from bench.envoy_variants import (
    EnvoyPorts,
    render_relay,
    strip_ext_authz,
    validate,
    with_authz_endpoints,
    with_authz_pipe,
    with_http_ext_authz,
)
from bench.measure import (
    KeepAliveClient,
    LoadResult,
    ensure_wrk,
    run_wrk,
    sse_stream,
    wait_until_quiet,
)
from bench.upstreams import NginxUpstream
from tests.support.fake_openai import FakeOpenAIProcess
from tests.support.firebase import CertsServer, FirebaseKeys
from tests.support.processes import ManagedProcess, free_port, wait_for_http
from tests.support.redis import RedisServer
from tests.support.relay import wait_for_grpc
from tests.support.vault import BaoDevServer

REPO = Path(__file__).resolve().parents[1]
PROJECT_ID = "bench-relay"
CHAT_PATH = "/v1/chat/completions"
RELAY_PREFIX = "/api/openai"
READY_S = 30.0
KEY_TTL_S = 300.0  # AUTHZ_KEY_CACHE_TTL given to every authz process
# The governed tenant: an endpoint list and every limit, all too high to trigger
# (the `governed` variant sets it as every tenant's policy through AUTHZ_DEFAULT_POLICY).
GOVERNED_POLICY = json.dumps({
    "endpoints": ["POST /v1/chat/completions", "POST /v1/responses", "GET /v1/models"],
    "limits": {"user_requests_per_minute": 10_000_000, "tenant_requests_per_minute": 10_000_000,
               "user_concurrent_requests": 100_000, "user_tokens_per_day": 10**12,
               "tenant_tokens_per_day": 10**13},
}, separators=(",", ":"))
NOISY_CORES = 0.2  # other processes' CPU during a point above which it is run again


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Variant:
    """How a relay is put together: authz processes, transport, Envoy workers."""

    name: str = "relay"
    authz_processes: int = 1
    reuseport: bool = False  # the processes share one port (else one endpoint each)
    unix: bool = False
    envoy_concurrency: int = 1
    env: tuple[tuple[str, str], ...] = ()  # extra environment for the authz processes
    #: Start a redis-server for this row and give its URL as AUTHZ_REDIS_URL.
    redis: bool = False

    @classmethod
    def parse(cls, spec: str) -> Variant:
        """'authz2', 'reuseport2', 'unix', 'envoy2', 'NAME=VALUE' (env), 'governed'
        (every tenant under GOVERNED_POLICY), 'redis' (a redis-server, AUTHZ_REDIS_URL),
        joined by '+'."""
        kw: dict[str, Any] = {"name": f"relay[{spec}]"}
        env: list[tuple[str, str]] = []
        for part in spec.split("+"):
            if part == "governed":
                env.append(("AUTHZ_DEFAULT_POLICY", GOVERNED_POLICY))
                continue
            if part == "redis":
                kw["redis"] = True
                continue
            if "=" in part:
                name, _, value = part.partition("=")
                env.append((name, value))
                continue
            m = re.fullmatch(r"(authz|reuseport|envoy)(\d+)|unix", part)
            if m is None:
                raise argparse.ArgumentTypeError(f"unknown variant part {part!r}")
            if part == "unix":
                kw["unix"] = True
            elif m.group(1) == "envoy":
                kw["envoy_concurrency"] = int(m.group(2))
            else:
                kw["authz_processes"] = int(m.group(2))
                kw["reuseport"] = m.group(1) == "reuseport"
        return cls(**kw, env=tuple(env))


@dataclass
class Options:
    duration_s: float
    connections: list[int]
    rounds: int
    warmup_s: float
    users: int
    tenants: int
    cold_samples: int
    sse_streams: int
    upstream: str  # "nginx" or "fake"
    fake_row: bool
    paths: list[str]
    variants: list[Variant]
    out: Path | None
    work_dir: Path
    keep_work_dir: bool
    py_spy: Path | None
    py_spy_s: float
    py_spy_args: str
    py_spy_target: str
    noise_retries: int
    http_floor: bool
    nice: int
    quiet_wait_s: float
    #: The OpenAI path every load request POSTs to.
    endpoint: str = CHAT_PATH


# --------------------------------------------------------------------------- the stack


@dataclass
class Target:
    """One path under load: where wrk sends, and which processes to measure."""

    name: str
    port: int
    path: str
    roles: dict[str, list[ManagedProcess]]
    metrics_urls: list[str] = field(default_factory=list)
    admin_port: int | None = None  # Envoy's admin (read for the fast path's counters)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def role_pids(self) -> dict[str, list[int]]:
        return {role: [p.pid for p in procs] for role, procs in self.roles.items()}


@dataclass
class Fixture:
    """Everything started for the run, and how to reach it."""

    keys: FirebaseKeys
    certs: CertsServer
    bao: BaoDevServer
    tokens: list[str]
    token_tenant: list[str]
    tokens_file: Path
    upstream_url: str
    upstream_role: ManagedProcess
    fake: FakeOpenAIProcess
    processes: list[ManagedProcess] = field(default_factory=list)
    redis_servers: list[RedisServer] = field(default_factory=list)
    endpoint: str = CHAT_PATH  # the OpenAI path of every load request


def tenant_name(i: int) -> str:
    return f"tenant-{i:04d}"


def tenant_key(tenant: str) -> str:
    return f"sk-bench-{tenant}-{secrets.token_hex(12)}"


def start_envoy(
    work_dir: Path, name: str, yaml_text: str, ports: EnvoyPorts, concurrency: int = 1
) -> ManagedProcess:
    config = work_dir / f"envoy-{name}.yaml"
    config.write_text(yaml_text, encoding="utf-8")
    validate(config)
    process = ManagedProcess(
        [
            envoy_binary(),
            "-c",
            str(config),
            "--disable-hot-restart",
            "--concurrency",
            str(concurrency),
            "--log-level",
            "warn",
        ],
        {},
        work_dir / f"envoy-{name}.log",
        name=f"envoy-{name}",
    ).start()
    wait_for_http(f"http://127.0.0.1:{ports.admin}/ready", timeout=READY_S, process=process)
    return process


def authz_env(fx: Fixture, grpc_port: int, metrics_port: int) -> dict[str, str]:
    env = {
        "AUTHZ_FIREBASE_PROJECT_ID": PROJECT_ID,
        "AUTHZ_FIREBASE_CERTS_URL": fx.certs.url,
        "AUTHZ_UPSTREAM_URL": fx.upstream_url,
        "AUTHZ_GRPC_ADDR": f"127.0.0.1:{grpc_port}",
        "AUTHZ_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "AUTHZ_KEY_CACHE_TTL": f"{KEY_TTL_S:.0f}s",
        **fx.bao.env,
    }
    env.update({k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ})
    return env


def start_relay(fx: Fixture, work_dir: Path, variant: Variant) -> Target:
    tag = re.sub(r"[^a-z0-9]+", "-", variant.name).strip("-")
    shared_port = free_port()
    authz_ports: list[int] = []
    authz_procs: list[ManagedProcess] = []
    metrics_urls: list[str] = []
    pipe = str(work_dir / f"{tag}.sock") if variant.unix else None
    extra_env = dict(variant.env)
    if variant.redis:
        redis = RedisServer(work_dir).start()
        fx.redis_servers.append(redis)
        extra_env["AUTHZ_REDIS_URL"] = redis.url
    for i in range(variant.authz_processes):
        port = shared_port if variant.reuseport or i == 0 else free_port()
        metrics_port = free_port()
        if variant.reuseport or variant.unix:
            argv = [sys.executable, "-m", "bench.authz_variant"]
            argv += ["--reuseport"] if variant.reuseport else []
            argv += ["--unix", pipe] if pipe else []
        else:
            argv = [sys.executable, "-m", "authz", "serve"]
        process = ManagedProcess(
            argv,
            {**authz_env(fx, port, metrics_port), **extra_env},
            work_dir / f"authz-{tag}-{i}.log",
            cwd=REPO,
            inherit_env=False,
            name=f"authz-{tag}-{i}",
        ).start()
        if variant.reuseport:
            process.wait_for_log(r'"authz serving"', READY_S)
        else:
            wait_for_grpc(f"127.0.0.1:{port}", process)
        authz_procs.append(process)
        authz_ports.append(port)
        metrics_urls.append(f"http://127.0.0.1:{metrics_port}/metrics")
    fx.processes.extend(authz_procs)
    ports = EnvoyPorts(free_port(), free_port())
    text = render_relay(ports, authz_ports[0], fx.upstream_url)
    if variant.authz_processes > 1 and not variant.reuseport:
        text = with_authz_endpoints(text, authz_ports[0], authz_ports)
    if pipe:
        text = with_authz_pipe(text, authz_ports[0], pipe)
    envoy = start_envoy(work_dir, tag, text, ports, variant.envoy_concurrency)
    fx.processes.append(envoy)
    return Target(
        variant.name,
        ports.listen,
        RELAY_PREFIX + fx.endpoint,
        {"envoy": [envoy], "authz": authz_procs, "upstream": [fx.upstream_role]},
        metrics_urls,
    )


FAST_PATH_LOADED = "extension_config_discovery.http_filter.relay.fast_path.lua.update_success"


def envoy_counters(admin_port: int) -> dict[str, int]:
    url = f"http://127.0.0.1:{admin_port}/stats?format=json"
    with urllib.request.urlopen(url, timeout=5) as response:
        stats = json.loads(response.read())["stats"]
    return {s["name"]: s["value"] for s in stats if isinstance(s.get("value"), int)}


def start_fast_path(fx: Fixture, work_dir: Path) -> Target:
    """authz serve as the fast path's control plane, and an Envoy fed by it over xDS."""
    port, metrics_port = free_port(), free_port()
    process = ManagedProcess(
        [sys.executable, "-m", "authz", "serve"],
        {**authz_env(fx, port, metrics_port), "AUTHZ_FAST_PATH": "on"},
        work_dir / "authz-fast-path.log",
        cwd=REPO,
        inherit_env=False,
        name="authz-fast-path",
    ).start()
    fx.processes.append(process)
    wait_for_grpc(f"127.0.0.1:{port}", process)
    ports = EnvoyPorts(free_port(), free_port())
    envoy = start_envoy(work_dir, "fast-path",
                        render_relay(ports, port, fx.upstream_url, fast_path=True), ports)
    fx.processes.append(envoy)
    deadline = time.monotonic() + READY_S
    while envoy_counters(ports.admin).get(FAST_PATH_LOADED, 0) < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("fast path: Envoy never accepted the tenant table")
        time.sleep(0.1)
    return Target(
        "fast path",
        ports.listen,
        RELAY_PREFIX + fx.endpoint,
        {"envoy": [envoy], "authz": [process], "upstream": [fx.upstream_role]},
        [f"http://127.0.0.1:{metrics_port}/metrics"],
        admin_port=ports.admin,
    )


def start_floor(fx: Fixture, work_dir: Path) -> Target:
    mapping = {
        tok: f"sk-floor-{tenant}" for tok, tenant in zip(fx.tokens, fx.token_tenant, strict=True)
    }
    map_file = work_dir / "floor-tokens.json"
    map_file.write_text(json.dumps(mapping), encoding="utf-8")
    port = free_port()
    floor = ManagedProcess(
        [sys.executable, "-m", "bench.floor", "--port", str(port), "--tokens", str(map_file)],
        {},
        work_dir / "floor.log",
        cwd=REPO,
        name="floor",
    ).start()
    fx.processes.append(floor)
    floor.wait_for_log(r"floor listening", READY_S)
    ports = EnvoyPorts(free_port(), free_port())
    envoy = start_envoy(work_dir, "floor", render_relay(ports, port, fx.upstream_url), ports)
    fx.processes.append(envoy)
    return Target(
        "floor",
        ports.listen,
        RELAY_PREFIX + fx.endpoint,
        {"envoy": [envoy], "authz": [floor], "upstream": [fx.upstream_role]},
    )


def start_http_floor(fx: Fixture, work_dir: Path) -> Target:
    """Experiment: the floor as an HTTP/1.1 ext_authz (Envoy http_service), not gRPC."""
    map_file = work_dir / "floor-tokens.json"  # written by start_floor
    port = free_port()
    floor = ManagedProcess(
        [sys.executable, "-m", "bench.floor_http", "--port", str(port), "--tokens", str(map_file)],
        {},
        work_dir / "floor-http.log",
        cwd=REPO,
        name="floor-http",
    ).start()
    fx.processes.append(floor)
    floor.wait_for_log(r"floor-http listening", READY_S)
    ports = EnvoyPorts(free_port(), free_port())
    text = with_http_ext_authz(render_relay(ports, port, fx.upstream_url), port)
    envoy = start_envoy(work_dir, "floor-http", text, ports)
    fx.processes.append(envoy)
    return Target(
        "floor (HTTP authz)",
        ports.listen,
        RELAY_PREFIX + fx.endpoint,
        {"envoy": [envoy], "authz": [floor], "upstream": [fx.upstream_role]},
    )


def start_envoy_alone(fx: Fixture, work_dir: Path) -> Target:
    ports = EnvoyPorts(free_port(), free_port())
    # The authz port in the cut config is never dialled: nothing refers to the cluster.
    text = strip_ext_authz(render_relay(ports, free_port(), fx.upstream_url))
    envoy = start_envoy(work_dir, "alone", text, ports)
    fx.processes.append(envoy)
    return Target(
        "envoy alone",
        ports.listen,
        RELAY_PREFIX + fx.endpoint,
        {"envoy": [envoy], "upstream": [fx.upstream_role]},
    )


@contextmanager
def fixture(opts: Options, stack: ExitStack) -> Iterator[Fixture]:
    work = opts.work_dir
    log(f"work dir {work}")
    fake = FakeOpenAIProcess(workers=1, log_path=work / "fake-openai.log")
    fake.start()
    stack.callback(fake.stop)
    upstream_url, upstream_role = fake.url, fake.process
    if opts.upstream == "nginx":
        nginx = NginxUpstream(work, free_port()).start()
        stack.callback(nginx.stop)
        upstream_url, upstream_role = nginx.url, nginx.process
    log(f"upstream {opts.upstream} at {upstream_url}; fake OpenAI (SSE) at {fake.url}")

    keys = FirebaseKeys(PROJECT_ID)
    certs = CertsServer(keys).start()
    stack.callback(certs.stop)
    bao = BaoDevServer(workdir=work / "bao").start()
    stack.callback(bao.stop)
    started = time.perf_counter()
    client = bao.client()
    for i in range(opts.tenants + opts.cold_samples):
        tenant = tenant_name(i) if i < opts.tenants else f"cold-{i:04d}"
        client.secrets.kv.v2.create_or_update_secret(
            path=f"openai/clients/{tenant}",
            secret={"api_key": tenant_key(tenant)},
            mount_point="secret",
        )
    log(
        f"OpenBao: {opts.tenants} tenants (+{opts.cold_samples} kept cold) "
        f"in {time.perf_counter() - started:.1f}s"
    )
    started = time.perf_counter()
    tokens, tenants = [], []
    for u in range(opts.users):
        tenant = tenant_name(u % opts.tenants)
        tokens.append(keys.mint(None, f"user-{u:05d}", client_id=tenant, lifetime=3600))
        tenants.append(tenant)
    tokens_file = work / "tokens.txt"
    tokens_file.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    log(f"minted {opts.users} RS256 tokens in {time.perf_counter() - started:.1f}s")
    fx = Fixture(keys, certs, bao, tokens, tenants, tokens_file, upstream_url, upstream_role, fake,
                 endpoint=opts.endpoint)

    def stop_all() -> None:
        for process in reversed(fx.processes):
            process.stop()
        for redis in fx.redis_servers:
            redis.stop()

    stack.callback(stop_all)
    yield fx


# --------------------------------------------------------------------------- metrics


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r'authz_cache_events_total\{cache="(\w+)",event="(\w+)"\} (\S+)', line)
        if m:
            out[f"{m.group(1)}_{m.group(2)}"] = float(m.group(3))
    return out


# --------------------------------------------------------------------------- phases


def sanity(fx: Fixture, targets: Sequence[Target]) -> None:
    """Each path answers 200 to a valid token; only the ext_authz paths refuse none."""
    for target in targets:
        client = KeepAliveClient(target.port)
        try:
            status, _ = client.post(target.path, fx.tokens[0])
            bare, _ = client.post(target.path, None)
        finally:
            client.close()
        expect_bare = 401 if target.roles.get("authz") else 200
        if status != 200 or bare != expect_bare:
            raise RuntimeError(
                f"{target.name}: token -> {status}, no token -> {bare} "
                f"(expected 200 and {expect_bare})"
            )
    log("sanity: every path 200 with a token; no token: Envoy alone 200, ext_authz paths 401")


def median_result(results: list[LoadResult]) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    roles = results[0].cpu_us.keys()
    return {
        "rps": med([r.rps for r in results]),
        "p50_ms": med([r.p50_ms for r in results]),
        "p99_ms": med([r.p99_ms for r in results]),
        "cpu_us": {role: med([r.cpu_us[role] for r in results]) for role in roles},
        "rss_mb": {role: max(r.rss_mb[role] for r in results) for role in results[0].rss_mb},
        "other_cores": med([r.other_cores for r in results]),
        "errors": sum(r.errors for r in results),
        "rounds": len(results),
        "rps_all": [round(r.rps, 1) for r in results],
        "cpu_us_by_pid": [{str(k): round(v) for k, v in r.cpu_us_by_pid.items()} for r in results],
    }


def load_phase(
    opts: Options, fx: Fixture, targets: list[Target], wrk: str
) -> dict[tuple[str, int], dict[str, Any]]:
    own = [p.pid for p in fx.processes] + [fx.upstream_role.pid, fx.bao.process.pid]  # type: ignore[union-attr]
    for target in targets:
        log(f"warm-up {target.name}: {opts.warmup_s:.0f}s at 16 connections")
        run_wrk(
            wrk,
            target.url,
            connections=16,
            duration_s=opts.warmup_s,
            tokens_file=fx.tokens_file,
            roles=target.role_pids(),
            log_dir=opts.work_dir,
        )
    results: dict[tuple[str, int], list[LoadResult]] = {}
    runs = opts.rounds * len(opts.connections) * len(targets)
    done = 0
    for r in range(opts.rounds):
        for conns in opts.connections:
            # Rotate the order each round so no path always follows the same neighbour.
            order = targets[r % len(targets) :] + targets[: r % len(targets)]
            for target in order:
                # Someone else's CPU use spoils a point: retry it (bounded), keep the
                # quietest attempt. The table's "other" column shows what remained.
                result: LoadResult | None = None
                for _attempt in range(1 + opts.noise_retries):
                    wait_until_quiet(own, max_wait_s=opts.quiet_wait_s)
                    attempt = run_wrk(
                        wrk,
                        target.url,
                        connections=conns,
                        duration_s=opts.duration_s,
                        tokens_file=fx.tokens_file,
                        roles=target.role_pids(),
                        offset=done * 37,
                        log_dir=opts.work_dir,
                    )
                    if result is None or attempt.other_cores < result.other_cores:
                        result = attempt
                    if attempt.other_cores <= NOISY_CORES or _attempt == opts.noise_retries:
                        break
                    log(
                        f"  {target.name} c={conns}: {attempt.other_cores:.2f} cores of "
                        "other load during the run; again"
                    )
                assert result is not None
                done += 1
                results.setdefault((target.name, conns), []).append(result)
                note = (
                    f" (other load: {result.other_cores:.2f} cores)"
                    if result.other_cores > NOISY_CORES
                    else ""
                )
                authz = target.roles.get("authz", [])
                if len(authz) > 1:  # how the checks spread over the authz processes
                    split = "/".join(f"{result.cpu_us_by_pid[p.pid]:.0f}" for p in authz)
                    note += f" authz µs/req per process {split}"
                log(
                    f"[{done}/{runs}] round {r + 1} {target.name:<16} c={conns:<3} "
                    f"{result.rps:8.0f} req/s p50 {result.p50_ms:6.2f} ms "
                    f"p99 {result.p99_ms:6.2f} ms errors {result.errors}{note}"
                )
    return {key: median_result(value) for key, value in results.items()}


def sse_phase(opts: Options, fx: Fixture, relay_to_fake: Target) -> dict[str, Any]:
    chunks, interval = 20, 20
    token = fx.tokens[1]
    direct: list[Any] = []
    relayed: list[Any] = []
    for _ in range(2):  # warm both connections' paths
        sse_stream(fx.fake.port, CHAT_PATH, None, chunks=2, interval_ms=0)
        sse_stream(relay_to_fake.port, RELAY_PREFIX + CHAT_PATH, token, chunks=2, interval_ms=0)
    for _ in range(opts.sse_streams):
        direct.append(
            sse_stream(fx.fake.port, CHAT_PATH, None, chunks=chunks, interval_ms=interval)
        )
        relayed.append(
            sse_stream(
                relay_to_fake.port,
                RELAY_PREFIX + CHAT_PATH,
                token,
                chunks=chunks,
                interval_ms=interval,
            )
        )

    def summary(runs: list[Any]) -> dict[str, Any]:
        gaps = sorted(g for run in runs for g in run.gaps_ms)
        return {
            "status": sorted({run.status for run in runs}),
            "events": sorted({run.events for run in runs}),
            "first_chunk_ms": statistics.median(run.first_chunk_ms for run in runs),
            "gap_median_ms": statistics.median(gaps),
            "gap_p5_ms": gaps[int(0.05 * (len(gaps) - 1))],
            "gap_p95_ms": gaps[int(0.95 * (len(gaps) - 1))],
            # A buffering hop delivers chunks together: gaps far below the interval.
            "bunched": sum(1 for g in gaps if g < interval / 2),
            "gaps": len(gaps),
        }

    out: dict[str, Any] = {
        "chunks": chunks,
        "interval_ms": interval,
        "streams": opts.sse_streams,
        "direct": summary(direct),
        "relay": summary(relayed),
    }
    out["first_chunk_added_ms"] = out["relay"]["first_chunk_ms"] - out["direct"]["first_chunk_ms"]
    return out


def check_key_injection(fx: Fixture, relay_to_fake: Target) -> None:
    """Through the relay the fake upstream must see the tenant's key, not the token."""
    client = KeepAliveClient(relay_to_fake.port)
    try:
        client.conn.request(
            "POST",
            RELAY_PREFIX + "/v1/test/echo",
            body=b"{}",
            headers={"Authorization": f"Bearer {fx.tokens[2]}", "Content-Type": "application/json"},
        )
        response = client.conn.getresponse()
        echoed = json.loads(response.read())
    finally:
        client.close()
    headers = {k.lower(): v for k, v in echoed["headers"]}
    expected = fx.bao.read_tenant(fx.token_tenant[2])["api_key"]
    if headers.get("authorization") != f"Bearer {expected}":
        raise RuntimeError("relay did not inject the tenant key (echo shows otherwise)")
    log("key injection: the upstream saw the tenant's key from OpenBao")


def cold_phase(opts: Options, fx: Fixture, relay: Target) -> dict[str, Any]:
    """On the warm relay: a cached token, a new token (signature check), a new tenant."""
    before = scrape(relay.metrics_urls[0])
    client = KeepAliveClient(relay.port)
    path = RELAY_PREFIX + CHAT_PATH
    warm: list[float] = []
    new_token: list[float] = []
    new_tenant: list[float] = []
    try:
        for _ in range(3):
            client.post(path, fx.tokens[3])
        for i in range(opts.cold_samples):
            tok_user = fx.keys.mint(
                None, f"cold-user-{i:04d}", client_id=tenant_name(i % opts.tenants)
            )
            tok_tenant = fx.keys.mint(
                None, f"cold-tenant-user-{i:04d}", client_id=f"cold-{opts.tenants + i:04d}"
            )
            for bucket, token in (
                (warm, fx.tokens[3]),
                (new_token, tok_user),
                (new_tenant, tok_tenant),
            ):
                status, seconds = client.post(path, token)
                if status != 200:
                    raise RuntimeError(f"cold path request answered {status}")
                bucket.append(seconds * 1000)
                time.sleep(0.02)
    finally:
        client.close()
    after = scrape(relay.metrics_urls[0])
    med = {
        name: statistics.median(v)
        for name, v in (("warm", warm), ("new_token", new_token), ("new_tenant", new_tenant))
    }
    return {
        "samples": opts.cold_samples,
        "warm_ms": med["warm"],
        "new_token_ms": med["new_token"],
        "new_tenant_ms": med["new_tenant"],
        "signature_check_added_ms": med["new_token"] - med["warm"],
        "vault_miss_added_ms": med["new_tenant"] - med["new_token"],
        "vault_reads": after.get("key_source_read", 0) - before.get("key_source_read", 0),
    }


def py_spy_phase(opts: Options, fx: Fixture, target: Target, wrk: str) -> dict[str, Any]:
    """A separate relay run under py-spy (not in the table: sampling slows the target)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise RuntimeError("py-spy not found: pip install py-spy")
    pid = target.roles["authz"][0].pid
    assert opts.py_spy is not None
    raw = opts.py_spy.with_suffix(".txt")
    conns = max(opts.connections)
    recorder = ManagedProcess(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(opts.py_spy_s)),
            "--format",
            "raw",
            "--output",
            str(raw),
            "--threads",
            # Default: non-blocking (sampling must not stop the process); --native needs
            # blocking sampling, which slows the target a lot: use a low --rate then.
            *opts.py_spy_args.split(),
        ],
        {},
        opts.work_dir / "py-spy.log",
        name="py-spy",
    ).start()
    time.sleep(1.0)
    result = run_wrk(
        wrk,
        target.url,
        connections=conns,
        duration_s=opts.py_spy_s - 2,
        tokens_file=fx.tokens_file,
        roles=target.role_pids(),
        log_dir=opts.work_dir,
    )
    deadline = time.monotonic() + 30
    while recorder.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    recorder.stop()
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote nothing:\n{recorder.log_tail()}")
    log(f"py-spy: collapsed stacks in {raw} ({result.rps:.0f} req/s while sampled)")
    return {"raw": str(raw), "rps_while_sampled": result.rps}


# --------------------------------------------------------------------------- report


def print_table(
    opts: Options, targets: list[Target], medians: dict[tuple[str, int], dict[str, Any]]
) -> str:
    w = max(20, *(len(t.name) + 1 for t in targets))
    head = (
        f"{'path':<{w}}{'conns':>5}{'req/s':>9}{'xenvoy':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f" │{'CPU µs/req: envoy':>18}{'authz':>7}{'upstr':>7}{'wrk':>6}{'total':>7}"
        f" │{'peak RSS MB: envoy':>19}{'authz':>7}{'upstr':>7} │{'other':>6}"
    )
    lines = [head, "─" * len(head)]
    for conns in opts.connections:
        alone = medians.get(("envoy alone", conns))
        for target in targets:
            m = medians[(target.name, conns)]
            cpu, rss = m["cpu_us"], m["rss_mb"]
            ratio = f"{m['rps'] / alone['rps']:.2f}" if alone else "-"

            def c(role: str, cpu: dict[str, float] = cpu) -> str:
                return f"{cpu[role]:.0f}" if role in cpu else "-"

            def r(role: str, rss: dict[str, float] = rss) -> str:
                return f"{rss[role]:.0f}" if role in rss else "-"

            lines.append(
                f"{target.name:<{w}}{conns:>5}{m['rps']:>9.0f}{ratio:>8}"
                f"{m['p50_ms']:>8.2f}{m['p99_ms']:>8.2f}"
                f" │{c('envoy'):>18}{c('authz'):>7}{c('upstream'):>7}{c('wrk'):>6}"
                f"{sum(cpu.values()):>7.0f}"
                f" │{r('envoy'):>19}{r('authz'):>7}{r('upstream'):>7}"
                f" │{m['other_cores'] * 50:>5.0f}%" + ("  ERRORS" if m["errors"] else "")
            )
        lines.append("")
    return "\n".join(lines)


def targets_summary(
    opts: Options, medians: dict[tuple[str, int], dict[str, Any]], extra: dict[str, Any]
) -> list[str]:
    out = []
    top, one = max(opts.connections), min(opts.connections)
    relay, floor, alone = (medians.get((n, top)) for n in ("relay", "floor", "envoy alone"))
    if relay and floor and alone:
        out.append(
            f"relay at {top} conns: {relay['rps'] / floor['rps']:.2f}x floor "
            f"(target ≥ 0.9), {relay['rps'] / alone['rps']:.2f}x Envoy alone "
            f"(target ≥ 0.25)"
        )
    for name, target in (("relay[governed]", 0.85), ("relay[governed+redis]", 0.75)):
        governed = medians.get((name, top))
        if relay and governed:
            out.append(
                f"{name} at {top} conns: {governed['rps'] / relay['rps']:.2f}x the ungoverned "
                f"relay (target ≥ {target})"
                + (f", {governed['rps'] / floor['rps']:.2f}x floor (target ≥ 0.9), "
                   f"{governed['rps'] / alone['rps']:.2f}x Envoy alone (target ≥ 0.25)"
                   if floor and alone else "")
            )
    relay1, alone1 = medians.get(("relay", one)), medians.get(("envoy alone", one))
    if relay1 and alone1:
        out.append(
            f"p50 added over Envoy alone at {one} conn: "
            f"{relay1['p50_ms'] - alone1['p50_ms']:.2f} ms (target ≤ 1.0)"
        )
    fast, fast1 = medians.get(("fast path", top)), medians.get(("fast path", one))
    if fast and alone:
        out.append(f"fast path at {top} conns: {fast['rps'] / alone['rps']:.2f}x Envoy alone "
                   f"(target ≥ 0.8)")
    if fast1 and alone1:
        out.append(f"fast path p50 added over Envoy alone at {one} conn: "
                   f"{fast1['p50_ms'] - alone1['p50_ms']:.3f} ms (target ≤ 0.25)")
    counts = extra.get("fast_path")
    if counts:
        out.append(f"fast path requests during the rounds: {counts['served_by_envoy']} decided "
                   f"by Envoy alone, {counts['sent_to_ext_authz']} sent to ext_authz")
    relay_rows = [m for k, m in medians.items() if k[0] == "relay"]
    rss_authz = max((m["rss_mb"].get("authz", 0) for m in relay_rows), default=0)
    rss_envoy = max((m["rss_mb"].get("envoy", 0) for m in relay_rows), default=0)
    out.append(
        f"peak RSS under load: authz {rss_authz:.0f} MB (target ≤ 60), "
        f"Envoy {rss_envoy:.0f} MB (target ≤ 80)"
    )
    sse = extra.get("sse")
    if sse:
        d, r = sse["direct"], sse["relay"]
        out.append(
            f"SSE ({sse['streams']} streams x {sse['chunks']} chunks every "
            f"{sse['interval_ms']} ms): first chunk direct {d['first_chunk_ms']:.2f} ms, "
            f"relay {r['first_chunk_ms']:.2f} ms, added {sse['first_chunk_added_ms']:.2f} ms "
            f"(target ≤ 3); spacing median/p5/p95 direct {d['gap_median_ms']:.1f}/"
            f"{d['gap_p5_ms']:.1f}/{d['gap_p95_ms']:.1f} ms, relay {r['gap_median_ms']:.1f}/"
            f"{r['gap_p5_ms']:.1f}/{r['gap_p95_ms']:.1f} ms; gaps under half the interval "
            f"(bunched, i.e. buffered): direct {d['bunched']}/{d['gaps']}, relay "
            f"{r['bunched']}/{r['gaps']}; statuses {d['status']}/{r['status']}"
        )
    cold = extra.get("cold")
    if cold:
        out.append(
            f"cold paths on the warm relay (median of {cold['samples']}, client-side): "
            f"cached token {cold['warm_ms']:.2f} ms; new token {cold['new_token_ms']:.2f} ms "
            f"(+{cold['signature_check_added_ms']:.2f} signature check); new tenant "
            f"{cold['new_tenant_ms']:.2f} ms (+{cold['vault_miss_added_ms']:.2f} Vault read; "
            f"{cold['vault_reads']:.0f} reads for {cold['samples']} new tenants)"
        )
    vault = extra.get("vault")
    if vault:
        out.append(
            f"Vault reads: {vault['key_source_read']:.0f} for {vault['tenants']} tenants over "
            f"{vault['elapsed_s']:.0f}s with a {KEY_TTL_S:.0f}s key TTL = "
            f"{vault['reads_per_tenant_per_ttl']:.2f} per tenant per TTL period "
            f"(target ≤ 1); signature checks {vault['token_miss']:.0f} for "
            f"{vault['users']} users, token cache hits {vault['token_hit']:.0f}"
        )
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 s per point, 1 round, 1 and 64 connections",
    )
    p.add_argument("--duration", type=float, help="seconds per point (default 10)")
    p.add_argument(
        "--endpoint", default=CHAT_PATH,
        help=f"the OpenAI path the load POSTs to (default {CHAT_PATH}, whose body the fast "
        "path reads; /v1/embeddings, say, shows it without that read)")
    p.add_argument("--connections", help="comma-separated (default 1,16,64)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--tenants", type=int, default=100)
    p.add_argument(
        "--upstream",
        choices=("nginx", "fake"),
        default="nginx",
        help="throughput upstream (default nginx; fake = the h11 stand-in)",
    )
    p.add_argument(
        "--fake-row",
        action="store_true",
        help="also measure 'direct' to the h11 fake (reference row)",
    )
    p.add_argument(
        "--variants",
        default="",
        help="extra relay rows, e.g. authz2,reuseport2,unix,envoy2,authz2+envoy2",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=5.0,
        help="before each point, wait up to S seconds for other CPU load to settle",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling priority for the bench and all it starts (e.g. -5 on a shared box)",
    )
    p.add_argument(
        "--http-floor",
        action="store_true",
        help="also the floor as an HTTP/1.1 ext_authz (bench/floor_http.py)",
    )
    p.add_argument(
        "--paths",
        default="",
        help="measure only these rows, e.g. 'relay,relay[authz2]' (default all)",
    )
    p.add_argument("--py-spy", type=Path, help="also record authz under load to FILE(.txt)")
    p.add_argument("--py-spy-seconds", type=float, default=20.0)
    p.add_argument(
        "--py-spy-args",
        default="--nonblocking --rate 250",
        help="extra py-spy record flags (e.g. '--native --rate 20')",
    )
    p.add_argument(
        "--py-spy-target",
        default="relay",
        help="which row's ext_authz to profile (relay, floor, relay[...])",
    )
    p.add_argument(
        "--noise-retries",
        type=int,
        default=0,
        help="re-runs of a point spoilt by other load (default 0: the other column shows it)",
    )
    p.add_argument("--out", type=Path, help="write every figure as JSON here")
    p.add_argument("--work-dir", type=Path, help="logs and configs (default: a temp dir)")
    a = p.parse_args(argv)
    quick = a.quick
    conns = a.connections or ("1,64" if quick else "1,16,64")
    work = a.work_dir or Path(tempfile.mkdtemp(prefix="relay-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    return Options(
        duration_s=a.duration or (3.0 if quick else 10.0),
        connections=[int(c) for c in conns.split(",") if c.strip()],
        rounds=a.rounds or (1 if quick else 3),
        warmup_s=2.0 if quick else 3.0,
        users=a.users,
        tenants=a.tenants,
        cold_samples=5 if quick else 15,
        sse_streams=3 if quick else 10,
        upstream=a.upstream,
        fake_row=a.fake_row,
        paths=[x.strip() for x in a.paths.split(",") if x.strip()],
        variants=[Variant.parse(v) for v in a.variants.split(",") if v.strip()],
        out=a.out,
        work_dir=work,
        keep_work_dir=a.work_dir is not None,
        py_spy=a.py_spy,
        py_spy_s=a.py_spy_seconds,
        py_spy_args=a.py_spy_args,
        py_spy_target=a.py_spy_target,
        noise_retries=a.noise_retries,
        http_floor=a.http_floor,
        nice=a.nice,
        quiet_wait_s=a.quiet_wait,
        endpoint=a.endpoint,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.monotonic()
    # SIGTERM unwinds like Ctrl-C, so every child is stopped by PID on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if opts.nice:
        # Inherited by every process started from here on (all of them): on a shared
        # machine, other work then disturbs the figures less. Negative needs root.
        os.setpriority(os.PRIO_PROCESS, 0, opts.nice)
        log(f"running at nice {opts.nice} (with every child)")
    wrk = ensure_wrk()
    log(
        f"{os.cpu_count()} cores; wrk 1 thread keep-alive; {opts.rounds} round(s) x "
        f"{opts.connections} connections x {opts.duration_s:.0f}s; "
        f"{opts.users} users over {opts.tenants} tenants"
    )
    extra: dict[str, Any] = {}
    with ExitStack() as stack, fixture(opts, stack) as fx:
        direct = Target(
            "direct",
            int(fx.upstream_url.rsplit(":", 1)[1]),
            CHAT_PATH,
            {"upstream": [fx.upstream_role]},
        )
        targets = [direct]
        if opts.fake_row and opts.upstream != "fake":
            targets.append(
                Target(
                    "direct (h11 fake)", fx.fake.port, CHAT_PATH, {"upstream": [fx.fake.process]}
                )
            )
        builders: list[Callable[[], Target]] = [
            lambda: start_envoy_alone(fx, opts.work_dir),
            lambda: start_floor(fx, opts.work_dir),
            lambda: start_relay(fx, opts.work_dir, Variant()),
            lambda: start_fast_path(fx, opts.work_dir),
        ]
        if opts.http_floor:
            builders.append(lambda: start_http_floor(fx, opts.work_dir))
        for variant in opts.variants:
            builders.append(functools.partial(start_relay, fx, opts.work_dir, variant))
        targets += [build() for build in builders]
        relay = next(t for t in targets if t.name == "relay")
        relay_started = time.monotonic()
        sanity(fx, targets)
        all_targets = list(targets)
        if opts.paths:
            targets = [t for t in targets if t.name in opts.paths]
        log("Envoy alone was checked by `envoy --mode validate` and answers without a token")
        before = scrape(relay.metrics_urls[0])
        fast = next(t for t in all_targets if t.name == "fast path")
        assert fast.admin_port is not None
        fast_before = envoy_counters(fast.admin_port)
        medians = load_phase(opts, fx, targets, wrk)
        after = scrape(relay.metrics_urls[0])
        fast_after = envoy_counters(fast.admin_port)

        def fast_delta(name: str) -> int:
            key = f"http.relay.ext_authz.{name}"
            return fast_after.get(key, 0) - fast_before.get(key, 0)

        extra["fast_path"] = {
            "served_by_envoy": fast_delta("disabled"),
            "sent_to_ext_authz": fast_delta("ok") + fast_delta("denied") + fast_delta("error"),
        }
        extra["vault"] = {
            **after,
            "tenants": opts.tenants,
            "users": opts.users,
            "elapsed_s": time.monotonic() - relay_started,
            # Each TTL period (begun) allows one read per tenant: the first, then one
            # background refresh per period while the tenant stays busy.
            "reads_per_tenant_per_ttl": after.get("key_source_read", 0)
            / opts.tenants
            / (1 + int((time.monotonic() - relay_started) // KEY_TTL_S)),
            "reads_during_rounds": after.get("key_source_read", 0)
            - before.get("key_source_read", 0),
        }
        # SSE needs a streaming upstream: a relay Envoy to the fake, same authz process.
        ports = EnvoyPorts(free_port(), free_port())
        authz_addr = relay.roles["authz"][0].env["AUTHZ_GRPC_ADDR"]
        if authz_addr is None:
            raise RuntimeError("the relay's authz process has no AUTHZ_GRPC_ADDR")
        authz_port = int(authz_addr.rsplit(":", 1)[1])
        envoy_sse = start_envoy(
            opts.work_dir, "relay-sse", render_relay(ports, authz_port, fx.fake.url), ports
        )
        fx.processes.append(envoy_sse)
        relay_sse = Target(
            "relay→fake", ports.listen, RELAY_PREFIX + CHAT_PATH, {"envoy": [envoy_sse]}
        )
        check_key_injection(fx, relay_sse)
        extra["sse"] = sse_phase(opts, fx, relay_sse)
        extra["cold"] = cold_phase(opts, fx, relay)
        if opts.py_spy:
            profiled = next(t for t in all_targets if t.name == opts.py_spy_target)
            extra["py_spy"] = py_spy_phase(opts, fx, profiled, wrk)
        table = print_table(opts, targets, medians)
        summary = targets_summary(opts, medians, extra)

    conditions = (
        f"{os.cpu_count()} cores, wrk 1 thread keep-alive, POST {opts.endpoint} (small, "
        f"non-streaming), upstream {opts.upstream} on loopback, Envoy --concurrency 1 unless "
        f"named, {opts.users} users / {opts.tenants} tenants rotating per request, "
        f"medians of {opts.rounds} interleaved round(s) of {opts.duration_s:.0f}s; "
        "other = CPU used by processes outside the row, % of the 2 cores"
    )
    print()
    print(conditions)
    print(table)
    for line in summary:
        print("- " + line)
    print(f"(whole run {time.monotonic() - started:.0f}s; logs in {opts.work_dir})")
    if opts.out:
        opts.out.write_text(
            json.dumps(
                {
                    "conditions": conditions,
                    "table": [{"path": k[0], "connections": k[1], **v} for k, v in medians.items()],
                    **extra,
                    "variants": [asdict(v) for v in opts.variants],
                },
                indent=2,
                default=str,
            ),
            encoding="utf-8",
        )
        print(f"JSON written to {opts.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
