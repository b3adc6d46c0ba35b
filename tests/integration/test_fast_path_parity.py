"""Parity, differentially: the same generated requests sent to a relay with the fast path
off and to one with it on (the same Vault, Firebase certs, OIDC issuer and upstream) get
the same answers, and the upstream receives the same requests from both.

The other suites check each mode against the contract one case at a time; this one
checks the two modes against each other over combinations nobody listed: token shapes
(Firebase and OIDC; valid, refused for each rule, another spelling of the header),
tenants with and without endpoint rules, model allow-lists, a token budget or a request
rate limit, odd paths, methods, bodies (uploads too), content types, HTTP/1.1 and
HTTP/2, and headers a client adds to name a tenant or smuggle a credential. Then the
usage each relay metered, per tenant and user, must be the same too.

A refusal must be the same status and JSON body. A success must be the same status,
the same body apart from the ids and timestamps the fake upstream makes up, and the
upstream must have seen the same method, target, headers and body bytes.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import oidc_env, relay_env
from tests.integration.test_fast_path import CHAT, GOVERNED, HOSTILE, Paths, fast_served_key
from tests.support.authz_cli import seconds_until
from tests.support.oidc import OidcIssuerKeys
from tests.support.relay import RelayStack

pytestmark = pytest.mark.integration

MODELS_ONLY = {"models": ["gpt-4o-mini"]}
# A token budget no test request uses up: Envoy serves the tenant and meters it.
BUDGET = {"limits": {"user_tokens_per_day": 10_000_000, "tenant_tokens_per_day": 10_000_000}}
# A request rate it never reaches: with the fast path on, still only ext_authz serves it.
RATE_LIMITED = {"limits": {"user_requests_per_minute": 100_000}}
PARITY_TENANTS = {"parity-governed": GOVERNED, "parity-models": MODELS_ONLY,
                  "parity-budget": BUDGET, "parity-limited": RATE_LIMITED}
SERVED_BY_ENVOY = ("acme", "globex", "parity-governed", "parity-models", "parity-budget")
CLIENT_IDS = (*SERVED_BY_ENVOY, "parity-limited")
USERS = ("alice", "bob")

BODIES: dict[str, bytes | None] = {
    "none": None,
    "empty": b"",
    "chat": json.dumps(CHAT).encode(),
    "chat-other-model": json.dumps({**CHAT, "model": "gpt-4o"}).encode(),
    "chat-stream": json.dumps({**CHAT, "stream": True}).encode(),
    "chat-stream-usage": json.dumps({**CHAT, "stream": True,
                                     "stream_options": {"include_usage": True}}).encode(),
    "chat-no-stream": json.dumps({**CHAT, "stream": False}).encode(),
    "chat-escaped-model": b'{"model": "gpt-4o-m\\u0069ni", "messages": []}',
    "embeddings": b'{"model": "text-embedding-3-small", "input": "a stream"}',
    "no-model": b'{"input": "hi"}',
    "duplicate-model": b'{"model": "gpt-4o-mini", "model": "gpt-4o"}',
    "nan": b'{"model": "gpt-4o-mini", "x": NaN}',
    "truncated": b'{"model": "gpt-4o-mini"',
    "not-an-object": b'["gpt-4o-mini"]',
    "bad-utf8": b'{"model": "gpt-4o-mini", "x": "\xff"}',
    "multipart": (b'--b0undary\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
                  b'batch\r\n--b0undary\r\nContent-Disposition: form-data; name="file"; '
                  b'filename="a.jsonl"\r\nContent-Type: application/octet-stream\r\n\r\n'
                  b'{"model": "gpt-4o"}\n\r\n--b0undary--\r\n'),
}
MULTIPART = "multipart/form-data; boundary=b0undary"
PATHS = ("/models", "/models/gpt-4o-mini", "/chat/completions", "/embeddings", "/files",
         "/responses", "/chat/%63ompletions", "/models/../files", "/chat/completions?x=1",
         "/Chat/Completions", "/embeddings/", "/models/a%2Fb")
METHODS = ("GET", "POST", "DELETE")
CONTENT_TYPES = ("application/json", "text/plain", MULTIPART, None)
# Valid tokens weigh about as much as all refused kinds together: the cases the fast
# path may serve must come up often, not only its fallback.
TOKEN_KINDS = ("valid",) * 20 + ("lowercase-scheme", "extra-spaces", "expired",
               "future-iat", "future-auth-time", "future-nbf", "string-iat", "wrong-aud",
               "wrong-iss", "empty-sub", "long-sub",
               "client-key-sub", "no-client-id", "unknown-client-id", "numeric-client-id",
               "tampered", "unknown-signer", "alg-none", "hs256", "garbage", "no-header",
               "two-headers") + ("oidc-valid",) * 8 + (
               "oidc-nested-claim", "oidc-aud-list", "oidc-rs384", "oidc-nbf-future",
               "oidc-no-iat", "oidc-bad-first-claim", "oidc-long-sub", "oidc-tampered",
               "oidc-wrong-aud", "oidc-no-kid")

# What the fake upstream makes up per response: not part of what the relay decides.
VOLATILE = re.compile(rb'"(id|item_id|created|created_at|system_fingerprint)":\s*("[^"]*"|\d+)')


# Headers a client may add to name a tenant, smuggle a credential or steer Envoy (those
# test_fast_path.py sends, and a header OpenAI reads that is the client's to choose):
# both paths must strip, replace or keep the same ones.
HOSTILE_HEADERS = (*HOSTILE.items(), ("openai-beta", "assistants=v2"))


@dataclass(frozen=True)
class Case:
    kind: str
    client_id: str
    user: str
    method: str
    path: str
    body: str
    content_type: str | None
    extra: tuple[tuple[str, str], ...]
    http2: bool = False


# Calls an application makes (the upstream answers them 200), half the cases: random
# combinations alone would mostly be refused or unknown to the upstream.
CALLS = (("GET", "/models", "none", "application/json"),
         ("GET", "/models/gpt-4o-mini", "none", "application/json"),
         ("POST", "/chat/completions", "chat", "application/json"),
         ("POST", "/chat/completions", "chat-stream", "application/json"),
         ("POST", "/chat/completions", "chat-no-stream", "application/json"),
         ("POST", "/chat/completions", "chat-other-model", "application/json"),
         ("POST", "/embeddings", "embeddings", "application/json"),
         ("POST", "/responses", "chat", "application/json"),
         # An upload streams past both paths unread (its model is not checked).
         ("POST", "/files", "multipart", MULTIPART))
extras = st.lists(st.sampled_from(HOSTILE_HEADERS), unique=True, max_size=4).map(tuple)
random_cases = st.builds(
    Case, kind=st.sampled_from(TOKEN_KINDS), client_id=st.sampled_from(CLIENT_IDS),
    user=st.sampled_from(USERS), method=st.sampled_from(METHODS),
    path=st.sampled_from(PATHS), body=st.sampled_from(sorted(BODIES)),
    content_type=st.sampled_from(CONTENT_TYPES), extra=extras, http2=st.booleans())
call_cases = st.builds(
    lambda kind, client_id, user, call, extra, http2: Case(kind, client_id, user, *call,
                                                           extra, http2),
    kind=st.sampled_from(TOKEN_KINDS), client_id=st.sampled_from(CLIENT_IDS),
    user=st.sampled_from(USERS), call=st.sampled_from(CALLS), extra=extras,
    http2=st.booleans())
cases = st.one_of(random_cases, call_cases)


def oidc_token(keys: OidcIssuerKeys, case: Case) -> str:
    now = int(time.time())
    cid, user = case.client_id, case.user
    kind = case.kind.removeprefix("oidc-")
    claims: dict[str, Any] = {
        "valid": {"clientId": cid},
        "nested-claim": {"org": {"tenant": cid}},
        "aud-list": {"aud": ["x", "other-api"], "clientId": cid},
        "rs384": {"alg": "RS384", "clientId": cid},
        "nbf-future": {"nbf": now + 3600, "clientId": cid},
        "no-iat": {"iat": None, "clientId": cid},
        # The first configured claim present but invalid: no falling through to clientId.
        "bad-first-claim": {"org": {"tenant": "../x"}, "clientId": cid},
        "long-sub": {"sub": "s" * 256, "clientId": cid},
        "tampered": {"variant": "tampered", "clientId": cid},
        "wrong-aud": {"aud": "relay", "clientId": cid},
        "no-kid": {"header": {"kid": None}, "clientId": cid},
    }[kind]
    return keys.mint(**{"sub": user, **claims})


def authorization(firebase, oidc: OidcIssuerKeys, case: Case) -> list[str]:
    """The Authorization header values a case sends (none, one, or two)."""
    if case.kind.startswith("oidc-"):
        return [f"Bearer {oidc_token(oidc, case)}"]
    mint = firebase.mint
    now = int(time.time())
    cid, user = case.client_id, case.user
    tokens = {
        "valid": lambda: mint(None, user, client_id=cid),
        "expired": lambda: mint(None, user, client_id=cid, now=now - 7200),
        "future-iat": lambda: mint(None, user, client_id=cid, iat=now + 600),
        "future-auth-time": lambda: mint(None, user, client_id=cid, auth_time=now + 600),
        "future-nbf": lambda: mint(None, user, client_id=cid, nbf=now + 600),
        "string-iat": lambda: mint(None, user, client_id=cid, iat=str(now)),
        "wrong-aud": lambda: mint(None, user, client_id=cid, aud="another-project"),
        "wrong-iss": lambda: mint(None, user, client_id=cid,
                                  iss="https://securetoken.google.com/another-project"),
        "empty-sub": lambda: mint(None, user, client_id=cid, sub=""),
        "long-sub": lambda: mint(None, "u" * 129, client_id=cid),
        "client-key-sub": lambda: mint(None, "client-key:" + user, client_id=cid),
        "no-client-id": lambda: mint(None, user),
        "unknown-client-id": lambda: mint(None, user, client_id="nobody-here"),
        "numeric-client-id": lambda: mint(None, user, clientId=7),
        "tampered": lambda: mint(None, user, client_id=cid, variant="tampered"),
        "unknown-signer": lambda: mint(None, user, client_id=cid, variant="unknown_signer"),
        "alg-none": lambda: mint(None, user, client_id=cid, variant="none"),
        "hs256": lambda: mint(None, user, client_id=cid, variant="hs256_confusion"),
    }
    valid = mint(None, user, client_id=cid)
    if case.kind == "no-header":
        return []
    if case.kind == "garbage":
        return ["Bearer abc.def.ghi"]
    if case.kind == "lowercase-scheme":
        return [f"bearer {valid}"]
    if case.kind == "extra-spaces":
        return [f"Bearer   {valid}"]
    if case.kind == "two-headers":
        return [f"Bearer {valid}", f"Bearer {valid}"]
    return [f"Bearer {tokens[case.kind]()}"]


@dataclass(frozen=True)
class Outcome:
    status: int
    content_type: str | None
    body: Any  # the JSON of a refusal; a success's bytes, less what the upstream made up
    upstream: tuple[Any, ...]  # what the upstream received, in a comparable form


def send(relay: RelayStack, upstream, case: Case, headers: list[tuple[str, str]]) -> Outcome:
    upstream.clear()
    with httpx.Client(http1=not case.http2, http2=case.http2, timeout=30) as client:
        response = client.request(case.method, relay.api_base + case.path, headers=headers,
                                  content=BODIES[case.body])
    # A success is complete when the client has it; the upstream recorded it before.
    received = tuple(
        (r.method, r.target, tuple(sorted(r.headers)), r.body_size, r.body_sha256)
        for r in upstream.requests)
    if response.status_code >= 400:
        body: Any = response.json()
    else:
        body = VOLATILE.sub(rb'"\1": "-"', response.content)
    assert response.http_version == ("HTTP/2" if case.http2 else "HTTP/1.1")
    return Outcome(response.status_code, response.headers.get("content-type"), body, received)


@pytest.fixture(scope="module")
def parity_tenants(vault, tenants) -> Iterator[None]:
    for client_id, policy in PARITY_TENANTS.items():
        vault.put_tenant(client_id, f"sk-{client_id}-0123456789abcdef", extra={"policy": policy})
    yield
    for client_id in PARITY_TENANTS:
        vault.delete_tenant(client_id)


@pytest.fixture(scope="module")
def relays(pki, firebase, vault, fake_openai, parity_tenants, oidc_keys, tmp_path_factory
           ) -> Iterator[tuple[RelayStack, RelayStack]]:
    env = {**relay_env(pki, firebase, vault, fake_openai), **oidc_env(oidc_keys[1])}
    off = RelayStack({**env, "AUTHZ_FAST_PATH": "off"}, tmp_path_factory.mktemp("parity-off"))
    on = RelayStack({**env, "AUTHZ_FAST_PATH": "on"}, tmp_path_factory.mktemp("parity-on"))
    try:
        off.start()
        on.start()
        yield off, on
    finally:
        on.stop()
        off.stop()


def served_by_envoy(relay: RelayStack, firebase, upstream, client_id: str) -> bool:
    """Whether the fast path serves the tenant (its config reached Envoy)."""
    token = firebase.mint(None, "warm-up", client_id=client_id)
    return fast_served_key(relay, upstream, token) is not None


def usage(relay: RelayStack, client_id: str) -> dict[str, Any]:
    with httpx.Client(timeout=5) as client:
        report = client.get(f"http://127.0.0.1:{relay.metrics_port}/admin/usage",
                            params={"client_id": client_id}).json()
    return {user: report["users"].get(user) for user in USERS}


def test_both_modes_answer_alike_and_meter_alike(relays, firebase, oidc_keys, fake_openai):
    off, on = relays
    for client_id in SERVED_BY_ENVOY:
        seconds_until(lambda c=client_id: served_by_envoy(on, firebase, fake_openai, c), 10)
    assert not served_by_envoy(on, firebase, fake_openai, "parity-limited")
    decided = Counter[str]()
    outcomes = Counter[str]()  # for a reader of -s: which path answered what, per tenant

    def same_answer(case: Case) -> None:
        headers = [("authorization", value)
                   for value in authorization(firebase, oidc_keys[0], case)]
        if case.content_type is not None:
            headers.append(("content-type", case.content_type))
        headers.extend(case.extra)
        expected = send(off, fake_openai, case, headers)
        with Paths(on) as paths:
            got = send(on, fake_openai, case, headers)
        assert got == expected, case
        if case.client_id == "parity-limited":
            assert paths.fast == 0, case  # a per-request limit: ext_authz counts each
        where = "envoy" if paths.fast else "ext_authz"
        decided[where] += 1
        outcomes[f"{where} {case.client_id} {case.method} {case.path} {expected.status}"] += 1

    # Every token shape once on calls Envoy could serve, for a plain tenant and one with
    # rules: a rule the Lua skipped would show here whatever the draws below.
    for kind in sorted(set(TOKEN_KINDS)):
        for client_id in ("acme", "parity-governed"):
            for method, path, body in (("GET", "/models", "none"),
                                       ("POST", "/chat/completions", "chat")):
                same_answer(Case(kind, client_id, "alice", method, path, body,
                                 "application/json", ()))
    # Every application call once for every tenant, over both protocols.
    for i, (call, client_id) in enumerate(itertools.product(CALLS, CLIENT_IDS)):
        same_answer(Case("valid", client_id, USERS[i % 2], *call, (), http2=i % 2 == 1))

    settings(max_examples=300, deadline=None, database=None,
             suppress_health_check=[HealthCheck.function_scoped_fixture,
                                    HealthCheck.too_slow])(given(case=cases)(same_answer))()
    # Both paths of the fast-path relay were exercised, not only the fallback.
    assert decided["envoy"] >= 40, decided
    assert decided["ext_authz"] >= 40, decided

    # Metered alike: every tenant's usage per user, once the access logs have arrived.
    def metered_alike() -> bool:
        return all(usage(off, c) == usage(on, c) for c in CLIENT_IDS)

    try:
        seconds_until(metered_alike, 10)
    except TimeoutError:
        assert {c: usage(on, c) for c in CLIENT_IDS} == {c: usage(off, c) for c in CLIENT_IDS}
    metered = {c: usage(on, c) for c in CLIENT_IDS}
    print(f"decided: {dict(decided)}; outcomes: {dict(outcomes)}; metered: {metered}")
    # Not alike by both being empty: requests of the fast path's were metered.
    assert any(report for per_user in metered.values() for report in per_user.values())
