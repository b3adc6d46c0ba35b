"""Headers both ways, exactly as DESIGN.md lists them."""

import httpx2 as httpx
import hvac.exceptions
import pytest

pytestmark = pytest.mark.integration

HOSTILE = {
    "cookie": "session=abc",
    "proxy-authorization": "Basic eDp5",
    "x-api-key": "sk-client-own-key",
    "x-client-id": "globex",
    "x-tenant-id": "globex",
    "x-forwarded-for": "203.0.113.9",
    "x-forwarded-host": "evil.example",
    "x-forwarded-proto": "http",
    "forwarded": "for=203.0.113.9",
    "x-real-ip": "203.0.113.9",
    "cf-connecting-ip": "203.0.113.9",
    "true-client-ip": "203.0.113.9",
    "x-client-ip": "203.0.113.9",
    "x-cluster-client-ip": "203.0.113.9",
    "x-envoy-upstream-rq-timeout-ms": "1",
    "x-envoy-original-path": "/admin",
    "openai-organization": "org-client-chosen",
    "openai-project": "proj-client-chosen",
}
FORBIDDEN_UPSTREAM = set(HOSTILE) - {"openai-organization", "openai-project"}


def test_upstream_gets_the_tenant_key_and_none_of_the_clients_credentials(
    relay, upstream, token_for, tenants
):
    token = token_for("acme")
    with httpx.Client(timeout=20) as client:
        response = client.post(
            relay.api_base + "/test/echo",
            headers={**HOSTILE, "authorization": f"Bearer {token}", "x-keep-me": "yes"},
            content=b'{"hello": "world"}',
        )
    assert response.status_code == 200
    [received] = upstream.requests
    names = received.header_names()
    assert received.header_values("authorization") == [f"Bearer {tenants['acme'].api_key}"]
    assert not names & FORBIDDEN_UPSTREAM
    assert not [n for n in names if n.startswith(("x-forwarded-", "x-envoy-"))]
    # acme has no organization/project: the client's own choice is dropped too.
    assert "openai-organization" not in names
    assert "openai-project" not in names
    assert received.header("host") == upstream.url.removeprefix("https://")
    assert received.header("x-keep-me") == "yes"
    raw = repr(received.headers)
    assert token not in raw
    assert "sk-client-own-key" not in raw


def test_tenant_organization_and_project_replace_the_clients(relay, upstream, token_for, tenants):
    with httpx.Client(timeout=20) as client:
        client.get(relay.api_base + "/models", headers={
            **HOSTILE, "authorization": f"Bearer {token_for('globex')}"})
    [received] = upstream.requests
    assert received.header_values("openai-organization") == ["org-globex"]
    assert received.header_values("openai-project") == ["proj-globex"]
    assert received.header_values("authorization") == [f"Bearer {tenants['globex'].api_key}"]


def test_host_header_cannot_redirect_the_upstream(relay, upstream, token_for):
    with httpx.Client(timeout=20) as client:
        response = client.get(relay.api_base + "/models", headers={
            "host": "elsewhere.example", "authorization": f"Bearer {token_for('acme')}"})
    assert response.status_code == 200
    [received] = upstream.requests
    assert received.header("host") == upstream.url.removeprefix("https://")


def test_client_response_has_upstream_headers_minus_cookies_and_envoy(relay, upstream, token_for):
    with httpx.Client(timeout=20) as client:
        response = client.get(relay.api_base + "/models",
                              headers={"authorization": f"Bearer {token_for('acme')}"})
    assert response.status_code == 200
    assert response.headers.get("x-request-id")
    assert response.headers.get("openai-processing-ms")
    assert "set-cookie" not in response.headers
    assert response.headers.get("server") != "envoy"
    assert not [n for n in response.headers if n.lower().startswith("x-envoy")]


@pytest.mark.parametrize("status", [400, 404, 429, 500, 503])
def test_upstream_errors_pass_through_untouched(relay, upstream, token_for, status):
    with httpx.Client(timeout=20) as client:
        response = client.post(relay.api_base + f"/test/status/{status}",
                               headers={"authorization": f"Bearer {token_for('acme')}"},
                               content=b"{}")
    assert response.status_code == status
    assert response.json() == {"error": {"message": f"upstream says {status}", "type": "test"}}
    assert response.headers["x-upstream-marker"] == "yes"
    assert response.headers["x-request-id"] == "req_test"
    assert "set-cookie" not in response.headers
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("field", ["api_key", "organization", "project"])
def test_a_tenant_value_that_cannot_be_a_header_is_a_500_naming_only_the_field(
    relay, vault, upstream, token_for, field
):
    """A CR/LF in a Vault value would add headers of its own (issue 11, item 9)."""
    client_id = f"crlf-{field.replace('_', '-')}"
    values = {"api_key": "sk-crlf-0123456789abcdefgh", "organization": "org-ok",
              "project": "proj-ok"}
    values[field] = values[field] + "\r\nX-Injected: yes"
    vault.put_tenant(client_id, values["api_key"], organization=values["organization"],
                     project=values["project"])
    with httpx.Client(timeout=20) as client:
        response = client.get(relay.api_base + "/models",
                              headers={"authorization": f"Bearer {token_for(client_id)}"})
    assert response.status_code == 500
    assert response.json() == {"error": "OpenAI proxy internal error",
                               "details": "tenant record invalid"}
    assert upstream.requests == []
    log = relay.logs()["authz"]
    assert f"field {field}" in log
    assert "X-Injected" not in log


def test_tenant_put_refuses_a_value_that_cannot_be_a_header(vault):
    from tests.support.authz_cli import authz

    result = authz("tenant", "put", "crlf-cli", "--organization", "org\r\nX-Injected: yes",
                   env={**vault.env, "OPENAI_API_KEY": "sk-crlf-cli-0123456789abcd"})
    assert result.returncode == 2, result.stderr
    assert "organization" in result.stderr
    assert "X-Injected" not in result.stderr
    with pytest.raises(hvac.exceptions.InvalidPath):
        vault.read_tenant("crlf-cli")  # nothing was written
