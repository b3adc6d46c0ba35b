"""Browser clients (CORS), against the real Envoy: preflights answered by Envoy alone,
every response to a listed origin readable by the page (errors and Envoy's own replies
included), nothing for an unlisted origin, and nothing at all when CORS is not set."""

from __future__ import annotations

import re

import httpx2 as httpx
import pytest

from authz.stack.cors import ALLOW_HEADERS, MAX_AGE_S
from tests.support.authz_cli import authz

pytestmark = pytest.mark.integration

PAGE = "http://127.0.0.1:5173"
OTHER_PAGE = "https://app.example.com"
UNLISTED = "http://127.0.0.1:5174"
CORS_ENV = {"AUTHZ_CORS_ORIGINS": f"{PAGE}, {OTHER_PAGE}"}
# What the openai JS SDK's preflight asks for (a browser lowercases and sorts them).
SDK_REQUEST_HEADERS = ("authorization,content-type,x-stainless-arch,x-stainless-lang,"
                       "x-stainless-os,x-stainless-package-version,x-stainless-retry-count,"
                       "x-stainless-runtime,x-stainless-runtime-version,x-stainless-timeout")


@pytest.fixture
def cors_relay(make_relay):
    return make_relay(CORS_ENV)


def checks_made(relay) -> float:
    """How many decisions the authz service has made (its own metric)."""
    text = httpx.get(relay.metrics_url, timeout=10).text
    match = re.search(r"^authz_check_duration_seconds_count (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


def preflight(relay, origin: str, path: str = "/chat/completions") -> httpx.Response:
    return httpx.request("OPTIONS", relay.api_base + path, timeout=10, headers={
        "origin": origin, "access-control-request-method": "POST",
        "access-control-request-headers": SDK_REQUEST_HEADERS})


def call(relay, origin: str | None, path: str = "/models", token: str | None = None,
         method: str = "GET", **kwargs) -> httpx.Response:
    headers = {"origin": origin} if origin else {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return httpx.request(method, relay.api_base + path, headers=headers, timeout=30, **kwargs)


def assert_readable_by(response: httpx.Response, origin: str) -> None:
    """What a browser needs to hand the response to the page at `origin`."""
    assert response.headers.get_list("access-control-allow-origin") == [origin], response.headers
    exposed = {h.strip() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "retry-after", "openai-processing-ms",
            "x-ratelimit-remaining-requests", "x-ratelimit-reset-tokens"} <= exposed
    assert "origin" in response.headers.get("vary", "").lower()
    # Credentials are a bearer token the page sets itself, never cookies.
    assert "access-control-allow-credentials" not in response.headers


def assert_no_cors(response: httpx.Response) -> None:
    assert not [k for k in response.headers if k.lower().startswith("access-control-")], (
        response.headers)


def test_preflight_is_answered_by_envoy_without_a_token(cors_relay, upstream):
    before = checks_made(cors_relay)
    for path in ("/chat/completions", "/responses", ""):
        response = preflight(cors_relay, PAGE, path)
        assert response.status_code == 204, response.text
        assert response.content == b""
        assert response.headers["access-control-allow-origin"] == PAGE
        methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
        assert {"GET", "POST", "DELETE"} <= methods
        allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
        assert set(SDK_REQUEST_HEADERS.split(",")) <= allowed
        assert {"openai-beta", "openai-organization", "openai-project"} <= allowed
        assert allowed == set(ALLOW_HEADERS)
        assert response.headers["access-control-max-age"] == str(MAX_AGE_S)
        assert response.headers.get_list("vary") == ["Origin"]
    # A path outside the API too: the page then reads the relay's JSON 404, not a
    # network error.
    elsewhere = httpx.request("OPTIONS", cors_relay.url + "/elsewhere", timeout=10, headers={
        "origin": PAGE, "access-control-request-method": "GET",
        "access-control-request-headers": "authorization"})
    assert elsewhere.status_code == 204
    assert elsewhere.headers["access-control-allow-origin"] == PAGE
    # The bare /api/openai too, and the second listed origin gets its own name back.
    bare = httpx.request("OPTIONS", cors_relay.url + "/api/openai", timeout=10, headers={
        "origin": OTHER_PAGE, "access-control-request-method": "POST"})
    assert bare.status_code == 204
    assert bare.headers["access-control-allow-origin"] == OTHER_PAGE
    # Never forwarded, never decided.
    assert upstream.requests == []
    assert checks_made(cors_relay) == before


def test_actual_responses_carry_the_origin_and_exposed_headers(cors_relay, upstream,
                                                               token_for):
    token = token_for("acme")
    ok = call(cors_relay, PAGE, "/chat/completions", token, "POST",
              json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200, ok.text
    assert_readable_by(ok, PAGE)
    assert ok.headers["x-request-id"]  # the upstream's, now readable by the page
    other = call(cors_relay, OTHER_PAGE, token=token)
    assert other.status_code == 200
    assert_readable_by(other, OTHER_PAGE)
    # An SSE stream too (headers come first, the body streams as ever).
    with httpx.Client(timeout=30) as client, client.stream(
            "GET", cors_relay.api_base + "/test/stream?chunks=3",
            headers={"origin": PAGE, "authorization": f"Bearer {token}"}) as stream:
        assert stream.status_code == 200
        assert_readable_by(stream, PAGE)
        assert stream.read().count(b"data:") == 3


@pytest.mark.parametrize(("case", "status", "body"), [
    ("no token", 401, {"error": "Authentication failed"}),
    ("bad token", 401, {"error": "Authentication failed"}),
    ("no client id", 500, {"error": "Client ID not found"}),
    ("no key", 500, {"error": "OpenAI API key not found"}),
    ("not the api", 404, {"error": "Not found"}),
    ("upstream 403", 403, None),
    ("upstream 404", 404, None),
    ("upstream 429", 429, None),
    ("upstream 500", 500, None),
    ("upstream reset", 502, None),
])
def test_errors_are_readable_by_a_listed_page(cors_relay, token_for, case, status, body):
    token = token_for("acme")
    if case == "no token":
        response = call(cors_relay, PAGE)
    elif case == "bad token":
        response = call(cors_relay, PAGE, token=token[:-4] + "AAAA")
    elif case == "no client id":
        response = call(cors_relay, PAGE, token=token_for(None))
    elif case == "no key":
        response = call(cors_relay, PAGE, token=token_for("nokey-tenant"))
    elif case == "not the api":
        response = httpx.get(cors_relay.url + "/elsewhere", headers={"origin": PAGE}, timeout=10)
    elif case == "upstream 403":
        response = call(cors_relay, PAGE, "/test/status/403", token)
    elif case == "upstream 404":
        response = call(cors_relay, PAGE, "/no/such/endpoint", token)
    elif case == "upstream 429":
        response = call(cors_relay, PAGE, "/test/status/429", token)
    elif case == "upstream 500":
        response = call(cors_relay, PAGE, "/test/status/500", token)
    else:
        assert case == "upstream reset"
        response = call(cors_relay, PAGE, "/test/drop", token)
    assert response.status_code == status, response.text
    if body is not None:
        assert response.json() == body
    if case == "upstream reset":
        assert response.json()["error"] == "OpenAI proxy internal error"
    assert_readable_by(response, PAGE)


@pytest.mark.ext_authz_only("Envoy serves known tenants until its lease ends")
def test_authz_unreachable_500_is_readable_by_a_listed_page(cors_relay, upstream, token_for):
    cors_relay.authz.stop()
    response = call(cors_relay, PAGE, token=token_for("acme"))
    assert response.status_code == 500
    assert response.json()["error"] == "OpenAI proxy internal error"
    assert_readable_by(response, PAGE)
    # A preflight still needs no authz at all.
    assert preflight(cors_relay, PAGE).status_code == 204
    assert upstream.requests == []


def test_envoy_504_for_a_silent_upstream_is_readable_by_a_listed_page(make_relay, token_for):
    relay = make_relay(CORS_ENV, stream_idle_timeout_s=1)
    response = call(relay, PAGE, "/test/delay?ms=30000", token_for("acme"))
    assert response.status_code == 504
    assert response.json()["error"] == "OpenAI proxy internal error"
    assert_readable_by(response, PAGE)


def test_an_unlisted_origin_gets_no_cors_headers(cors_relay, upstream, token_for):
    token = token_for("acme")
    for origin in (UNLISTED, "http://127.0.0.1:5173.evil.example", "null",
                   PAGE + "/", PAGE.upper(), "http://localhost:5173"):
        answer = preflight(cors_relay, origin)
        # Not answered as a preflight: it falls to the ordinary route and needs a token.
        assert answer.status_code == 401, (origin, answer.status_code)
        assert_no_cors(answer)
        ok = call(cors_relay, origin, token=token)
        assert ok.status_code == 200
        assert_no_cors(ok)
        denied = call(cors_relay, origin)
        assert denied.status_code == 401
        assert_no_cors(denied)
    # Nothing of those preflights reached the upstream (only the token-bearing GETs).
    assert {r.method for r in upstream.requests} == {"GET"}


def test_without_the_setting_there_is_no_cors_at_all(relay, upstream, token_for):
    answer = preflight(relay, PAGE)
    assert answer.status_code == 401
    assert_no_cors(answer)
    ok = call(relay, PAGE, token=token_for("acme"))
    assert ok.status_code == 200
    assert_no_cors(ok)
    assert "vary" not in ok.headers


def test_authz_up_and_envoy_config_render_the_setting(start_up, upstream):
    running = start_up({"AUTHZ_CORS_ORIGINS": PAGE})
    relay_url = running.api_base.removesuffix("/api/openai/v1")
    answer = httpx.request("OPTIONS", running.api_base + "/models", timeout=10, headers={
        "origin": PAGE, "access-control-request-method": "GET"})
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == PAGE
    assert httpx.get(relay_url + "/elsewhere", headers={"origin": PAGE}, timeout=10).headers[
        "access-control-allow-origin"] == PAGE
    assert upstream.requests == []


def test_envoy_config_command_takes_the_setting_and_refuses_a_bad_one():
    env = {"AUTHZ_FIREBASE_PROJECT_ID": "demo-relay", "AUTHZ_CORS_ORIGINS": PAGE}
    rendered = authz("envoy-config", env=env)
    assert rendered.returncode == 0, rendered.stderr
    assert f'exact: "{PAGE}"' in rendered.stdout
    refused = authz("envoy-config", env={**env, "AUTHZ_CORS_ORIGINS": "https://*.example.com"})
    assert refused.returncode == 2
    assert "AUTHZ_CORS_ORIGINS" in refused.stderr
    # The service refuses to start on it too: one setting, checked once, everywhere.
    serve = authz("serve", env={**env, "AUTHZ_CORS_ORIGINS": PAGE + "/app"})
    assert serve.returncode == 2
    assert "AUTHZ_CORS_ORIGINS" in serve.stderr
