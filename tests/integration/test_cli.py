"""The operator commands against a real OpenBao, and `authz up` end to end."""

import os
import re
import signal
import subprocess
import sys
import time

import httpx2 as httpx
import openai
import pytest

from tests.support.processes import free_port

pytestmark = pytest.mark.integration


def authz(*args, env=None, stdin=None):
    return subprocess.run([sys.executable, "-m", "authz", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, input=stdin,
                          timeout=60, check=False)


def test_tenant_put_show_delete(vault):
    env = vault.env
    key = "sk-cli-test-0123456789abcdefghijkl"
    put = authz("tenant", "put", "cli-tenant", "--organization", "org-cli", env={
        **env, "OPENAI_API_KEY": key})
    assert put.returncode == 0, put.stderr
    assert key not in put.stdout + put.stderr
    assert vault.read_tenant("cli-tenant")["api_key"] == key

    shown = authz("tenant", "show", "cli-tenant", "--json", env=env)
    assert shown.returncode == 0
    assert key not in shown.stdout
    assert '"organization": "org-cli"' in shown.stdout
    assert "ijkl" in shown.stdout  # the last four characters identify it

    piped = authz("tenant", "put", "cli-tenant", "--stdin", env=env, stdin="sk-rotated-key-xyz\n")
    assert piped.returncode == 0
    assert vault.read_tenant("cli-tenant")["api_key"] == "sk-rotated-key-xyz"

    assert authz("tenant", "delete", "cli-tenant", env=env).returncode == 0
    missing = authz("tenant", "show", "cli-tenant", env=env)
    assert missing.returncode == 1
    assert "no tenant" in missing.stderr


@pytest.mark.parametrize("client_id", ["../other", "a/b", "..", "x%2Fy"])
def test_tenant_refuses_unsafe_ids(vault, client_id):
    result = authz("tenant", "put", client_id, env={**vault.env, "OPENAI_API_KEY": "sk-x"})
    assert result.returncode == 2
    assert "not a valid client id" in result.stderr


def test_tenant_reports_vault_unreachable(vault):
    result = authz("tenant", "show", "acme", env={
        "VAULT_ADDR": f"http://127.0.0.1:{free_port()}", "VAULT_TOKEN": vault.token})
    assert result.returncode == 3
    assert vault.token not in result.stderr


def test_serve_refuses_to_start_on_bad_settings():
    result = authz("serve", env={"AUTHZ_FIREBASE_PROJECT_ID": "", "VAULT_ADDR": ""})
    assert result.returncode == 2
    assert "AUTHZ_FIREBASE_PROJECT_ID" in result.stderr
    emulator = authz("serve", env={"AUTHZ_FIREBASE_PROJECT_ID": "demo-relay",
                                   "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"})
    assert emulator.returncode == 2
    assert "unsigned" in emulator.stderr


def test_authz_up_runs_the_whole_stack_and_ctrl_c_stops_it(start_up, firebase, upstream):
    running = start_up()
    up = running.process
    try:
        text = up.log_text()
        exports = re.search(r"export VAULT_ADDR=(\S+) VAULT_TOKEN=(\S+)", text)
        assert exports, text
        vault_env = {"VAULT_ADDR": exports.group(1), "VAULT_TOKEN": exports.group(2)}
        put = authz("tenant", "put", "up-tenant",
                    env={**vault_env, "OPENAI_API_KEY": "sk-up-tenant-key-0123456789"})
        assert put.returncode == 0, put.stderr

        token = firebase.mint(None, "up-user", "up-tenant")
        client = openai.OpenAI(base_url=running.api_base, api_key=token, max_retries=0)
        completion = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert completion.choices[0].message.content
        [received] = upstream.requests
        assert received.header("authorization") == "Bearer sk-up-tenant-key-0123456789"

        child_pids = _children(up.pid)
        assert len(child_pids) == 3  # openbao, authz, envoy
        up.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while up.alive() and time.monotonic() < deadline:
            time.sleep(0.1)  # poll for exit
        assert not up.alive()
        for pid in child_pids:
            assert not _running(pid), f"child {pid} outlived authz up"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{running.listen_port}/", timeout=2)
    finally:
        up.stop()


def test_authz_up_stops_and_says_which_child_died(start_up):
    up = start_up().process
    try:
        [envoy_pid] = _children(up.pid, "envoy")
        os.kill(envoy_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while up.alive() and time.monotonic() < deadline:
            time.sleep(0.1)  # poll for exit
        assert not up.alive()
        assert up.returncode == 1
        assert re.search(r"envoy exited with status -9", up.log_text())
    finally:
        up.stop()


def _children(pid, name=None):
    argv = ["pgrep", "-P", str(pid)] + (["-x", name] if name else [])
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"
