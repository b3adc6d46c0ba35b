"""`authz up` and `authz serve` as a newcomer and a busy host meet them: addresses chosen
and printed, addresses in use refused in one line, the run folder cleaned, the printed
commands runnable as pasted, Vault problems named before the banner, IPv6 loopback."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx2 as httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.processes import ManagedProcess, free_port, wait_for_http

pytestmark = pytest.mark.integration


@pytest.fixture
def up_env(pki, firebase, fake_openai) -> dict[str, str]:
    """The environment the start_up fixture gives `authz up`, for runs that must fail."""
    return {
        "AUTHZ_FIREBASE_PROJECT_ID": firebase.project_id,
        "AUTHZ_FIREBASE_CERTS_URL": firebase.server.url,
        "AUTHZ_UPSTREAM_URL": fake_openai.url,
        "AUTHZ_UPSTREAM_CA_FILE": str(pki.ca_file),
        **{k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ},
    }


def run_authz(args: list[str], env: dict[str, str], timeout: float = 60,
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authz", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port some other program is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def _stop_with_ctrl_c(process: ManagedProcess) -> None:
    process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 30
    while process.alive() and time.monotonic() < deadline:
        time.sleep(0.1)  # poll for exit
    assert not process.alive()


def _banner_value(text: str, label: str) -> str:
    match = re.search(rf"^  {label} +(\S+)", text, re.MULTILINE)
    assert match, text
    return match.group(1)


def test_two_stacks_on_one_host_pick_their_own_ports(start_up):
    # No AUTHZ_METRICS_ADDR: each stack picks a free metrics port and prints it.
    first = start_up({"AUTHZ_METRICS_ADDR": ""})
    second = start_up({"AUTHZ_METRICS_ADDR": ""})
    seen = []
    for running in (first, second):
        metrics = _banner_value(running.process.log_text(), "metrics")
        assert metrics.startswith("http://127.0.0.1:")
        assert metrics.endswith("/metrics")
        assert httpx.get(metrics, timeout=5).status_code == 200
        seen.append(metrics)
    assert seen[0] != seen[1]
    assert "Traceback" not in first.process.log_text() + second.process.log_text()


def test_a_listen_port_another_stack_holds_is_refused_in_one_line(start_up, up_env):
    first = start_up()
    taken = f"127.0.0.1:{first.listen_port}"
    second = run_authz(["up", "--listen", taken], up_env)
    assert second.returncode == 2, second.stdout + second.stderr
    assert second.stderr.strip() == (f"authz up: --listen: {taken} is already in use; stop "
                                     "what listens there or choose another address")
    assert "is up" not in second.stdout
    assert first.process.alive()


@pytest.mark.parametrize("setting", ["AUTHZ_GRPC_ADDR", "AUTHZ_METRICS_ADDR"])
def test_up_names_a_given_address_in_use(up_env, held_port, setting):
    result = run_authz(["up", "--listen", f"127.0.0.1:{free_port()}"],
                       {**up_env, setting: f"127.0.0.1:{held_port}"})
    assert result.returncode == 2
    assert f"{setting}: 127.0.0.1:{held_port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("setting", ["AUTHZ_GRPC_ADDR", "AUTHZ_METRICS_ADDR"])
def test_serve_names_the_address_in_use(held_port, setting):
    env = {"AUTHZ_CLIENT_KEYS": "on", "VAULT_ADDR": f"http://127.0.0.1:{free_port()}",
           "VAULT_TOKEN": "unused", "AUTHZ_GRPC_ADDR": f"127.0.0.1:{free_port()}",
           "AUTHZ_METRICS_ADDR": f"127.0.0.1:{free_port()}",
           setting: f"127.0.0.1:{held_port}", "PATH": os.environ.get("PATH", "")}
    result = run_authz(["serve"], env)
    assert result.returncode == 2, result.stderr
    assert f"{setting}: 127.0.0.1:{held_port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Event loop is closed" not in result.stderr


def test_up_removes_its_run_folder_and_keeps_logs_only_when_asked(start_up, tmp_path):
    running = start_up()
    run_dir = Path(_banner_value(running.process.log_text(), "logs"))
    assert (run_dir / "authz.log").is_file()
    _stop_with_ctrl_c(running.process)
    assert not run_dir.exists(), "the dev server's root token and logs stayed behind"

    kept = tmp_path / "kept-logs"
    running = start_up({}, "--logs", str(kept))
    assert _banner_value(running.process.log_text(), "logs") == str(kept)
    _stop_with_ctrl_c(running.process)
    assert (kept / "authz.log").is_file()
    assert (kept / "envoy.log").is_file()


def test_the_printed_commands_work_as_pasted(start_up, upstream, tmp_path):
    # A new user's shell: the venv's bin directory is not on PATH.
    shell_path = "/usr/bin:/bin"
    running = start_up({"PATH": shell_path})
    text = running.process.log_text()
    block = text.split("Add a tenant (in another shell):\n", 1)[1].split("Ctrl-C", 1)[0]
    script = "set -e\n" + "\n".join(line.strip() for line in block.splitlines() if line.strip())
    pasted = subprocess.run(["bash", "-c", script], env={"PATH": shell_path},
                            capture_output=True, text=True, timeout=60, check=False)
    assert pasted.returncode == 0, script + "\n" + pasted.stderr
    assert "command not found" not in pasted.stderr
    assert '"object"' in pasted.stdout  # the models list, through the relay
    assert upstream.requests[-1].header("authorization") == "Bearer sk-..."
    # The Admin API's command as printed: it sees the next request metered.
    watch = re.search(r"Admin API: (.+ usage watch --grpc \S+)\)$", text, re.MULTILINE)
    assert watch, text
    (curl,) = [line.strip() for line in block.splitlines() if line.strip().startswith("curl")]
    out, err = tmp_path / "watch.out", tmp_path / "watch.err"
    script += (f"\n{watch.group(1)} --count 1 --json > {out} 2> {err} &"
               f"\nuntil grep -q watching {err}; do sleep 0.05; done"  # the watch is in place
               f"\n{curl} > /dev/null\nwait $!")
    watched = subprocess.run(["bash", "-c", script], env={"PATH": shell_path},
                             capture_output=True, text=True, timeout=60, check=False)
    assert watched.returncode == 0, script + "\n" + watched.stderr
    (line,) = out.read_text().splitlines()
    event = json.loads(line)
    assert event["client_id"] == "my-tenant"
    assert event["user"].startswith("ck_")
    assert event["status"] == 200


def test_up_fails_before_the_banner_when_vault_is_unreachable(up_env):
    vault = f"http://127.0.0.1:{free_port()}"
    result = run_authz(["up", "--demo", "--listen", f"127.0.0.1:{free_port()}"], {
        **up_env, "OPENAI_API_KEY": "sk-demo-0123456789", "VAULT_ADDR": vault,
        "VAULT_TOKEN": "dev-token"})
    assert result.returncode == 1
    assert f"Vault at {vault} is unreachable" in result.stderr
    assert "is up" not in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_up_says_vault_addr_needs_vault_token(up_env):
    result = run_authz(["up", "--listen", f"127.0.0.1:{free_port()}"], {
        **up_env, "VAULT_ADDR": "http://127.0.0.1:8200"})
    assert result.returncode != 0
    assert "VAULT_TOKEN is not" in result.stderr
    assert "is up" not in result.stdout


def _free_v6_port() -> int:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        return int(sock.getsockname()[1])


def test_serve_listens_on_ipv6_loopback(tmp_path):
    grpc_port, metrics_port = _free_v6_port(), _free_v6_port()
    vault = f"http://[::1]:{_free_v6_port()}"
    serve = ManagedProcess(
        [sys.executable, "-m", "authz", "serve"],
        {"AUTHZ_CLIENT_KEYS": "on", "VAULT_ADDR": vault,
         "VAULT_TOKEN": "unused",
         "AUTHZ_GRPC_ADDR": f"[::1]:{grpc_port}", "AUTHZ_METRICS_ADDR": f"[::1]:{metrics_port}",
         "PATH": os.environ.get("PATH", "")},
        tmp_path / "serve.log", inherit_env=False, name="authz-serve-v6")
    with serve:  # starts it, stops it by PID
        wait_for_http(f"http://[::1]:{metrics_port}/metrics", timeout=30, process=serve)
        with grpc.insecure_channel(f"[::1]:{grpc_port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5)
        # Vault is not there, so not SERVING; what matters is that it answered on ::1.
        assert reply.status in (health_pb2.HealthCheckResponse.SERVING,
                                health_pb2.HealthCheckResponse.NOT_SERVING)
        # No Vault there: said once, with its address.
        serve.wait_for_log(r"vault not reachable yet", timeout=10)
        assert vault in serve.log_text()
    assert "Traceback" not in serve.log_text()


def test_up_runs_on_ipv6_loopback(up_env, tmp_path):
    listen, grpc_port, metrics_port = _free_v6_port(), _free_v6_port(), _free_v6_port()
    up = ManagedProcess(
        [sys.executable, "-m", "authz", "up", "--listen", f"[::1]:{listen}"],
        {**up_env, "AUTHZ_GRPC_ADDR": f"[::1]:{grpc_port}",
         "AUTHZ_METRICS_ADDR": f"[::1]:{metrics_port}"},
        tmp_path / "up-v6.log", inherit_env=False, name="authz-up-v6")
    with up:  # starts it, stops it by PID
        up.wait_for_log(r"Ctrl-C stops everything", timeout=60)
        text = up.log_text()
        assert f"relay      http://[::1]:{listen}/api/openai/" in text
        assert f"grpc [::1]:{grpc_port}" in text
        response = httpx.get(f"http://[::1]:{listen}/api/openai/v1/models",
                             headers={"authorization": "Bearer garbage"}, timeout=10)
        assert response.status_code == 401
        assert response.json() == {"error": "Authentication failed"}
    assert "Traceback" not in up.log_text()
