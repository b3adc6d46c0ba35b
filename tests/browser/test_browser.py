"""The main use case, proven in a real browser: a web page signs in with the Firebase JS
SDK, calls the relay from its own origin with fetch and with the official openai JS SDK,
streams, and reads the relay's errors; a page on an origin not listed is blocked by the
browser itself. Chromium headless, the Auth Emulator, Envoy, authz, OpenBao and the
TLS stand-in for OpenAI are all real and all on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

from authz.stack.cors import ALLOW_HEADERS
from tests.browser.conftest import BROWSER_MARKS
from tests.integration.conftest import TENANTS
from tests.support.authz_cli import authz_json

pytestmark = BROWSER_MARKS

ACME_KEY = next(t.api_key for t in TENANTS if t.client_id == "acme")
INTERVAL_MS = 250
GREETING = "Hello from the fake upstream"


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def assert_spread(times: list[float], interval_ms: float) -> None:
    """Sent interval_ms apart, they reached the page about that far apart: one by one,
    not all at the end."""
    spacing = gaps(times)
    assert spacing, times
    assert all(gap > interval_ms * 0.6 for gap in spacing), spacing
    assert times[-1] - times[0] > interval_ms * 0.8 * len(spacing), times


def test_sign_in_then_stream_sse_through_readable_stream(listed_page, signed_in, upstream,
                                                          page_servers):
    result = listed_page.call(
        "streamWithFetch", f"/api/openai/v1/test/stream?chunks=5&interval_ms={INTERVAL_MS}",
        signed_in)
    assert result["status"] == 200
    assert result["contentType"].startswith("text/event-stream")
    events = result["events"]
    assert [json.loads(e["data"]) for e in events] == [{"i": i} for i in range(5)]
    arrivals = [e["at"] for e in events]
    print(f"\nSSE in the page: headers at {result['headersAt']:.0f} ms, events at "
          f"{[round(t) for t in arrivals]} ms, gaps {[round(g) for g in gaps(arrivals)]} ms "
          f"({result['reads']} reads)")
    assert arrivals[0] < 1000  # the first event is not held back
    assert result["reads"] >= 5
    assert_spread(arrivals, INTERVAL_MS)
    # The emulator token got the page's user to tenant acme's key, upstream.
    [received] = upstream.requests
    assert received.header("authorization") == f"Bearer {ACME_KEY}"
    # Everything the page loaded came from loopback: nothing from the internet.
    loaded = listed_page.driver.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)"
        ".concat([location.href])")
    assert {urlsplit(url).hostname for url in loaded} == {"127.0.0.1"}, loaded


def test_openai_sdk_chat_completion_in_the_page(listed_page, signed_in, upstream):
    result = listed_page.call("sdkChat", signed_in)
    assert result["text"] == GREETING
    assert result["id"].startswith("chatcmpl-")
    [received] = upstream.requests
    assert (received.method, received.path) == ("POST", "/v1/chat/completions")
    assert received.header("authorization") == f"Bearer {ACME_KEY}"
    # The SDK's own headers got through the preflight and reached the upstream.
    assert received.header("x-stainless-lang") == "js"
    assert (received.header("x-stainless-runtime") or "").startswith("browser:")


def test_openai_sdk_streamed_chat_completion_in_the_page(listed_page, signed_in):
    result = listed_page.call("sdkChatStream", signed_in, INTERVAL_MS)
    assert result["text"] == GREETING
    arrivals = result["arrivals"]
    print(f"\nSDK chat stream in the page: chunks at {[round(t) for t in arrivals]} ms")
    assert len(arrivals) >= 5
    assert_spread(arrivals[:5], INTERVAL_MS)


def test_openai_sdk_responses_stream_in_the_page(listed_page, signed_in):
    events = listed_page.call("sdkResponsesStream", signed_in, INTERVAL_MS)["events"]
    types = [e["type"] for e in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(e["delta"] for e in deltas) == GREETING
    assert_spread([e["at"] for e in deltas], INTERVAL_MS)


def test_relay_errors_reach_a_listed_page_readable(listed_page, signed_in):
    ok = listed_page.call("fetchJson", "/api/openai/v1/models", signed_in)
    assert ok["status"] == 200
    # Exposed by the relay, so the page may read them (otherwise the browser hides them).
    assert ok["requestId"]
    assert ok["processingMs"] is not None

    no_token = listed_page.call("fetchJson", "/api/openai/v1/models", None)
    assert (no_token["status"], no_token["body"]) == (401, {"error": "Authentication failed"})
    bad_token = listed_page.call("fetchJson", "/api/openai/v1/chat/completions", "not-a-token",
                                 "POST", {"model": "gpt-4o-mini", "messages": []})
    assert (bad_token["status"], bad_token["body"]) == (401, {"error": "Authentication failed"})

    not_api = listed_page.call("fetchJson", "/elsewhere", signed_in)
    assert (not_api["status"], not_api["body"]) == (404, {"error": "Not found"})
    upstream_404 = listed_page.call("fetchJson", "/api/openai/v1/no/such/endpoint", signed_in)
    assert upstream_404["status"] == 404
    assert upstream_404["body"]["error"]["type"] == "invalid_request_error"

    sdk_error = listed_page.call("sdkError", "not-a-token")
    assert (sdk_error["name"], sdk_error["status"]) == ("AuthenticationError", 401)


def test_a_page_on_an_unlisted_origin_is_blocked_by_the_browser(open_page, page_servers,
                                                                 signed_in, upstream):
    page = open_page(page_servers[1].origin)
    for path in ("/api/openai/v1/models", "/api/openai/v1/test/stream?chunks=1"):
        outcome = page.call("fetchOutcome", path, signed_in)
        assert outcome.get("errorName") == "TypeError", outcome
    sdk_error = page.call("sdkError", signed_in)
    assert sdk_error["name"] == "APIConnectionError", sdk_error
    # The preflight failed, so the calls themselves were never sent.
    assert upstream.requests == []


def test_every_header_the_sdk_sends_is_allowed_by_the_preflight(node_modules: Path):
    """Read from the installed openai SDK: a header it adds that the relay's preflight
    does not allow would make every browser call fail before it starts."""
    sent: set[str] = set()
    for source in (node_modules / "openai").rglob("*.mjs"):
        if "_vendor" in source.parts:
            continue
        sent |= {m.lower() for m in re.findall(r"['\"](x-stainless-[a-z-]+)['\"]",
                                               source.read_text(), re.I)}
    assert len(sent) >= 8, sent
    assert sent <= set(ALLOW_HEADERS), sorted(sent - set(ALLOW_HEADERS))


def test_governance_refusals_reach_a_listed_page_readable(
        open_page, page_servers, emulator, firebase, vault, upstream):
    """403 and 429 (with its Retry-After, exposed by CORS) are readable in the page, and
    nothing refused reaches the upstream."""
    vault.put_tenant("browser-limited", "sk-browser-limited-0123456789", policy={
        "endpoints": "inference", "limits": {"user_requests_per_minute": 2}})
    page = open_page(page_servers[0].origin)
    email, password = "limited-user@example.com", "correct-horse-battery"
    user = page.call("signUp", email, password)
    authz_json("users", "assign", user["uid"], "browser-limited", env={
        "FIREBASE_AUTH_EMULATOR_HOST": emulator.host,
        "AUTHZ_FIREBASE_PROJECT_ID": firebase.project_id})
    token = page.call("signIn", email, password)

    refused = page.call("fetchJson", "/api/openai/v1/files", token)
    assert (refused["status"], refused["body"]) == (403, {"error": "Endpoint not allowed"})
    assert upstream.requests == []
    # The refusal spent nothing: two requests fit the minute, the third is refused.
    statuses = [page.call("fetchJson", "/api/openai/v1/models", token)["status"]
                for _ in range(2)]
    assert statuses == [200, 200]
    limited = page.call("fetchJson", "/api/openai/v1/models", token)
    assert (limited["status"], limited["body"]) == (
        429, {"error": "Rate limit exceeded", "details": "user_requests_per_minute"})
    assert limited["retryAfter"] is not None
    assert 1 <= int(limited["retryAfter"]) <= 60
    assert len(upstream.requests) == 2
