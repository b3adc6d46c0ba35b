"""AUTHZ_FAST_PATH=on against the real parts: Envoy verifies Firebase and OIDC tokens and
injects the tenant's key (its Lua filter) from the config the authz service pushes over xDS; what
it cannot decide goes to ext_authz in the same pass. The contract must not change.

Which path answered is read from Envoy's own counters: `ext_authz.disabled` counts the
requests the fast path decided, `ext_authz.ok`/`denied` those the service decided.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
import urllib.request
from collections.abc import Iterator

import httpx2 as httpx
import openai
import pytest

from tests.integration.conftest import oidc_env, relay_env
from tests.support.authz_cli import authz, authz_json, seconds_until
from tests.support.relay import RelayStack

pytestmark = pytest.mark.integration

AUTH_FAILED = {"error": "Authentication failed"}
CLIENT_ID_NOT_FOUND = {"error": "Client ID not found"}
KEY_NOT_FOUND = {"error": "OpenAI API key not found"}
PUSH_DEADLINE_S = 2.0
NOW = time.time()
HOSTILE = {
    "cookie": "session=abc",
    "proxy-authorization": "Basic eDp5",
    "x-api-key": "sk-client-own-key",
    "x-client-id": "globex",
    "x-tenant-id": "globex",
    "x-relay-client-id": "globex",
    "x-forwarded-for": "203.0.113.9",
    "x-forwarded-host": "evil.example",
    "forwarded": "for=203.0.113.9",
    "x-real-ip": "203.0.113.9",
    "x-envoy-original-path": "/admin",
    "openai-organization": "org-client-chosen",
    "openai-project": "proj-client-chosen",
}
FORBIDDEN_UPSTREAM = set(HOSTILE) - {"openai-organization", "openai-project"}


def envoy_counters(relay: RelayStack) -> dict[str, int]:
    stats = httpx.get(f"{relay.admin_url}/stats?format=json", timeout=5).json()["stats"]
    return {s["name"]: s["value"] for s in stats if isinstance(s.get("value"), int)}


class Paths:
    """Counts which path decided the requests made inside a `with` block."""

    def __init__(self, relay: RelayStack) -> None:
        self.relay = relay
        self.fast = self.authz = 0

    def __enter__(self) -> Paths:
        self._before = envoy_counters(self.relay)
        return self

    def __exit__(self, *exc: object) -> None:
        after = envoy_counters(self.relay)

        def delta(name: str) -> int:
            key = f"http.relay.ext_authz.{name}"
            return after[key] - self._before[key]

        self.fast = delta("disabled")
        self.authz = delta("ok") + delta("denied") + delta("error")


@pytest.fixture(scope="module")
def fast_relay(pki, firebase, vault, fake_openai, tenants, tmp_path_factory
               ) -> Iterator[RelayStack]:
    env = {**relay_env(pki, firebase, vault, fake_openai), "AUTHZ_FAST_PATH": "on",
           # The ext_authz path's own key cache must not hide what the push does.
           "AUTHZ_KEY_CACHE_TTL": "1s", "AUTHZ_KEY_NEGATIVE_TTL": "0.5s"}
    stack = RelayStack(env, tmp_path_factory.mktemp("fast-relay")).start()
    try:
        yield stack
    finally:
        stack.stop()


def get(relay: RelayStack, headers: dict[str, str], path: str = "/models") -> httpx.Response:
    with httpx.Client(timeout=20) as client:
        return client.get(relay.api_base + path, headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def assert_denied(response: httpx.Response, upstream, status: int, body: dict[str, str]
                  ) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == body
    assert "server" not in response.headers
    assert not any(name.startswith("x-envoy") for name in response.headers)
    assert upstream.requests == []


def test_a_firebase_token_of_a_plain_tenant_is_served_by_envoy_alone(
        fast_relay, upstream, token_for, tenants):
    with Paths(fast_relay) as paths:
        response = get(fast_relay, bearer(token_for("acme")))
    assert response.status_code == 200
    assert (paths.fast, paths.authz) == (1, 0)
    [received] = upstream.requests
    assert received.header_values("authorization") == [f"Bearer {tenants['acme'].api_key}"]
    # The access log names the tenant as on the ext_authz path.
    line = seconds_until(lambda: '"client_id":"acme"' in fast_relay.logs()["envoy"], 5)
    assert line >= 0


def test_a_request_envoy_served_alone_is_metered_for_its_tenant_and_user(
        fast_relay, upstream, token_for):
    """Usage is counted for the fast path too: the access log entry carries the tenant
    and user the Lua filter decided, and the service settles it like any other."""
    url = f"http://127.0.0.1:{fast_relay.metrics_port}/admin/usage?client_id=acme&user=fast-u"
    with Paths(fast_relay) as paths:
        response = get(fast_relay, bearer(token_for("acme", uid="fast-u")))
    assert response.status_code == 200
    assert (paths.fast, paths.authz) == (1, 0)
    deadline = time.monotonic() + 5
    while True:
        with urllib.request.urlopen(url, timeout=5) as answer:
            report = json.load(answer)
        if report["users"].get("fast-u", {}).get("requests") == 1:
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.05)


@pytest.mark.parametrize(
    "mint_kwargs",
    [
        {"variant": "none"},
        {"variant": "hs256_confusion"},
        {"variant": "unknown_signer"},
        {"variant": "tampered"},
        {"kid": "unknown-kid"},
        {"remove_header": ["kid"]},
        {"header": {"kid": ""}},
        {"now": NOW - 7200},
        {"iat": int(NOW + 3600)},
        {"auth_time": int(NOW + 3600)},
        {"remove": ["auth_time"]},
        {"remove": ["iat"]},
        {"iat": "1700000000"},
        {"nbf": int(NOW + 3600)},
        {"aud": "other-project"},
        {"aud": ["demo-relay", "other"]},
        {"iss": "https://securetoken.google.com/other-project"},
        {"sub": ""},
        {"sub": "u" * 129},
        {"sub": 12345},
    ],
    ids=["alg-none", "hs256-key-confusion", "unknown-signer", "tampered", "unknown-kid",
         "no-kid", "empty-kid", "expired", "iat-future", "auth-time-future",
         "no-auth-time", "no-iat", "iat-string", "nbf-future", "wrong-aud", "aud-list",
         "wrong-iss", "empty-sub", "sub-129", "sub-number"],
)
def test_tokens_the_service_refuses_are_refused_alike(fast_relay, upstream, token_for,
                                                      mint_kwargs):
    token = token_for("acme", **mint_kwargs)
    with Paths(fast_relay) as paths:
        response = get(fast_relay, bearer(token))
    assert_denied(response, upstream, 401, AUTH_FAILED)
    # Envoy did not let it through on its own: the service said no.
    assert (paths.fast, paths.authz) == (0, 1)


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Basic dXNlcjpwYXNz", "Bearer not-a-jwt", "Bearer a.b.c",
    "Bearer " + "A" * 20_000])
def test_missing_or_malformed_credentials(fast_relay, upstream, authorization):
    headers = {} if authorization is None else {"authorization": authorization}
    assert_denied(get(fast_relay, headers), upstream, 401, AUTH_FAILED)


def test_a_token_in_the_query_string_is_not_a_credential(fast_relay, upstream, token_for):
    # Only the Authorization header carries a token, for the fast path as for the service.
    response = get(fast_relay, {}, path=f"/models?access_token={token_for('acme')}")
    assert_denied(response, upstream, 401, AUTH_FAILED)


def test_sub_of_128_characters_and_lowercase_bearer_are_accepted(fast_relay, upstream,
                                                                 token_for, tenants):
    token = token_for("acme", uid="u" * 128)
    with Paths(fast_relay) as paths:
        ok = get(fast_relay, bearer(token))
        lower = get(fast_relay, {"authorization": f"bearer {token}"})
    assert (ok.status_code, lower.status_code) == (200, 200)
    # The scheme is case-insensitive, for the service and for Envoy alike.
    assert (paths.fast, paths.authz) == (2, 0)
    assert [r.header("authorization") for r in upstream.requests] == [
        f"Bearer {tenants['acme'].api_key}"] * 2


def test_a_subject_the_service_counts_another_way_is_left_to_it(fast_relay, upstream,
                                                                token_for):
    """The service counts a user by the subject less a "client-key:" prefix: the fast
    path does not serve such a subject, so both paths meter the same user."""
    with Paths(fast_relay) as paths:
        response = get(fast_relay, bearer(token_for("acme", uid="client-key:someone")))
    assert response.status_code == 200
    assert (paths.fast, paths.authz) == (0, 1)


@pytest.mark.parametrize("client_id_claims", [
    {}, {"clientId": "../globex"}, {"clientId": 7}, {"clientId": ["acme"]},
    {"clientId": "bad/../x", "firebase": {"tenant": "acme"}},
], ids=["none", "dotdot", "number", "list", "invalid-first-claim-does-not-fall-through"])
def test_client_id_not_found(fast_relay, upstream, firebase, client_id_claims):
    token = firebase.mint(None, "user-1", None, **client_id_claims)
    assert_denied(get(fast_relay, bearer(token)), upstream, 500, CLIENT_ID_NOT_FOUND)


def test_the_second_claim_names_the_tenant_when_the_first_is_absent(fast_relay, upstream,
                                                                    firebase, tenants):
    token = firebase.mint(None, "user-1", None, "globex")
    with Paths(fast_relay) as paths:
        assert get(fast_relay, bearer(token)).status_code == 200
    assert paths.fast == 1
    [received] = upstream.requests
    assert received.header("authorization") == f"Bearer {tenants['globex'].api_key}"


def test_unknown_tenant(fast_relay, upstream, token_for):
    assert_denied(get(fast_relay, bearer(token_for("nobody-here"))), upstream, 500,
                  KEY_NOT_FOUND)


def test_headers_are_stripped_and_a_client_sent_tenant_header_selects_nothing(
        fast_relay, upstream, token_for, tenants):
    token = token_for("acme")
    with Paths(fast_relay) as paths:
        response = get(fast_relay, {**HOSTILE, **bearer(token), "x-keep-me": "yes"})
    assert response.status_code == 200
    assert paths.fast == 1
    [received] = upstream.requests
    names = received.header_names()
    # acme's key, never globex's, whatever the client says its tenant is.
    assert received.header_values("authorization") == [f"Bearer {tenants['acme'].api_key}"]
    assert tenants["globex"].api_key not in repr(received.headers)
    assert not names & FORBIDDEN_UPSTREAM
    assert not [n for n in names if n.startswith(("x-forwarded-", "x-envoy-", "x-relay-"))]
    assert "openai-organization" not in names
    assert "openai-project" not in names
    assert received.header("x-keep-me") == "yes"
    assert token not in repr(received.headers)
    assert "set-cookie" not in response.headers
    assert response.headers.get("server") != "envoy"


def test_tenant_organization_and_project_replace_the_clients(fast_relay, upstream,
                                                             token_for, tenants):
    response = get(fast_relay, {**HOSTILE, **bearer(token_for("globex"))})
    assert response.status_code == 200
    [received] = upstream.requests
    assert received.header_values("openai-organization") == ["org-globex"]
    assert received.header_values("openai-project") == ["proj-globex"]
    assert received.header_values("authorization") == [f"Bearer {tenants['globex'].api_key}"]


def sdk_client(relay: RelayStack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=relay.api_base, api_key=key, max_retries=0,
                         http_client=httpx.Client(timeout=30))


def test_streaming_with_the_openai_sdk_is_decided_by_the_service_and_metered(
        fast_relay, upstream, token_for, tenants):
    """A chat completion that asks for a stream goes to the service, which alone decides
    whether it must be asked for usage: the client's stream stays what it asked for (no
    usage-only chunk), and its tokens are counted. A plain call, and a Responses stream
    (which always ends with its usage), stay in Envoy."""
    client = sdk_client(fast_relay, token_for("acme", uid="streamer"))
    with Paths(fast_relay) as paths:
        chunks = list(client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True))
        with client.responses.create(model="gpt-4o-mini", input="hi", stream=True) as events:
            kinds = [event for event in events]
        plain = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert chunks
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert kinds[-1].type == "response.completed"
    assert plain.choices[0].message.content
    assert (paths.fast, paths.authz) == (2, 1)
    assert {r.header("authorization") for r in upstream.requests} == {
        f"Bearer {tenants['acme'].api_key}"}
    assert plain.usage is not None
    assert kinds[-1].response.usage is not None
    seen_by_client = plain.usage.total_tokens + kinds[-1].response.usage.total_tokens
    url = f"http://127.0.0.1:{fast_relay.metrics_port}/admin/usage?client_id=acme&user=streamer"
    deadline = time.monotonic() + 5
    while True:
        with urllib.request.urlopen(url, timeout=5) as answer:
            mine = json.load(answer)["users"].get("streamer", {})
        if mine.get("requests") == 3:
            break
        assert time.monotonic() < deadline, mine
        time.sleep(0.05)
    # The chat stream's own usage, which its client never saw, is in the count too.
    assert mine["total_tokens"] > seen_by_client


def test_envoys_own_replies_stay_json(fast_relay, token_for):
    with httpx.Client(timeout=20) as client:
        outside = client.get(fast_relay.url + "/elsewhere", headers=bearer(token_for("acme")))
        escaped = client.get(fast_relay.url + "/api/openai/v1%2Fmodels")
    assert (outside.status_code, outside.json()) == (404, {"error": "Not found"})
    assert (escaped.status_code, escaped.json()) == (400, {"error": "Bad request"})


def test_client_keys_still_work_through_ext_authz(fast_relay, vault, upstream, tenants):
    issued = authz_json("keys", "issue", "acme", "--name", "fast-path", env=vault.env)
    try:
        with Paths(fast_relay) as paths:
            reply = sdk_client(fast_relay, issued["key"]).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        assert (paths.fast, paths.authz) == (0, 1)
        [received] = upstream.requests
        assert received.header("authorization") == f"Bearer {tenants['acme'].api_key}"
    finally:
        authz("keys", "revoke", "acme", issued["key_id"], env=vault.env)


def test_a_tenant_with_a_per_request_limit_stays_on_ext_authz(fast_relay, vault, upstream,
                                                                token_for):
    """Request-rate and concurrency limits need a count per request: the service's."""
    vault.put_tenant("counted", "sk-counted-0123456789abcdef",
                     extra={"policy": {"limits": {"user_requests_per_minute": 1000}}})
    try:
        # Long enough for a push that (wrongly) included it to land.
        time.sleep(PUSH_DEADLINE_S)  # the absence of a push cannot be awaited
        with Paths(fast_relay) as paths:
            assert get(fast_relay, bearer(token_for("counted"))).status_code == 200
        assert (paths.fast, paths.authz) == (0, 1)
    finally:
        vault.delete_tenant("counted")


