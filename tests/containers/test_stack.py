"""End to end through the containers: the openai SDK → Envoy (container) → authz
(container, AppRole login) → OpenBao (container), to the TLS stand-in for OpenAI."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator

import httpx2 as httpx
import openai
import pytest

from tests.containers.conftest import (
    TENANTS,
    ContainerStack,
    container_state,
    http_ok,
    wait_until,
)
from tests.support.kubernetes_manifests import prestop_command, probe_commands
from tests.support.processes import free_port

pytestmark = pytest.mark.containers

KEYS = {tenant.client_id: tenant.api_key for tenant in TENANTS}


@pytest.fixture
def sdk(stack: ContainerStack, token_for: Callable[..., str]
        ) -> Iterator[Callable[..., openai.OpenAI]]:
    clients: list[httpx.Client] = []

    def make(client_id: str = "acme", **kwargs: object) -> openai.OpenAI:
        http_client = httpx.Client(timeout=30)
        clients.append(http_client)
        return openai.OpenAI(base_url=stack.api_base, api_key=token_for(client_id),
                             http_client=http_client, max_retries=0, **kwargs)  # type: ignore[arg-type]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def http(stack: ContainerStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        yield client


def test_sdk_call_reaches_the_upstream_with_the_tenant_key(sdk, upstream, token_for):
    completion = sdk("acme").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content
    [received] = upstream.requests
    assert received.path == "/v1/chat/completions"
    assert received.header("authorization") == f"Bearer {KEYS['acme']}"


def test_sse_chunks_arrive_as_they_are_sent(sdk, upstream):
    client = sdk("acme", default_headers={"x-test-chunk-interval-ms": "250",
                                         "x-test-chunks": "5"})
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    arrivals = []
    for _chunk in stream:
        arrivals.append(time.monotonic())
    assert len(arrivals) >= 5
    gaps = [b - a for a, b in itertools.pairwise(arrivals[:5])]
    # 250 ms apart at the source, about 250 ms apart here: nothing buffers the stream.
    assert all(gap > 0.15 for gap in gaps), gaps
    assert arrivals[0] - started < 1.5


def test_tenants_are_isolated(sdk, upstream, http, token_for):
    sdk("globex").models.list()
    # A globex user naming another tenant in headers still gets globex's key.
    reply = http.get("/api/openai/v1/models", headers={
        "authorization": f"Bearer {token_for('globex')}",
        "x-client-id": "acme", "x-tenant-id": "acme", "cookie": "session=1",
        "openai-organization": "org-acme",
    })
    assert reply.status_code == 200
    first, second = upstream.requests
    for received in (first, second):
        assert received.header("authorization") == f"Bearer {KEYS['globex']}"
        assert received.header("openai-organization") == "org-globex"
        assert received.header("openai-project") == "proj-globex"
    assert second.header("x-client-id") is None
    assert second.header("x-tenant-id") is None
    assert second.header("cookie") is None
    assert KEYS["acme"] not in json.dumps(second.headers)


@pytest.mark.parametrize(("case", "status", "body"), [
    ("no token", 401, {"error": "Authentication failed"}),
    ("garbage token", 401, {"error": "Authentication failed"}),
    ("expired token", 401, {"error": "Authentication failed"}),
    ("no client id", 500, {"error": "Client ID not found"}),
    ("tenant without key", 500, {"error": "OpenAI API key not found"}),
    ("outside the prefix", 404, {"error": "Not found"}),
])
def test_error_contract(http, upstream, token_for, case, status, body):
    path = "/api/openai/v1/models"
    headers: dict[str, str] = {}
    if case == "garbage token":
        headers["authorization"] = "Bearer not-a-jwt"
    elif case == "expired token":
        headers["authorization"] = "Bearer " + token_for("acme", now=time.time() - 7200)
    elif case == "no client id":
        headers["authorization"] = "Bearer " + token_for(None)
    elif case == "tenant without key":
        headers["authorization"] = "Bearer " + token_for("initech")
    elif case == "outside the prefix":
        path = "/v1/models"
        headers["authorization"] = "Bearer " + token_for("acme")
    reply = http.get(path, headers=headers)
    assert reply.status_code == status
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json() == body
    assert "server" not in reply.headers
    assert upstream.requests == []


def test_upstream_errors_pass_through(http, upstream, token_for):
    reply = http.post("/api/openai/v1/test/status/429",
                      headers={"authorization": "Bearer " + token_for("acme")})
    assert reply.status_code == 429
    assert reply.json() == {"error": {"message": "upstream says 429", "type": "test"}}
    assert reply.headers["x-upstream-marker"] == "yes"
    assert "set-cookie" not in reply.headers


def test_authz_unreachable_fails_closed(stack: ContainerStack, upstream, token_for):
    """An Envoy container whose authz address answers nothing: the contract's 500."""
    listen, admin, health, dead = free_port(), free_port(), free_port(), free_port()
    config = stack.render_envoy_config(listen_port=listen, admin_port=admin, authz_port=dead,
                                       health_port=health, name="envoy-dead-authz")
    envoy = stack.envoy_container(config, admin_port=admin).start()
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{admin}/ready"), envoy, "envoy")
        reply = httpx.get(f"http://127.0.0.1:{listen}/api/openai/v1/models",
                          headers={"authorization": "Bearer " + token_for("acme")}, timeout=30)
        assert reply.status_code == 500
        assert reply.json()["error"] == "OpenAI proxy internal error"
        assert upstream.requests == []
        # Its readiness listener says so too: a load balancer would not send it traffic.
        assert httpx.get(f"http://127.0.0.1:{health}/ready").status_code == 503
        # The Kubernetes preStop hook, verbatim, with the pod's environment: it drains
        # through the admin port and, with no request open, returns once its minimum
        # wait has passed (tests/integration/test_kubernetes_prestop.py holds a stream).
        started = time.monotonic()
        result = envoy.get_wrapped_container().exec_run(prestop_command(), environment={
            "ENVOY_ADMIN_PORT": str(admin), "PRESTOP_MIN_WAIT_S": "1",
            "PRESTOP_MAX_WAIT_S": "20"})
        elapsed = time.monotonic() - started
        assert result.exit_code == 0, result.output
        assert b"expected" not in result.output
        assert b"error" not in result.output.lower()
        assert 1 <= elapsed < 20, elapsed
    finally:
        envoy.stop()


def test_kubernetes_probes_pass_against_the_containers(stack: ContainerStack):
    """The exec probes of deploy/kubernetes run verbatim in the running authz container;
    Envoy's readiness probe is an HTTP GET of its readiness listener."""
    probes = probe_commands()
    authz = stack.containers["authz"].get_wrapped_container()
    for kind, command in probes["authz"].items():
        result = authz.exec_run(command)
        assert result.exit_code == 0, (kind, command, result.output)
    assert http_ok(f"http://127.0.0.1:{stack.health_port}/ready")


def test_containers_run_as_their_non_root_users(stack: ContainerStack):
    for name, user in (("authz", "10001:10001"), ("envoy", "101:101")):
        wrapped = stack.containers[name].get_wrapped_container()
        assert wrapped.exec_run(["id", "-u"]).output.decode().strip() == user.split(":")[0]
        assert container_state(stack.containers[name])["Status"] == "running"
