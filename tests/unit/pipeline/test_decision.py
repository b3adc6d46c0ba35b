import asyncio
from typing import Any

import pytest

from authz.credentials.identity import Identity, IdentityCache
from authz.errors import AuthenticationFailed, CertsUnavailable
from authz.pipeline.decision import Allow, Authorizer, Deny, bearer_token, headers_to_remove
from authz.tenants.client_id import client_id_from_claims
from authz.tenants.key_cache import KeyCache
from authz.tenants.vault import TenantKey


class FakeVerifier:
    token_type = "firebase"

    def __init__(self, tokens: dict[str, dict[str, Any]]) -> None:
        self.tokens = tokens
        self.calls = 0
        self.error: Exception | None = None

    def token_type_of(self, token: str) -> str:
        return self.token_type

    async def verify(self, token: str) -> Identity:
        self.calls += 1
        if self.error is not None:
            raise self.error
        if token not in self.tokens:
            raise AuthenticationFailed("unknown token")
        claims = self.tokens[token]
        return Identity(claims["sub"], client_id_from_claims(claims, CLAIMS), self.token_type,
                        claims["exp"])


class DictVault:
    def __init__(self, keys: dict[str, TenantKey]) -> None:
        self.keys = keys

    def read(self, client_id: str) -> TenantKey | None:
        return self.keys.get(client_id)


FAR = 4_000_000_000
CLAIMS = ("clientId", "firebase.tenant")
TOKENS = {
    "tok-a": {"sub": "u1", "exp": FAR, "clientId": "acme"},
    "tok-b": {"sub": "u2", "exp": FAR, "firebase": {"tenant": "globex"}},
    "tok-nokey": {"sub": "u3", "exp": FAR, "clientId": "nokey"},
    "tok-noclient": {"sub": "u4", "exp": FAR},
    "tok-old": {"sub": "u5", "exp": 10, "clientId": "acme"},
}
KEYS = {
    "acme": TenantKey("sk-acme", organization="org-acme", project="proj-acme"),
    "globex": TenantKey("sk-globex"),
}


def authorizer(verifier: FakeVerifier | None = None) -> tuple[Authorizer, FakeVerifier]:
    verifier = verifier or FakeVerifier(TOKENS)
    return Authorizer(
        verifier, KeyCache(DictVault(KEYS)), identity_cache=IdentityCache(1000),
    ), verifier


def check(headers: dict[str, str], auth: Authorizer | None = None):
    return asyncio.run((auth or authorizer()[0]).check(headers))


def test_allowed_request_gets_its_tenants_key_and_options():
    decision = check({"authorization": "Bearer tok-a", ":path": "/api/openai/v1/models"})
    assert isinstance(decision, Allow)
    assert decision.client_id == "acme"
    assert dict(decision.set_headers) == {
        "authorization": "Bearer sk-acme",
        "openai-organization": "org-acme",
        "openai-project": "proj-acme",
    }


def test_client_headers_that_name_a_tenant_or_forward_are_removed():
    headers = {
        "authorization": "Bearer tok-b", "cookie": "a=b", "proxy-authorization": "x",
        "x-api-key": "k", "x-client-id": "acme", "x-tenant-id": "acme",
        "x-forwarded-for": "1.2.3.4", "x-forwarded-host": "evil", "forwarded": "for=x",
        "x-real-ip": "1.2.3.4", "x-envoy-original-path": "/x", "x-relay-client": "acme",
        "cf-connecting-ip": "1.2.3.4", "true-client-ip": "1.2.3.4", "x-client-ip": "1.2.3.4",
        "x-cluster-client-ip": "1.2.3.4", "openai-organization": "org-acme",
        "openai-project": "p", "content-type": "x",
        ":authority": "relay",
    }
    decision = check(headers)
    assert isinstance(decision, Allow)
    assert decision.client_id == "globex"
    assert dict(decision.set_headers) == {"authorization": "Bearer sk-globex"}
    assert set(decision.remove_headers) == set(headers) - {
        "authorization", "content-type", ":authority"
    }


def test_tenant_options_overwrite_rather_than_remove():
    assert headers_to_remove(["openai-project", "accept"], ["openai-project"]) == (
        "openai-organization",)
    assert headers_to_remove(["openai-project"], []) == (
        "openai-organization", "openai-project")
    assert headers_to_remove([], ["openai-organization", "openai-project"]) == ()


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwdw==", "Bearer a b", "Token tok-a",
     "Bearer tok-a,Bearer tok-b", "Bearer tok\u00e9", "Bearer tok-a\r\nX: y"],
)
def test_malformed_authorization_is_401(authorization):
    headers = {} if authorization is None else {"authorization": authorization}
    decision = check(headers)
    assert isinstance(decision, Deny)
    assert decision.error.status == 401
    assert decision.error.body() == {"error": "Authentication failed"}


def test_bearer_scheme_is_case_insensitive():
    assert bearer_token("bearer abc.def") == "abc.def"
    assert bearer_token("BEARER  abc") == "abc"


@pytest.mark.parametrize(
    ("token", "status", "body"),
    [
        ("tok-unknown", 401, {"error": "Authentication failed"}),
        ("tok-noclient", 500, {"error": "Client ID not found"}),
        ("tok-nokey", 500, {"error": "OpenAI API key not found"}),
    ],
)
def test_denials_carry_the_contract_bodies(token, status, body):
    decision = check({"authorization": f"Bearer {token}"})
    assert isinstance(decision, Deny)
    assert decision.error.status == status
    assert decision.error.body() == body


def test_verified_identities_are_cached_until_exp():
    auth, verifier = authorizer()
    for _ in range(5):
        assert isinstance(check({"authorization": "Bearer tok-a"}, auth), Allow)
    assert verifier.calls == 1
    # An identity whose exp has passed is never served from the cache.
    cache = IdentityCache(10)
    auth2, verifier2 = authorizer()
    auth2._identities = cache
    for _ in range(2):
        check({"authorization": "Bearer tok-old"}, auth2)
    assert verifier2.calls == 2


def test_identity_cache_is_bounded():
    cache = IdentityCache(2)
    ids = [Identity(f"u{i}", "acme", "firebase", FAR) for i in range(3)]
    for i, identity in enumerate(ids):
        cache.put(bytes([i]), identity)
    assert cache.get(bytes([0])) is None
    cached = cache.get(bytes([2]))
    assert cached is not None
    assert cached.subject == "u2"


def test_internal_failures_fail_closed_with_the_internal_error_body():
    verifier = FakeVerifier(TOKENS)
    verifier.error = CertsUnavailable("no certs")
    decision = check({"authorization": "Bearer tok-a"}, authorizer(verifier)[0])
    assert isinstance(decision, Deny)
    assert decision.error.status == 500
    assert decision.error.body()["error"] == "OpenAI proxy internal error"

    verifier.error = RuntimeError("bug with sk-secret in it")
    decision = check({"authorization": "Bearer tok-a"}, authorizer(verifier)[0])
    assert isinstance(decision, Deny)
    assert decision.error.body() == {"error": "OpenAI proxy internal error",
                                     "details": "check failed"}