GOVERNED = {"endpoints": ["GET /v1/models", "POST /v1/embeddings", "POST /v1/chat/completions",
                          "GET /v1/models/*"],
            "models": ["text-embedding-3-*", "gpt-4o-mini"]}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def send(relay: RelayStack, token: str, method: str, path: str,
         body: bytes | None = None) -> httpx.Response:
    headers = {**bearer(token), "content-type": "application/json"}
    with httpx.Client(timeout=20) as client:
        return client.request(method, relay.api_base + path, headers=headers, content=body)


@pytest.fixture
def governed(fast_relay, vault, upstream, token_for) -> Iterator[str]:
    """A tenant with endpoint rules and a model allow-list, once Envoy serves it."""
    vault.put_tenant("governed", "sk-governed-0123456789abcd", extra={"policy": GOVERNED})
    token = token_for("governed")
    try:
        seconds_until(lambda: fast_served_key(fast_relay, upstream, token) is not None,
                      PUSH_DEADLINE_S)
        upstream.clear()
        yield token
    finally:
        vault.delete_tenant("governed")


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/models", None),
    ("POST", "/embeddings", b'{"model": "text-embedding-3-small", "input": "hi"}'),
    ("POST", "/chat/completions", json.dumps(CHAT).encode()),
    ("POST", "/chat/completions", json.dumps({**CHAT, "metadata": {"model": "gpt-4o"}},
                                             ensure_ascii=False).encode()),
    ("GET", "/models/gpt-4o-mini", None),
    # Only a chat completion can need usage asked for: "stream" elsewhere is just text.
    ("POST", "/embeddings", b'{"model": "text-embedding-3-small", "input": "a stream"}'),
])
def test_what_the_policy_allows_envoy_serves_alone(fast_relay, upstream, governed, method,
                                                  path, body):
    with Paths(fast_relay) as paths:
        response = send(fast_relay, governed, method, path, body)
    assert response.status_code == 200, response.text
    assert (paths.fast, paths.authz) == (1, 0)
    assert len(upstream.requests) == 1


