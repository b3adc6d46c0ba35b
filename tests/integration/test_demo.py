"""The newcomer's path: no Firebase project, no Vault, an OpenAI key. `authz up --demo`
starts everything, and the curl line and SDK snippet it prints work as pasted."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from tests.support.authz_cli import authz
from tests.support.processes import ManagedProcess, free_port

pytestmark = pytest.mark.integration

DEMO_KEY = "sk-demo-newcomer-0123456789abcdef"


def newcomer_env(pki, fake_openai) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    env.update({
        "OPENAI_API_KEY": DEMO_KEY,
        # Only so that the stand-in plays OpenAI: a newcomer sets none of these.
        "AUTHZ_UPSTREAM_URL": fake_openai.url,
        "AUTHZ_UPSTREAM_CA_FILE": str(pki.ca_file),
        "AUTHZ_METRICS_ADDR": f"127.0.0.1:{free_port()}",
    })
    return env


def test_authz_up_demo_prints_a_first_call_that_works(pki, fake_openai, upstream, tmp_path):
    port = free_port()
    up = ManagedProcess([sys.executable, "-m", "authz", "up", "--demo", "--listen",
                         f"127.0.0.1:{port}"], newcomer_env(pki, fake_openai),
                        tmp_path / "up.log", inherit_env=False, name="authz-up-demo")
    up.start()
    try:
        up.wait_for_log(r"Demo ready: paste the lines above", timeout=90)
        text = up.log_text()
        assert DEMO_KEY not in text  # the OpenAI key is only ever shown masked

        curl = re.search(r"^curl:\n  (curl .*?[^\\])$", text, re.MULTILINE | re.DOTALL)
        assert curl, text
        pasted = subprocess.run(["bash", "-c", curl.group(1) + " --fail-with-body -sS"],
                                capture_output=True, text=True, timeout=30, check=False)
        assert pasted.returncode == 0, pasted.stdout + pasted.stderr
        assert '"chat.completion"' in pasted.stdout
        assert upstream.requests[-1].header("authorization") == f"Bearer {DEMO_KEY}"

        snippet = re.search(r"openai SDK \(Python\):\n((?:  .*\n)+)", text)
        assert snippet, text
        ran = subprocess.run([sys.executable, "-c", textwrap.dedent(snippet.group(1))],
                             capture_output=True, text=True, timeout=60, check=False)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.strip()
        assert len(upstream.requests) == 2
        assert upstream.requests[-1].header("authorization") == f"Bearer {DEMO_KEY}"
    finally:
        up.stop()


def test_authz_up_demo_without_an_openai_key_says_what_is_missing(pki, fake_openai):
    env = newcomer_env(pki, fake_openai)
    env["OPENAI_API_KEY"] = ""
    result = authz("up", "--demo", "--listen", f"127.0.0.1:{free_port()}", env={
        **env, "VAULT_ADDR": "", "AUTHZ_FIREBASE_PROJECT_ID": ""})
    assert result.returncode == 2
    assert "OPENAI_API_KEY" in result.stderr
