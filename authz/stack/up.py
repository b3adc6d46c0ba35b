"""`authz up`: Envoy, the authz service and (when VAULT_ADDR is unset) an OpenBao dev
server, all on loopback, in the foreground.

Each child is started, then waited on until it is ready (never a fixed sleep). Ctrl-C or
SIGTERM stops every child, by PID. If a child dies, the stack stops and says which
child, its exit status and the end of its log.

Addresses: the relay listens on --listen (127.0.0.1:8080 unless told); every other address
(authz gRPC, authz metrics/admin, Envoy admin, readiness) is a free port unless its
setting is given, and the banner prints each one. Any address already taken stops `up`
before anything starts, with one line naming the setting. The run folder (Envoy config,
logs, the dev server's files) is temporary and removed on exit unless --logs names one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from authz.errors import AddressInUse, ConfigError, VaultUnavailable
from authz.settings import Settings, format_addr, parse_addr, process_environment
from authz.stack.binaries import bao_binary, envoy_binary
from authz.stack.envoy_config import EnvoyParams, render


class StackError(Exception):
    pass


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_bindable(setting: str, addr: tuple[str, int]) -> None:
    """AddressInUse naming `setting` if nothing new could listen on addr.

    Without SO_REUSEPORT on purpose: a port held by an Envoy (whose listeners would
    otherwise share it, splitting connections between two stacks) is refused too.
    """
    with socket.socket(_family(addr[0]), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
            sock.listen(1)
        except OSError as exc:
            cause = ("already in use" if exc.errno == errno.EADDRINUSE
                     else f"not bindable ({exc.strerror})")
            raise AddressInUse(setting, format_addr(addr), cause) from None


def vault_problem(settings: Settings) -> str | None:
    """Why the configured Vault cannot serve this stack (address and cause), or None."""
    import requests

    addr = settings.vault_addr.rstrip("/")
    try:
        requests.get(f"{addr}/v1/sys/health?standbyok=true&perfstandbyok=true", timeout=3)
        if settings.vault_auth != "token":
            return None  # the service logs in itself; its log says how that went
        if not settings.vault_token:
            return (f"VAULT_ADDR is set ({addr}) but VAULT_TOKEN is not: set both, or unset "
                    "VAULT_ADDR for an in-memory dev server")
        reply = requests.get(f"{addr}/v1/auth/token/lookup-self",
                             headers={"X-Vault-Token": settings.vault_token}, timeout=3)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        if isinstance(exc, requests.ConnectionError):
            reason = "connection refused or no route"
        return f"Vault at {addr} is unreachable: {reason}"
    if reply.status_code != 200:
        return f"Vault at {addr} refused VAULT_TOKEN (HTTP {reply.status_code})"
    return None


def authz_command() -> str:
    """How to run `authz` from the user's shell, as pasted: `authz` when the PATH finds this
    very installation, else the path of the script beside this interpreter."""
    script = Path(sys.executable).parent / "authz"
    if not script.exists():
        return f"{shlex.quote(sys.executable)} -m authz"
    found = shutil.which("authz")
    if found and Path(found).resolve() == script.resolve():
        return "authz"
    relative = os.path.relpath(script)
    shown = relative if not relative.startswith("..") else str(script)
    return shlex.quote(shown if "/" in shown else "./" + shown)


def wait_until(what: str, ready: Callable[[], bool], child: Child, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while time.monotonic() < deadline:
        if child.process is not None and child.process.poll() is not None:
            raise StackError(f"{child.name} exited with status {child.process.returncode} "
                             f"while starting\n{child.log_tail()}")
        if ready():
            return
        time.sleep(delay)  # polling interval while waiting for readiness, not a fixed wait
        delay = min(delay * 1.5, 0.25)
    raise StackError(f"{what} not ready after {timeout_s:.0f}s\n{child.log_tail()}")


def http_ok(url: str) -> bool:
    try:
        return 200 <= http_call(url)[0] < 300
    except (urllib.error.URLError, OSError):
        return False


def grpc_answers(addr: str) -> bool:
    """authz answers gRPC health checks (whatever it says: readiness is shown, not awaited)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(addr) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return False
        return True


def http_call(url: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)  # noqa: S310 (our own http URLs)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_json(url: str) -> tuple[int, dict[str, Any]]:
    status, body = http_call(url)
    return status, json.loads(body or b"{}")


def envoy_active_requests(admin: str) -> int:
    """Requests Envoy's public listener still has open (streams included)."""
    url = f"http://{admin}/stats?filter=^http\\.relay\\.downstream_rq_active$&format=json"
    _status, stats = http_json(url)
    return int(sum(int(s.get("value", 0)) for s in stats.get("stats", [])))


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.argv, env=self.env or None, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            log.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(f"  {self.name}| {line}" for line in text)


