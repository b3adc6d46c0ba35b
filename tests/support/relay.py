"""The relay under test: the real `authz serve` process and the real Envoy binary,
configured from the one template in envoy/, on free loopback ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz.stack.binaries import envoy_binary
from authz.stack.cors import parse_origins
from authz.stack.envoy_config import EnvoyParams, render
from tests.support.processes import ManagedProcess, free_port, wait_for_http

READY_TIMEOUT_S = 30.0


def grpc_health(addr: str) -> int | None:
    """The service's overall gRPC health status, or None when it does not answer."""
    with grpc.insecure_channel(addr) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return None
        return int(reply.status)


def wait_for_grpc(addr: str, process: ManagedProcess, *, ready: bool = True,
                  timeout: float = READY_TIMEOUT_S) -> None:
    """Until authz answers health checks (and, with ready, reports SERVING)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"authz exited while starting:\n{process.log_tail()}")
        status = grpc_health(addr)
        if status is not None and (
            not ready or status == health_pb2.HealthCheckResponse.SERVING
        ):
            return
        time.sleep(0.05)  # readiness poll interval
    raise TimeoutError(f"authz not serving on {addr}:\n{process.log_tail()}")


@dataclass
class RelayStack:
    """authz + Envoy. `env` holds the AUTHZ_* / VAULT_* settings for the authz service."""

    env: dict[str, str]
    work_dir: Path
    check_timeout_s: float = 2.0
    stream_idle_timeout_s: float = 300.0
    #: Wait for authz to report SERVING (ready), not just to answer health checks.
    wait_ready: bool = True
    #: Applied to the rendered Envoy config before Envoy starts (test-only additions,
    #: e.g. a filter standing in for metadata another part of the relay sets).
    envoy_config_transform: Callable[[str], str] | None = None
    authz_port: int = field(default_factory=free_port)
    envoy_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    authz: ManagedProcess | None = None
    envoy: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.envoy_port}"

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/openai/v1"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/ready"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def authz_env(self) -> dict[str, str]:
        return {
            **self.env,
            "AUTHZ_GRPC_ADDR": f"127.0.0.1:{self.authz_port}",
            "AUTHZ_METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
        }

    def start_authz(self) -> None:
        self.authz = ManagedProcess(
            [sys.executable, "-m", "authz", "serve"],
            self.authz_env(),
            self.work_dir / "authz.log",
            name="authz",
            # The service sees only what a deployment would give it.
            inherit_env=False,
        )
        self.authz.env.update({k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ})
        self.authz.start()
        wait_for_grpc(f"127.0.0.1:{self.authz_port}", self.authz, ready=self.wait_ready)

    def start_envoy(self) -> None:
        config = self.work_dir / "envoy.yaml"
        text = (
            render(
                EnvoyParams(
                    listen_host="127.0.0.1",
                    listen_port=self.envoy_port,
                    admin_host="127.0.0.1",
                    admin_port=self.admin_port,
                    health_port=self.health_port,
                    authz_host="127.0.0.1",
                    authz_port=self.authz_port,
                    upstream_url=self.env["AUTHZ_UPSTREAM_URL"],
                    upstream_ca_file=self.env.get("AUTHZ_UPSTREAM_CA_FILE"),
                    check_timeout_s=self.check_timeout_s,
                    stream_idle_timeout_s=self.stream_idle_timeout_s,
                    cors_origins=parse_origins(self.env.get("AUTHZ_CORS_ORIGINS", "")),
                    fast_path=self.env.get("AUTHZ_FAST_PATH", "off") == "on",
                )
            )
        )
        if self.envoy_config_transform is not None:
            text = self.envoy_config_transform(text)
        config.write_text(text)
        self.envoy = ManagedProcess(
            [
                envoy_binary(),
                "-c",
                str(config),
                "--disable-hot-restart",
                "--concurrency",
                "2",
                "--log-level",
                "warn",
            ],
            {},
            self.work_dir / "envoy.log",
            name="envoy",
        )
        self.envoy.start()
        wait_for_http(f"{self.admin_url}/ready", timeout=READY_TIMEOUT_S, process=self.envoy)
        if self.env.get("AUTHZ_FAST_PATH", "off") == "on":
            self.wait_for_fast_path()

    def wait_for_fast_path(self) -> None:
        """Until Envoy has accepted the authz service's first tenant table (xDS)."""
        import time

        import httpx2 as httpx

        name = "extension_config_discovery.http_filter.relay.fast_path.lua.update_success"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            stats = httpx.get(f"{self.admin_url}/stats?format=json&filter=fast_path",
                              timeout=5).json()["stats"]
            if any(s.get("name") == name and s.get("value", 0) >= 1 for s in stats):
                return
            time.sleep(0.05)  # readiness poll interval
        raise TimeoutError(f"Envoy never accepted the fast path config:\n{self.logs()}")

    def fast_path_used_up(self, client_id: str) -> str:
        """The fast path's budget entry for a tenant in the config Envoy runs now
        (config_dump: the Lua's EXHAUSTED table): "" when it has none."""
        import re

        import httpx2 as httpx

        dump = httpx.get(f"{self.admin_url}/config_dump?resource=ecds_filters",
                         timeout=5).json()
        for config in dump.get("configs", []):
            source = (config.get("ecds_filter", {}).get("typed_config", {})
                      .get("default_source_code", {}).get("inline_string", ""))
            if "local EXHAUSTED = {" in source:
                table = source.split("local EXHAUSTED = {", 1)[1].split("\n}", 1)[0]
                found = re.search(r'^  \["' + re.escape(client_id) + r'"\] = (.*),$',
                                  table, re.MULTILINE)
                return found.group(1) if found else ""
        return ""

    def start(self) -> RelayStack:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.start_authz()
        self.start_envoy()
        return self

    def stop(self) -> None:
        for process in (self.envoy, self.authz):
            if process is not None:
                process.stop()

    def access_log(self) -> list[dict[str, object]]:
        """Envoy's JSON access log lines so far (its stdout shares envoy.log)."""
        if self.envoy is None:
            return []
        lines = []
        for line in self.envoy.log_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(line))
        return lines

    def access_log_entry(self, openai_request_id: str,
                         timeout: float = 10.0) -> dict[str, object]:
        """The access log line of the response with this x-request-id; waits for Envoy
        to write it (at stream end, flushed about once a second)."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.access_log():
                if entry.get("openai_request_id") == openai_request_id:
                    return entry
            if time.monotonic() > deadline:
                raise TimeoutError(f"no access log line for {openai_request_id}")
            time.sleep(0.05)  # log poll interval

    def logs(self) -> Mapping[str, str]:
        return {
            name: process.log_text()
            for name, process in (("authz", self.authz), ("envoy", self.envoy))
            if process is not None
        }
