"""docker-compose.yml, as a user runs it (with the OpenBao alternative), through
testcontainers' compose support: the stand-in images replace the official ones through
the file's own image variables, plus a small override that mounts the test CA."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
from testcontainers.compose import DockerCompose

from tests.containers.conftest import shared_dir
from tests.containers.images import BuiltImages
from tests.support.fake_openai import FakeOpenAI
from tests.support.firebase import FirebaseKeys
from tests.support.processes import free_port
from tests.support.tls import TestPKI

pytestmark = pytest.mark.containers

REPO = Path(__file__).resolve().parents[2]
BASE = "docker-compose.yml"
OPENBAO = "docker-compose.openbao.yml"
OVERRIDE = "tests/containers/compose.override.yml"
DEMO_KEY = "sk-compose-demo-" + secrets.token_hex(8)


def compose_config(files: list[str], env_file: Path | None = None) -> dict[str, Any]:
    argv = ["docker", "compose"]
    for name in files:
        argv += ["-f", name]
    if env_file is not None:
        argv += ["--env-file", str(env_file)]
    argv += ["config", "--format", "json"]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def assert_host_network_only(config: dict[str, Any]) -> None:
    """The rule of this machine, and of the design: no Docker network, ever."""
    assert set(config.get("networks") or {}) == set(), config.get("networks")
    for name, service in config["services"].items():
        assert service.get("network_mode") == "host", name
        assert service.get("init") is True, name
        assert not service.get("networks"), name
        assert not service.get("ports"), name


@pytest.mark.parametrize("files", [[BASE], [BASE, OPENBAO]], ids=["vault", "openbao"])
def test_compose_file_is_valid_and_host_network_only(docker_client, files):
    config = compose_config(files)
    assert_host_network_only(config)
    assert set(config["services"]) == {"vault", "vault-init", "envoy-config", "authz", "envoy"}
    envoy = config["services"]["envoy"]
    assert envoy["image"].startswith("envoyproxy/envoy:v1.40")
    authz = config["services"]["authz"]
    assert authz["read_only"] is True
    assert authz["cap_drop"] == ["ALL"]
    assert authz["build"]["args"]["BASE_IMAGE"].startswith("python:")
    assert authz["environment"]["AUTHZ_VAULT_AUTH"] == "approle"


@pytest.fixture
def compose_env(images: BuiltImages, pki: TestPKI, firebase: FirebaseKeys,
                fake_openai: FakeOpenAI) -> Iterator[tuple[Path, dict[str, str]]]:
    assert firebase.server is not None
    env = {
        "COMPOSE_PROJECT_NAME": "relay-test-" + secrets.token_hex(4),
        "ENVOY_IMAGE": images.envoy,
        "OPENBAO_IMAGE": images.openbao,
        "AUTHZ_IMAGE": images.authz,
        "OPENAI_API_KEY": DEMO_KEY,
        "DEMO_CLIENT_ID": "demo",
        "AUTHZ_FIREBASE_PROJECT_ID": firebase.project_id,
        "AUTHZ_FIREBASE_CERTS_URL": firebase.server.url,
        "AUTHZ_UPSTREAM_URL": fake_openai.url,
        "AUTHZ_UPSTREAM_CA_FILE": "/etc/relay-test/ca.pem",
        "RELAY_TEST_CA": str(pki.ca_file),
        "RELAY_LISTEN": f"127.0.0.1:{free_port()}",
        "ENVOY_ADMIN_PORT": str(free_port()),
        "ENVOY_HEALTH_PORT": str(free_port()),
        "AUTHZ_GRPC_PORT": str(free_port()),
        "AUTHZ_METRICS_PORT": str(free_port()),
        "VAULT_PORT": str(free_port()),
        "VAULT_DEV_ROOT_TOKEN": "root-" + secrets.token_hex(8),
    }
    directory = shared_dir("relay-compose-")
    env_file = directory / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    yield env_file, env
    env_file.unlink()
    directory.rmdir()


def test_compose_up_relays_for_the_demo_tenant(compose_env, firebase, fake_openai):
    env_file, env = compose_env
    files = [BASE, OPENBAO, OVERRIDE]
    # Refuse to start anything that would not use the host's network.
    assert_host_network_only(compose_config(files, env_file))
    compose = DockerCompose(REPO, compose_file_name=files, env_file=str(env_file),
                            pull=False, build=False, wait=True)
    try:
        compose.start()
    except subprocess.CalledProcessError as exc:
        logs = subprocess.run(
            [*compose.compose_command_property, "logs", "--no-color", "vault-init",
             "envoy-config", "authz", "envoy"], cwd=REPO, capture_output=True, text=True,
            check=False)
        compose.stop()
        pytest.fail(f"compose up failed: {exc.stderr.decode()}\n{logs.stdout[-6000:]}")
    try:
        fake_openai.clear()
        base_url = f"http://{env['RELAY_LISTEN']}/api/openai/v1"
        token = firebase.mint(None, "compose-user", "demo")
        with httpx.Client(timeout=30) as http_client:
            sdk = openai.OpenAI(base_url=base_url, api_key=token, http_client=http_client,
                                max_retries=0)
            completion = sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            assert completion.choices[0].message.content
            denied = http_client.get(f"{base_url}/models")
        [received] = fake_openai.requests
        assert received.header("authorization") == f"Bearer {DEMO_KEY}"
        assert denied.status_code == 401
        assert denied.json() == {"error": "Authentication failed"}
        # Every long-running service reports healthy; the one-shot steps exited 0.
        states = {c.Service: (c.State, c.Health) for c in compose.get_containers(True)}
        assert states["envoy"] == ("running", "healthy")
        assert states["authz"] == ("running", "healthy")
        assert states["vault-init"][0] == "exited"
        assert states["envoy-config"][0] == "exited"
    finally:
        compose.stop()