@dataclass
class Stack:
    settings: Settings
    listen: tuple[str, int]
    run_dir: Path
    children: list[Child] = field(default_factory=list)
    vault_addr: str = ""
    vault_token: str = field(default="", repr=False)
    dev_vault: bool = False
    admin: tuple[str, int] = ("127.0.0.1", 0)
    health_port: int = 0
    env: dict[str, str] = field(default_factory=dict, repr=False)

    def start(self) -> None:
        env = dict(self.env)
        if not self.settings.vault_addr_given:
            self._start_bao()
            env.update(VAULT_ADDR=self.vault_addr, VAULT_TOKEN=self.vault_token)
        else:
            self.vault_addr = self.settings.vault_addr
        grpc_host, grpc_port = self.settings.grpc_addr
        grpc_addr = format_addr(self.settings.grpc_addr)
        env["AUTHZ_GRPC_ADDR"] = grpc_addr
        env["AUTHZ_METRICS_ADDR"] = (format_addr(self.settings.metrics_addr)
                                     if self.settings.metrics_addr else "off")
        authz = Child("authz", [sys.executable, "-m", "authz", "serve"],
                      self.run_dir / "authz.log", env)
        self._launch(authz)
        wait_until("authz gRPC health", lambda: grpc_answers(grpc_addr), authz, 30)

        self.admin = ("127.0.0.1", free_port())
        self.health_port = free_port(self.listen[0])
        config_path = self.run_dir / "envoy.yaml"
        config_path.write_text(render(EnvoyParams(
            listen_host=self.listen[0], listen_port=self.listen[1],
            admin_host=self.admin[0], admin_port=self.admin[1],
            health_port=self.health_port,
            authz_host=grpc_host, authz_port=grpc_port,
            upstream_url=self.settings.upstream_url,
            upstream_ca_file=self.settings.upstream_ca_file,
            check_timeout_s=self.settings.check_timeout_s,
            stream_idle_timeout_s=self.settings.stream_idle_timeout_s,
            cors_origins=self.settings.cors_origins,
            fast_path=self.settings.fast_path,
        )))
        envoy = Child("envoy", [envoy_binary(), "-c", str(config_path), "--disable-hot-restart",
                                "--log-level", "warn"], self.run_dir / "envoy.log")
        self._launch(envoy)
        ready_url = f"http://{self.admin[0]}:{self.admin[1]}/ready"
        wait_until("envoy", lambda: http_ok(ready_url), envoy, 30)
        # Give Envoy's first health checks of authz a moment, so the banner shows the
        # settled state; not being ready yet is shown, not fatal.
        health_url = f"http://{self.listen[0]}:{self.health_port}/ready"
        with contextlib.suppress(StackError):
            wait_until("envoy readiness", lambda: http_ok(health_url), envoy, 6)

    def _start_bao(self) -> None:
        port = free_port()
        self.vault_addr = f"http://127.0.0.1:{port}"
        self.vault_token = "dev-" + secrets.token_urlsafe(18)
        self.dev_vault = True
        bao = Child("openbao", [
            bao_binary(), "server", "-dev", f"-dev-root-token-id={self.vault_token}",
            f"-dev-listen-address=127.0.0.1:{port}",
        ], self.run_dir / "openbao.log", {**self.env, "HOME": str(self.run_dir)})
        self._launch(bao)
        wait_until("openbao", lambda: http_ok(f"{self.vault_addr}/v1/sys/health"), bao, 30)

    def _launch(self, child: Child) -> None:
        self.children.append(child)
        child.start()

    def drain(self) -> None:
        """Stop taking new connections, and let open requests and streams finish, up to
        the drain timeout; only then are the children stopped."""
        envoy = next((c for c in self.children if c.name == "envoy"), None)
        if envoy is None or envoy.process is None or envoy.process.poll() is not None:
            return
        admin = format_addr(self.admin)
        try:
            http_call(f"http://{admin}/drain_listeners?graceful&inboundonly", "POST")
            deadline = time.monotonic() + self.settings.drain_timeout_s
            while envoy_active_requests(admin) > 0 and time.monotonic() < deadline:
                time.sleep(0.1)  # poll the active-request gauge while streams finish
        except (OSError, ValueError):
            pass  # Envoy is going anyway: stop() follows

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()

    def status(self) -> list[str]:
        """One line per part: where it listens and whether it is ready."""
        lines = []
        if self.settings.metrics_addr is not None:
            metrics = format_addr(self.settings.metrics_addr)
            try:
                _code, report = http_json(f"http://{metrics}/readyz")
                state = "ready" if report.get("ready") else "NOT READY " + json.dumps(report)
            except (OSError, ValueError):
                state = "state unknown"
            lines.append(f"  authz      {state}")
        try:
            code, _ = http_json(f"http://{format_addr((self.listen[0], self.health_port))}/ready")
        except (OSError, ValueError):
            code = 0
        lines.append("  envoy      " + ("ready" if code == 200 else f"NOT READY (/ready {code})"))
        return lines

    def first_dead(self) -> Child | None:
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                return child
        return None

    def banner(self, *, logs_kept: bool = False) -> str:
        base = f"http://{format_addr(self.listen)}"
        metrics = self.settings.metrics_addr
        authz = authz_command()
        lines = [
            "openai-relay is up:",
            f"  relay      {base}/api/openai/  ->  {self.settings.upstream_url}",
            f"  authz      grpc {format_addr(self.settings.grpc_addr)}  (ext_authz, and the "
            f"Admin API: {authz} usage watch --grpc {format_addr(self.settings.grpc_addr)})",
            *([f"  metrics    http://{format_addr(metrics)}/metrics  (and /readyz, /admin/*)"]
              if metrics else []),
            f"  envoy      admin http://{format_addr(self.admin)}",
            f"  vault      {self.vault_addr}" + ("  (OpenBao dev server, in memory)"
                                                 if self.dev_vault else ""),
            f"  readiness  http://{format_addr((self.listen[0], self.health_port))}/ready",
            f"  logs       {self.run_dir}" + ("" if logs_kept else
                                              "  (removed on exit; keep them: --logs DIR)"),
            "",
            "State:",
            *self.status(),
            "",
            "Add a tenant (in another shell):",
        ]
        if self.dev_vault:
            lines.append(f"  export VAULT_ADDR={self.vault_addr} VAULT_TOKEN={self.vault_token}")
        lines += [
            f"  OPENAI_API_KEY=sk-... {authz} tenant put my-tenant",
            f"  TOKEN=$({authz} keys issue my-tenant)   # a client key; or a Firebase ID token "
            "whose clientId claim is my-tenant",
            f"  curl {base}/api/openai/v1/models -H \"Authorization: Bearer $TOKEN\"",
            "Ctrl-C stops everything.",
        ]
        return "\n".join(lines)