def test_a_plain_tenants_post_is_read_only_when_it_is_a_chat_completion(fast_relay,
                                                                        upstream, token_for):
    token = token_for("acme")
    with Paths(fast_relay) as paths:
        response = send(fast_relay, token, "POST", "/embeddings",
                        b'{"model": "text-embedding-3-small", "input": "stream"}')
    assert response.status_code == 200
    assert (paths.fast, paths.authz) == (1, 0)
    with Paths(fast_relay) as paths:
        response = send(fast_relay, token, "POST", "/chat/%63ompletions",
                        json.dumps({**CHAT, "stream": False}).encode())
    assert response.status_code == 200
    assert (paths.fast, paths.authz) == (0, 1)  # might be a chat completion: the service


@pytest.mark.parametrize(("method", "path", "body", "status", "error"), [
    ("GET", "/files", None, 403, "Endpoint not allowed"),
    ("DELETE", "/models/gpt-4o-mini", None, 403, "Endpoint not allowed"),
    ("POST", "/responses", json.dumps(CHAT).encode(), 403, "Endpoint not allowed"),
    ("GET", "/models/../files", None, 403, "Endpoint not allowed"),
    ("POST", "/chat/completions", json.dumps({**CHAT, "model": "gpt-4o"}).encode(), 403,
     "Model not allowed"),
    ("POST", "/embeddings", b'{"input": "hi"}', 403, "Model not allowed"),
    ("POST", "/embeddings", b'{"model": "text-embedding-3-small", "model": "gpt-4o"}', 400,
     "Bad request"),
    ("POST", "/embeddings", b'{"model": "text-embedding-3-small", "x": NaN}', 400,
     "Bad request"),
    ("POST", "/embeddings", b'{"model": "text-embedding-3-small"', 400, "Bad request"),
    ("POST", "/embeddings", b'{"model": "text-embedding-3-small", "x": "\xed\xa0\x80"}',
     400, "Bad request"),
])
def test_what_the_policy_refuses_the_service_answers(fast_relay, upstream, governed, method,
                                                     path, body, status, error):
    """Envoy only proves requests allowed: a refusal is the service's, with its body."""
    with Paths(fast_relay) as paths:
        response = send(fast_relay, governed, method, path, body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert (paths.fast, paths.authz) == (0, 1)
    assert upstream.requests == []


def test_a_used_up_token_budget_reaches_envoy_within_2s(fast_relay, vault, upstream,
                                                       token_for):
    vault.put_tenant("budgeted", "sk-budgeted-0123456789abcd",
                     extra={"policy": {"limits": {"user_tokens_per_day": 40}}})
    spender, saver = token_for("budgeted", uid="spender"), token_for("budgeted", uid="saver")
    url = (f"http://127.0.0.1:{fast_relay.metrics_port}/admin/usage?client_id=budgeted"
           "&user=spender")

    def used() -> int:
        with urllib.request.urlopen(url, timeout=5) as answer:
            report = json.load(answer)
        return int(report["users"].get("spender", {}).get("total_tokens", 0))

    try:
        seconds_until(lambda: fast_served_key(fast_relay, upstream, spender) is not None,
                      PUSH_DEADLINE_S)
        for _ in range(20):
            before = used()
            if before >= 40:
                break
            with Paths(fast_relay) as paths:
                response = send(fast_relay, spender, "POST", "/chat/completions",
                                json.dumps(CHAT).encode())
            assert response.status_code == 200, response.text
            assert paths.fast == 1  # under budget: Envoy alone, reserving nothing
            reported = int(response.json()["usage"]["total_tokens"])
            assert reported > 0
            seconds_until(lambda b=before + reported: used() == b, 5)  # metered exactly
        else:
            pytest.fail("the budget was never used up")
        # From the usage that used it up reaching the service, to Envoy handing the
        # user back to the service: the budget's state is pushed within 2 s.
        assert seconds_until(lambda: "spender" in fast_relay.fast_path_used_up("budgeted"),
                             PUSH_DEADLINE_S) <= PUSH_DEADLINE_S
        upstream.clear()
        with Paths(fast_relay) as paths:
            refused = send(fast_relay, spender, "POST", "/chat/completions",
                           json.dumps(CHAT).encode())
        assert refused.status_code == 429
        assert refused.json() == {"error": "Token budget exhausted",
                                  "details": "user_tokens_per_day"}
        assert (paths.fast, paths.authz) == (0, 1)
        assert upstream.requests == []
        # Another user of the tenant has a budget of their own, still served by Envoy.
        with Paths(fast_relay) as paths:
            assert send(fast_relay, saver, "GET", "/models").status_code == 200
        assert paths.fast == 1
    finally:
        vault.delete_tenant("budgeted")


def fast_served_key(relay: RelayStack, upstream, token: str) -> str | None:
    """The key the upstream got for one request the fast path served (None otherwise)."""
    upstream.clear()
    with Paths(relay) as paths:
        response = get(relay, bearer(token))
    if response.status_code != 200 or paths.fast != 1:
        return None
    return upstream.requests[-1].header("authorization")


def test_a_new_tenant_and_a_rotation_reach_envoy_within_2s(fast_relay, vault, upstream,
                                                          token_for):
    token = token_for("rotating")
    vault.put_tenant("rotating", "sk-rotating-first-000000000")
    try:
        took = seconds_until(lambda: fast_served_key(fast_relay, upstream, token)
                             == "Bearer sk-rotating-first-000000000", PUSH_DEADLINE_S)
        vault.put_tenant("rotating", "sk-rotating-second-11111111")
        took = seconds_until(lambda: fast_served_key(fast_relay, upstream, token)
                             == "Bearer sk-rotating-second-11111111", PUSH_DEADLINE_S)
        assert took <= PUSH_DEADLINE_S
    finally:
        vault.delete_tenant("rotating")


def test_deletion_and_cache_invalidate_reach_envoy_within_2s(fast_relay, vault, upstream,
                                                             token_for):
    token = token_for("leaving")
    vault.put_tenant("leaving", "sk-leaving-0000000000000000")
    seconds_until(lambda: fast_served_key(fast_relay, upstream, token) is not None,
                  PUSH_DEADLINE_S)
    vault.delete_tenant("leaving")
    result = authz("cache", "invalidate", "leaving", "--admin",
                   fast_relay.metrics_url.removeprefix("http://").removesuffix("/metrics"))
    assert result.returncode == 0, result.stderr

    def refused() -> bool:
        upstream.clear()
        response = get(fast_relay, bearer(token))
        return response.status_code == 500 and response.json() == KEY_NOT_FOUND

    seconds_until(refused, PUSH_DEADLINE_S)
    assert upstream.requests == []


def test_no_key_or_token_in_any_log_or_client_answer(fast_relay, token_for, tenants):
    token = token_for("acme")
    answers = [get(fast_relay, bearer(token)), get(fast_relay, bearer(token + "x")),
               get(fast_relay, bearer(token_for("nobody-here")))]
    texts = [r.text + repr(r.headers) for r in answers]
    logs = fast_relay.logs()
    for tenant in tenants.values():
        for text in (*texts, logs["envoy"], logs["authz"]):
            assert tenant.api_key not in text
    assert token not in logs["envoy"] + logs["authz"]


def test_keys_inside_envoy_are_readable_on_the_loopback_admin_only(fast_relay, tenants):
    # Where the keys live (docs/fast-path.md): the Lua extension config, which Envoy's
    # config_dump shows in full. So the admin interface must stay on loopback, as the
    # renderer enforces for every deployment.
    dump = httpx.get(f"{fast_relay.admin_url}/config_dump?resource=ecds_filters",
                     timeout=5).text
    assert tenants["acme"].api_key in dump
    config = (fast_relay.work_dir / "envoy.yaml").read_text()
    admin = re.search(r"^admin:\n.*?socket_address: \{ address: (\S+), port_value: (\d+)",
                      config, re.MULTILINE | re.DOTALL)
    assert admin is not None
    assert ipaddress.ip_address(admin.group(1).strip('"')).is_loopback
    assert int(admin.group(2)) == fast_relay.admin_port


def test_unverifiable_tokens_cost_one_check_each_not_two(fast_relay, upstream, token_for):
    with Paths(fast_relay) as paths:
        get(fast_relay, bearer(token_for("acme", variant="tampered")))
    assert paths.authz == 1


def test_config_is_json_serialisable_for_the_access_log(fast_relay):
    # The access log lines the fast path writes are valid JSON with the usual fields.
    lines = [json.loads(line) for line in fast_relay.logs()["envoy"].splitlines()
             if line.startswith("{")]
    assert lines
    assert all({"status", "client_id", "token_type"} <= set(line) for line in lines)


def test_a_remembered_token_still_expires(fast_relay, upstream, token_for):
    # Expired 27 s ago: still inside the 30 s clock skew for about 2 s more. Served by
    # the fast path (and so remembered by it), then refused once the skew runs out.
    token = token_for("acme", exp=int(time.time()) - 27)
    with Paths(fast_relay) as paths:
        assert get(fast_relay, bearer(token)).status_code == 200
    assert paths.fast == 1

    def refused() -> bool:
        return get(fast_relay, bearer(token)).status_code == 401

    seconds_until(refused, timeout=6)
    upstream.clear()
    assert_denied(get(fast_relay, bearer(token)), upstream, 401, AUTH_FAILED)


def test_authz_up_runs_the_fast_path(start_up, upstream, token_for, tmp_path):
    logs = tmp_path / "up-logs"
    running = start_up({"AUTHZ_FAST_PATH": "on", "OPENAI_API_KEY": "sk-demo-fast-0123456789"},
                       "--demo", "--logs", str(logs))
    config = (logs / "envoy.yaml").read_text()
    admin = re.search(r"^admin:\n.*?port_value: (\d+)", config, re.MULTILINE | re.DOTALL)
    assert admin is not None
    stack = RelayStack({}, logs, admin_port=int(admin.group(1)))
    stack.wait_for_fast_path()

    def served_by_envoy() -> bool:
        # The demo tenant is stored just before the banner: within a push of it, Envoy
        # serves it alone (until then ext_authz does).
        with Paths(stack) as paths, httpx.Client(timeout=20) as client:
            response = client.get(running.api_base + "/models",
                                  headers=bearer(token_for("demo")))
        assert response.status_code == 200
        return paths.fast == 1

    seconds_until(served_by_envoy, PUSH_DEADLINE_S)
    assert upstream.requests[-1].header("authorization") == "Bearer sk-demo-fast-0123456789"


def test_with_authz_down_envoy_stops_deciding_alone_when_the_lease_runs_out(
        make_relay, upstream, token_for):
    relay = make_relay({"AUTHZ_FAST_PATH": "on"})
    token = token_for("acme")
    with Paths(relay) as paths:
        assert get(relay, bearer(token)).status_code == 200
    assert paths.fast == 1
    relay.authz.stop()
    # Lease 5 s, renewed every 10 s: at most 15 s of serving without the control plane.
    took = seconds_until(lambda: get(relay, bearer(token)).status_code == 500, timeout=17)
    assert took <= 15.5
    upstream.clear()
    response = get(relay, bearer(token))
    assert response.status_code == 500
    assert response.json()["error"] == "OpenAI proxy internal error"
    assert upstream.requests == []
    relay.start_authz()  # Envoy reconnects to the control plane: Envoy alone again

    def served_by_envoy() -> bool:
        with Paths(relay) as paths:
            status = get(relay, bearer(token)).status_code
        return status == 200 and paths.fast == 1

    seconds_until(served_by_envoy, timeout=10)


LUA_STATS = "extension_config_discovery.http_filter.relay.fast_path.lua."


def test_a_lease_renewal_keeps_envoys_lua_filter_and_its_token_cache(fast_relay, upstream,
                                                                    token_for):
    """The lease is renewed by sending the same config again (its xDS TTL refreshed):
    Envoy accepts it without rebuilding the filter, so the tokens it verified stay
    remembered instead of being verified again every few seconds."""
    token = token_for("acme")
    assert get(fast_relay, bearer(token)).status_code == 200
    before = envoy_counters(fast_relay)
    seconds_until(lambda: envoy_counters(fast_relay)[LUA_STATS + "update_success"]
                  > before[LUA_STATS + "update_success"], timeout=8)
    after = envoy_counters(fast_relay)
    assert after[LUA_STATS + "config_reload"] == before[LUA_STATS + "config_reload"]
    with Paths(fast_relay) as paths:
        assert get(fast_relay, bearer(token)).status_code == 200
    assert paths.fast == 1


def test_cache_invalidate_empties_envoys_token_cache_within_2s(fast_relay, token_for):
    """`authz cache invalidate` drops the service's verified identities, and with the
    fast path on Envoy's as well: even with Vault unchanged the invalidation is a new
    config, so Envoy builds its Lua filter anew, token cache empty, and verifies the
    token again at its next request."""
    token = token_for("acme")
    assert get(fast_relay, bearer(token)).status_code == 200
    before = envoy_counters(fast_relay)[LUA_STATS + "config_reload"]
    result = authz("cache", "invalidate", "acme", "--admin",
                   fast_relay.metrics_url.removeprefix("http://").removesuffix("/metrics"))
    assert result.returncode == 0, result.stderr
    seconds_until(lambda: envoy_counters(fast_relay)[LUA_STATS + "config_reload"] > before,
                  PUSH_DEADLINE_S)
    with Paths(fast_relay) as paths:
        assert get(fast_relay, bearer(token)).status_code == 200
    assert paths.fast == 1


def test_a_key_with_quotes_and_backslashes_reaches_the_upstream_intact(
        fast_relay, vault, upstream, token_for):
    # The tenant table is Lua source generated from Vault's values: none may break it.
    odd = 'sk-odd"quote\\back]]slash\'s--[[x'
    vault.put_tenant("oddkey", odd, organization='org-"x"')
    token = token_for("oddkey")
    try:
        seconds_until(lambda: fast_served_key(fast_relay, upstream, token) == f"Bearer {odd}",
                      PUSH_DEADLINE_S)
        assert upstream.requests[-1].header("openai-organization") == 'org-"x"'
        # The other tenants are still served: the whole table compiled.
        assert fast_served_key(fast_relay, upstream, token_for("acme")) is not None
    finally:
        vault.delete_tenant("oddkey")


# ------------------------------------------------------------------- OIDC issuers

@pytest.fixture(scope="module")
def oidc_relay(pki, firebase, vault, fake_openai, tenants, oidc_keys, tmp_path_factory
               ) -> Iterator[RelayStack]:
    _, server = oidc_keys
    env = {**relay_env(pki, firebase, vault, fake_openai), "AUTHZ_FAST_PATH": "on",
           **oidc_env(server)}
    stack = RelayStack(env, tmp_path_factory.mktemp("fast-relay-oidc")).start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.mark.parametrize("claims", [
    {"clientId": "acme"}, {"org": {"tenant": "acme"}}, {"aud": ["x", "other-api"],
                                                       "clientId": "acme"},
], ids=["claim", "nested-claim", "aud-list"])
def test_oidc_tokens_are_served_by_envoy_alone(oidc_relay, oidc_keys, upstream, tenants,
                                               token_for, claims):
    keys, _ = oidc_keys
    with Paths(oidc_relay) as paths:
        response = get(oidc_relay, bearer(keys.mint("alice", **claims)))
    assert response.status_code == 200
    assert (paths.fast, paths.authz) == (1, 0)
    assert upstream.requests[-1].header("authorization") == f"Bearer {tenants['acme'].api_key}"
    # Firebase tokens still work beside them.
    assert fast_served_key(oidc_relay, upstream, token_for("acme")) is not None


@pytest.mark.parametrize("mint_kwargs", [
    {"alg": "RS384"},
    {"header": {"kid": None}},
    {"header": {"kid": ""}},
    {"iat": int(NOW + 3600)},
    {"iat": None},
    {"nbf": int(NOW + 3600)},
    {"aud": ["x", "y"]},
    {"aud": "relay"},
    {"sub": ""},
    {"sub": "s" * 256},
    {"variant": "tampered"},
    {"variant": "none"},
], ids=["alg-not-allowed", "no-kid", "empty-kid", "iat-future", "no-iat", "nbf-future",
        "aud-list-without-ours", "wrong-aud", "empty-sub", "sub-256", "tampered", "alg-none"])
def test_oidc_tokens_the_service_refuses_are_refused_alike(oidc_relay, oidc_keys, upstream,
                                                           mint_kwargs):
    keys, _ = oidc_keys
    kwargs = {"sub": "alice", "clientId": "acme", **mint_kwargs}
    token = keys.mint(**kwargs)
    with Paths(oidc_relay) as paths:
        response = get(oidc_relay, bearer(token))
    assert_denied(response, upstream, 401, AUTH_FAILED)
    assert (paths.fast, paths.authz) == (0, 1)


def test_oidc_client_id_rules_match_the_services(oidc_relay, oidc_keys, upstream):
    keys, _ = oidc_keys
    # The first configured claim is present but invalid: no falling through to clientId.
    token = keys.mint("alice", org={"tenant": "../x"}, clientId="acme")
    assert_denied(get(oidc_relay, bearer(token)), upstream, 500, CLIENT_ID_NOT_FOUND)
    token = keys.mint("alice", clientId="nobody-here")
    assert_denied(get(oidc_relay, bearer(token)), upstream, 500, KEY_NOT_FOUND)
