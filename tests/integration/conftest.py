"""The whole relay on loopback: real Envoy, real `authz serve`, real OpenBao, the fake
OpenAI upstream over TLS, and Firebase-shaped RS256 tokens checked against served certs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.firebase import FirebaseKeys
from tests.support.oidc import JwksServer, OidcIssuerKeys
from tests.support.processes import ManagedProcess, free_port
from tests.support.relay import RelayStack
from tests.support.tenants import Tenant
from tests.support.tls import TestPKI
from tests.support.vault import BaoDevServer

pytestmark = pytest.mark.integration

#: RELAY_TEST_FAST_PATH=on runs these suites with the fast path (docs/fast-path.md).
FAST_PATH = os.environ.get("RELAY_TEST_FAST_PATH", "off") == "on"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With the fast path on, a test marked ext_authz_only is skipped, with its reason:
    it checks what only the ext_authz path does (docs/fast-path.md says which and why)."""
    if not FAST_PATH:
        return
    for item in items:
        marker = item.get_closest_marker("ext_authz_only")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason="ext_authz path only: " + marker.args[0]))


TENANTS = (
    Tenant("acme", "sk-acme-0123456789abcdefghij"),
    Tenant("globex", "sk-globex-0123456789abcdefgh", organization="org-globex",
           project="proj-globex"),
    Tenant("initech", "sk-initech-0123456789abcdef"),
)


def relay_env(pki: TestPKI, firebase: FirebaseKeys, vault: BaoDevServer,
              upstream: FakeOpenAI) -> dict[str, str]:
    assert firebase.server is not None
    return {
        "AUTHZ_FIREBASE_PROJECT_ID": firebase.project_id,
        "AUTHZ_FIREBASE_CERTS_URL": firebase.server.url,
        "AUTHZ_UPSTREAM_URL": upstream.url,
        "AUTHZ_UPSTREAM_CA_FILE": str(pki.ca_file),
        "VAULT_ADDR": vault.addr,
        "VAULT_TOKEN": vault.token,
        "AUTHZ_LOG_LEVEL": "DEBUG",
        "AUTHZ_FAST_PATH": "on" if FAST_PATH else "off",
    }


OIDC_ISSUER = "https://login.example.test/realms/fast"


@pytest.fixture(scope="module")
def oidc_keys() -> Iterator[tuple[OidcIssuerKeys, JwksServer]]:
    """An OIDC issuer's signing keys and the JWKS server that publishes them."""
    keys = OidcIssuerKeys(OIDC_ISSUER, audience="relay-api")
    server = JwksServer(keys).start()
    try:
        yield keys, server
    finally:
        server.stop()


def oidc_env(server: JwksServer) -> dict[str, str]:
    """The relay's setting for that issuer: two audiences, a nested client-id claim first."""
    return {"AUTHZ_OIDC_ISSUERS": json.dumps([{
        "issuer": OIDC_ISSUER, "audience": ["relay-api", "other-api"],
        "jwks_url": server.url, "client_id_claim": ["org.tenant", "clientId"]}])}


@pytest.fixture(scope="session")
def tenants(vault: BaoDevServer) -> dict[str, Tenant]:
    for tenant in TENANTS:
        vault.put_tenant(tenant.client_id, tenant.api_key, organization=tenant.organization,
                         project=tenant.project)
    return {tenant.client_id: tenant for tenant in TENANTS}


@pytest.fixture(scope="session")
def relay(pki: TestPKI, firebase: FirebaseKeys, vault: BaoDevServer, fake_openai: FakeOpenAI,
          tenants: dict[str, Tenant], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[RelayStack]:
    """One relay shared by the tests that do not break it."""
    stack = RelayStack(relay_env(pki, firebase, vault, fake_openai),
                       tmp_path_factory.mktemp("relay"))
    try:
        yield stack.start()
    finally:
        stack.stop()


@pytest.fixture
def make_relay(pki: TestPKI, firebase: FirebaseKeys, vault: BaoDevServer,
               fake_openai: FakeOpenAI, tenants: dict[str, Tenant], tmp_path: Path
               ) -> Iterator[Callable[..., RelayStack]]:
    """A private relay for tests that kill, pause or misconfigure a part of it."""
    started: list[RelayStack] = []

    def make(env_overrides: dict[str, str] | None = None, **stack_kwargs: float) -> RelayStack:
        env = {**relay_env(pki, firebase, vault, fake_openai), **(env_overrides or {})}
        stack = RelayStack(env, tmp_path / f"relay{len(started)}", **stack_kwargs)
        started.append(stack)
        return stack.start()

    yield make
    for stack in started:
        stack.stop()


@pytest.fixture
def token_for(firebase: FirebaseKeys) -> Callable[..., str]:
    def mint(client_id: str | None, uid: str = "user-1", **kwargs: object) -> str:
        return firebase.mint(None, uid, client_id, **kwargs)  # type: ignore[arg-type]

    return mint


@pytest.fixture
def sdk(relay: RelayStack, token_for: Callable[..., str]) -> Callable[..., openai.OpenAI]:
    """The official openai SDK pointed at the relay, authenticated as a tenant's user."""
    clients: list[httpx.Client] = []

    def make(client_id: str = "acme", uid: str = "user-1", **kwargs: object) -> openai.OpenAI:
        http_client = httpx.Client(timeout=30)
        clients.append(http_client)
        return openai.OpenAI(base_url=relay.api_base, api_key=token_for(client_id, uid),
                             http_client=http_client, max_retries=0, **kwargs)  # type: ignore[arg-type]

    yield make
    for client in clients:
        client.close()


@dataclass
class RunningUp:
    """A running `authz up`, and the address it serves the relay on."""

    process: ManagedProcess
    listen_port: int

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}/api/openai/v1"


@pytest.fixture
def start_up(pki: TestPKI, firebase: FirebaseKeys, fake_openai: FakeOpenAI, tmp_path: Path
             ) -> Iterator[Callable[..., RunningUp]]:
    """Start `authz up` as a user would (only the given environment, no VAULT_ADDR unless
    passed: then it runs its own OpenBao) and wait for its banner."""
    started: list[ManagedProcess] = []

    def start(extra_env: dict[str, str] | None = None, *args: str) -> RunningUp:
        assert firebase.server is not None
        listen_port = free_port()
        env = {
            "AUTHZ_FIREBASE_PROJECT_ID": firebase.project_id,
            "AUTHZ_FIREBASE_CERTS_URL": firebase.server.url,
            "AUTHZ_UPSTREAM_URL": fake_openai.url,
            "AUTHZ_UPSTREAM_CA_FILE": str(pki.ca_file),
            "AUTHZ_METRICS_ADDR": f"127.0.0.1:{free_port()}",
            **{k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ},
            **(extra_env or {}),
        }
        process = ManagedProcess(
            [sys.executable, "-m", "authz", "up", "--listen", f"127.0.0.1:{listen_port}",
             *args],
            env, tmp_path / f"up{len(started)}.log", inherit_env=False, name="authz-up")
        started.append(process)
        process.start()
        process.wait_for_log(r"Ctrl-C stops everything", timeout=60)
        return RunningUp(process, listen_port)

    yield start
    for process in started:
        process.stop()
