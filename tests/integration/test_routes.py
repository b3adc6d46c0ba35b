"""DESIGN.md's route table: what is forwarded where, and what never leaves the relay."""

import httpx2 as httpx
import pytest

pytestmark = pytest.mark.integration

NOT_FOUND = {"error": "Not found"}


def call(relay, method, target, token=None, **kwargs):
    headers = kwargs.pop("headers", {})
    if token:
        headers["authorization"] = f"Bearer {token}"
    with httpx.Client(timeout=20) as client:
        return client.request(method, relay.url + target, headers=headers, **kwargs)


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/api/openai/v1/models", "/v1/models"),
        ("/api/openai/v1/models?limit=2&after=x%20y", "/v1/models?limit=2&after=x%20y"),
        ("/api/openai/v1/test/echo?a=1&a=2", "/v1/test/echo?a=1&a=2"),
        ("/api/openai", "/v1/responses"),
        ("/api/openai/", "/v1/responses"),
        ("/api/openai?stream=false", "/v1/responses?stream=false"),
        ("/api/openai/?x=1", "/v1/responses?x=1"),
        ("/api/openai//v1//models", "/v1/models"),
        ("/api/openai/v1/../v1/models", "/v1/models"),
        ("/api/openai/v1/%2e%2e/v1/models", "/v1/models"),
    ],
)
def test_forwarded_paths_keep_their_query(relay, upstream, token_for, target, forwarded):
    method = "POST" if "responses" in forwarded else "GET"
    json_body = {"model": "gpt-4o-mini", "input": "hi"} if method == "POST" else None
    response = call(relay, method, target, token_for("acme"), json=json_body)
    assert response.status_code == 200, response.text
    [received] = upstream.requests
    assert received.target == forwarded
    assert received.method == method


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
def test_every_method_is_forwarded(relay, upstream, token_for, method):
    response = call(relay, method, "/api/openai/v1/test/echo", token_for("acme"),
                    content=b"{}" if method in ("POST", "PUT", "PATCH") else None)
    assert response.status_code == 200
    [received] = upstream.requests
    assert received.method == method


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/v1/models",
        "/api",
        "/api/openaiX/v1/models",
        "/api/openai-v2/v1/models",
        "/api/openai/../admin",
        "/api/openai/%2e%2e/%2e%2e/etc/passwd",
        "/api/openai/v1/../../secret",
        "/API/OPENAI/v1/models",
    ],
)
def test_paths_outside_the_prefix_are_404_json_and_never_forwarded(
    relay, upstream, token_for, target
):
    response = call(relay, "GET", target, token_for("acme"))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == NOT_FOUND
    assert upstream.requests == []


@pytest.mark.parametrize(
    "target", ["/api/openai/v1%2Fmodels", "/api/openai%2Fv1/models", "/api/openai/v1%5cmodels"]
)
def test_escaped_slashes_are_400_json(relay, upstream, token_for, target):
    response = call(relay, "GET", target, token_for("acme"))
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "Bad request"}
    assert upstream.requests == []


def test_unauthenticated_probes_of_other_paths_get_404_not_401(relay, upstream):
    response = call(relay, "GET", "/admin")
    assert response.status_code == 404
    assert response.json() == NOT_FOUND


def test_h2c_clients_are_served(relay, upstream, token_for):
    with httpx.Client(http1=False, http2=True, timeout=20) as client:
        response = client.get(relay.url + "/api/openai/v1/models?x=1",
                              headers={"authorization": f"Bearer {token_for('acme')}"})
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    [received] = upstream.requests
    assert received.target == "/v1/models?x=1"
