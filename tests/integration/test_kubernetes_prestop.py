"""The Kubernetes preStop hook (deploy/kubernetes/base/deployment.yaml), run as the kubelet
runs it, against a real Envoy rendered from the one template (`authz up`'s): it returns
once Envoy's own count of open requests is 0, so a rollout does not cut a long stream,
and does not linger when nothing is open."""

import re
import subprocess
import threading
import time
from pathlib import Path

import httpx2 as httpx
import pytest
import yaml

pytestmark = pytest.mark.integration

DEPLOYMENT = Path(__file__).resolve().parents[2] / "deploy/kubernetes/base/deployment.yaml"


def prestop_command() -> list[str]:
    deployment = yaml.safe_load(DEPLOYMENT.read_text())
    [envoy] = [c for c in deployment["spec"]["template"]["spec"]["containers"]
               if c["name"] == "envoy"]
    command: list[str] = envoy["lifecycle"]["preStop"]["exec"]["command"]
    return command


def run_hook(admin_port: str, max_wait_s: int) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    result = subprocess.run(
        prestop_command(), capture_output=True, text=True, timeout=max_wait_s + 30,
        check=False, env={"PATH": "/usr/bin:/bin", "ENVOY_ADMIN_PORT": admin_port,
                          "PRESTOP_MIN_WAIT_S": "0", "PRESTOP_MAX_WAIT_S": str(max_wait_s)})
    return time.monotonic() - started, result


def test_prestop_waits_for_an_open_stream_then_returns(start_up, firebase, vault):
    vault.put_tenant("prestop-tenant", "sk-prestop-tenant-000000000")
    running = start_up({"VAULT_ADDR": vault.addr, "VAULT_TOKEN": vault.token})
    admin = re.search(r"envoy +admin http://127\.0\.0\.1:(\d+)", running.process.log_text())
    assert admin, running.process.log_text()
    token = firebase.mint(None, "prestop-user", "prestop-tenant")
    events: list[str] = []
    stream_ended: list[float] = []
    first_event = threading.Event()

    def stream() -> None:
        with httpx.Client(timeout=60) as client, client.stream(
            "GET", running.api_base + "/test/stream?chunks=6&interval_ms=1000",
            headers={"authorization": f"Bearer {token}"},
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events.append(line)
                    first_event.set()
        stream_ended.append(time.monotonic())

    reader = threading.Thread(target=stream)
    reader.start()
    assert first_event.wait(30)
    took, hook = run_hook(admin.group(1), max_wait_s=60)
    hook_ended = time.monotonic()
    reader.join(30)
    assert hook.returncode == 0, hook.stderr
    assert len(events) == 6  # the stream ran to its end while the hook waited
    assert stream_ended
    assert hook_ended >= stream_ended[0] - 0.5, "the hook returned while the stream was open"
    assert hook_ended - stream_ended[0] < 5, "the hook waited long past the stream's end"
    assert took < 30

    # Nothing open now: the hook returns at once rather than sleeping a fixed time.
    took, hook = run_hook(admin.group(1), max_wait_s=60)
    assert hook.returncode == 0
    assert took < 5