def run_up(listen: str, settings_overrides: dict[str, object], *, demo: bool = False,
           logs_dir: str | None = None) -> int:
    env = process_environment()  # what the children inherit (and --demo adjusts)
    if demo:
        from authz.stack import demo as demo_setup

        problem = demo_setup.prepare(env)
        if problem:
            print(f"authz up: {problem}", file=sys.stderr)
            return 2
    try:
        listen_addr = parse_addr("--listen", listen)
        # Free-picked unless the user set them: two stacks on one host must not clash.
        chosen: dict[str, object] = {}
        if not env.get("AUTHZ_GRPC_ADDR", "").strip():
            chosen["grpc_addr"] = ("127.0.0.1", free_port())
        if not env.get("AUTHZ_METRICS_ADDR", "").strip():
            chosen["metrics_addr"] = ("127.0.0.1", free_port())
        settings = Settings.from_env(env, overrides={**chosen, **settings_overrides})
        check_bindable("--listen", listen_addr)
        check_bindable("AUTHZ_GRPC_ADDR", settings.grpc_addr)
        if settings.metrics_addr is not None:
            check_bindable("AUTHZ_METRICS_ADDR", settings.metrics_addr)
    except ConfigError as exc:
        print(f"authz up: {exc}", file=sys.stderr)
        return 2
    for warning in settings.warnings():
        print(f"authz up: warning: {warning}", file=sys.stderr)
    if settings.vault_addr_given:
        problem = vault_problem(settings)
        if problem:
            print(f"authz up: {problem}", file=sys.stderr)
            return 1
    if logs_dir:
        run_dir = Path(logs_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="openai-relay-"))
    stack = Stack(settings, listen_addr, run_dir, env=env)

    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stack.start()
        demo_lines = ""
        if demo:
            # Before the banner: a stack that cannot store the demo tenant is not "up".
            try:
                demo_lines = demo_setup.create(
                    settings, stack.vault_addr, stack.vault_token or settings.vault_token,
                    f"http://{format_addr(listen_addr)}", settings.openai_api_key,
                    authz=authz_command())
            except VaultUnavailable as exc:
                raise StackError(f"--demo: Vault at {stack.vault_addr} failed: "
                                 f"{exc.log_detail}") from None
        print(stack.banner(logs_kept=bool(logs_dir)), flush=True)
        if demo_lines:
            print(demo_lines, flush=True)
        while not stopping:
            dead = stack.first_dead()
            if dead is not None and dead.process is not None:
                print(f"authz up: {dead.name} exited with status {dead.process.returncode}; "
                      f"stopping the stack\n{dead.log_tail()}", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.2)  # supervision poll interval
        print("authz up: draining open requests, then stopping", file=sys.stderr, flush=True)
        stack.drain()
        return 0
    except (StackError, FileNotFoundError, OSError, VaultUnavailable) as exc:
        print(f"authz up: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not logs_dir:
            # It holds the dev server's root token and the logs: nothing stays behind.
            shutil.rmtree(run_dir, ignore_errors=True)
