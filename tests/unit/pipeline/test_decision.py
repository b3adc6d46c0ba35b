import asyncio
from typing import Any

import pytest

from authz.credentials.identity import Identity, IdentityCache
from authz.errors import AuthenticationFailed, CertsUnavailable
from authz.pipeline.decision import (
    Allow,
    Authorizer,
    CheckInput,
    Deny,
    bearer_token,
    headers_to_remove,
)
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
    return asyncio.run((auth or authorizer()[0]).check(CheckInput.of_headers(headers)))


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


# ------------------------------------------------------------------------------ governance

from authz.errors import (  # noqa: E402
    ApiKeyNotFound,
    BadRequest,
    ClientIdNotFound,
    EndpointNotAllowed,
    ModelNotAllowed,
    RateLimitExceeded,
)
from authz.governance.model import Admission, Limits  # noqa: E402
from authz.governance.policy import parse_policy  # noqa: E402

GOVERNED = parse_policy({"endpoints": "inference", "models": ["gpt-4o-mini", "gpt-4.1*"],
                         "limits": {"user_requests_per_minute": 60}})
KEY_POLICY = parse_policy({"endpoints": ["POST /v1/chat/completions"], "models": ["gpt-4.1"],
                           "limits": {"user_requests_per_minute": 5,
                                      "user_concurrent_requests": 1}})


class RecordingLimiter:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, str, Limits, int]] = []
        self.error = error

    async def admit(self, client_id: str, user: str, limits: Limits,
                    estimate_tokens: int) -> Admission:
        self.calls.append((client_id, user, limits, estimate_tokens))
        if self.error is not None:
            raise self.error
        return Admission(lease=f"lease-{len(self.calls)}", reserved_tokens=estimate_tokens)

    async def settle(self, completed: object) -> None:
        raise AssertionError("the pipeline never settles")


class KeyVerifier(FakeVerifier):
    """Tokens "key-*" are client keys carrying KEY_POLICY."""

    token_type = "client_key"

    async def verify(self, token: str) -> Identity:
        identity = await super().verify(token)
        return Identity(identity.subject, identity.client_id, "client_key",
                        identity.expires_at, policy=KEY_POLICY)


GOV_TOKENS = {
    **TOKENS,
    "tok-gov": {"sub": "u9", "exp": FAR, "clientId": "governed"},
    "tok-gov-nokey": {"sub": "u10", "exp": FAR, "clientId": "nokey"},
    "key-gov": {"sub": "client-key:ck_abc", "exp": FAR, "clientId": "governed"},
}
GOV_KEYS = {**KEYS, "governed": TenantKey("sk-gov", policy=GOVERNED)}


def governed(limiter: RecordingLimiter | None = None, verifier: FakeVerifier | None = None,
             default_policy=None) -> Authorizer:
    kwargs = {"default_policy": default_policy} if default_policy is not None else {}
    return Authorizer(verifier or FakeVerifier(GOV_TOKENS), KeyCache(DictVault(GOV_KEYS)),
                      identity_cache=IdentityCache(1000), limiter=limiter, **kwargs)


def run(auth: Authorizer, token: str | None, method: str = "POST",
        path: str = "/api/openai/v1/chat/completions", body: bytes | None = None,
        partial: bool = False, content_type: str = "application/json"):
    headers = {"content-type": content_type}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return asyncio.run(auth.check(CheckInput(method, path, headers, body, partial)))


def refused(decision, error_type):
    assert isinstance(decision, Deny), decision
    assert type(decision.error) is error_type, decision.error
    return decision.error


def test_decision_order_is_the_contracts():
    limiter = RecordingLimiter(RateLimitExceeded("user_requests_per_minute", 3))
    auth = governed(limiter)
    bad_everything = dict(method="GET", path="/api/openai/v1/files", body=b'{"model": "x"')
    refused(run(auth, None, **bad_everything), AuthenticationFailed)
    refused(run(auth, "tok-noclient", **bad_everything), ClientIdNotFound)
    refused(run(auth, "tok-gov-nokey", **bad_everything), ApiKeyNotFound)
    refused(run(auth, "tok-gov", **bad_everything), EndpointNotAllowed)
    refused(run(auth, "tok-gov", body=b'{"model": "x"'), BadRequest)
    refused(run(auth, "tok-gov", body=b'{"model": "gpt-4o"}'), ModelNotAllowed)
    assert limiter.calls == []  # nothing refused earlier spends anything
    refused(run(auth, "tok-gov", body=b'{"model": "gpt-4o-mini"}'), RateLimitExceeded)
    assert len(limiter.calls) == 1


def test_a_governed_allow_carries_user_lease_and_reservation():
    limiter = RecordingLimiter()
    body = b'{"model": "gpt-4o-mini", "max_tokens": 10, "stream": true}'
    decision = run(governed(limiter), "tok-gov", body=body)
    assert isinstance(decision, Allow)
    assert (decision.user, decision.lease) == ("u9", "lease-1")
    assert decision.reserved_tokens == (len(body) + 3) // 4 + 10
    assert decision.inject_usage
    assert limiter.calls == [("governed", "u9", GOVERNED.limits, decision.reserved_tokens)]


def test_ungoverned_tenants_never_reach_the_limiter_but_are_still_metered():
    limiter = RecordingLimiter()
    decision = run(governed(limiter), "tok-a", body=b'{"model": "anything", "stream": true}')
    assert isinstance(decision, Allow)
    assert decision.inject_usage
    assert (decision.user, decision.lease, decision.reserved_tokens) == ("u1", "", 0)
    assert limiter.calls == []
    decision = run(governed(limiter), "tok-a", method="GET", path="/api/openai/v1/files")
    assert isinstance(decision, Allow)
    assert not decision.inject_usage


def test_without_a_limiter_limits_are_not_enforced_here():
    decision = run(governed(None), "tok-gov", body=b'{"model": "gpt-4o-mini"}')
    assert isinstance(decision, Allow)
    assert decision.lease == ""


def test_a_client_keys_policy_narrows_its_tenants():
    limiter = RecordingLimiter()
    auth = governed(limiter, KeyVerifier(GOV_TOKENS))
    # The tenant allows embeddings and gpt-4o-mini; the key does not.
    refused(run(auth, "key-gov", path="/api/openai/v1/embeddings",
                body=b'{"model": "gpt-4.1"}'), EndpointNotAllowed)
    refused(run(auth, "key-gov", body=b'{"model": "gpt-4o-mini"}'), ModelNotAllowed)
    decision = run(auth, "key-gov", body=b'{"model": "gpt-4.1"}')
    assert isinstance(decision, Allow)
    assert decision.user == "ck_abc"
    assert limiter.calls[-1][2] == Limits(user_requests_per_minute=5,
                                          user_concurrent_requests=1)


def test_the_default_policy_applies_to_tenants_without_one():
    auth = governed(default_policy=parse_policy({"endpoints": "inference"}))
    refused(run(auth, "tok-a", method="GET", path="/api/openai/v1/files"), EndpointNotAllowed)
    assert isinstance(run(auth, "tok-a", method="GET", path="/api/openai/v1/models"), Allow)
    # A tenant with its own policy is governed by it, not the default.
    refused(run(auth, "tok-gov", body=b'{"model": "o3"}'), ModelNotAllowed)


def test_partial_bodies_and_multipart_under_a_models_policy():
    auth = governed()
    refused(run(auth, "tok-gov", body=b'{"model": "gpt-4o-mini", "input": "', partial=True),
            ModelNotAllowed)
    decision = run(auth, "tok-gov", path="/api/openai/v1/audio/transcriptions", body=None,
                   content_type="multipart/form-data; boundary=x")
    assert isinstance(decision, Allow)


def test_an_invalid_tenant_policy_fails_closed():
    from authz.errors import InternalError
    from authz.tenants.vault import read_policy

    with pytest.raises(InternalError) as error:
        read_policy({"api_key": "sk-secret-value", "policy": {"endpoints": "everything"}})
    assert error.value.body() == {"error": "OpenAI proxy internal error",
                                  "details": "tenant policy invalid"}
    assert "endpoints" in error.value.log_detail
    assert "sk-secret-value" not in error.value.log_detail
    assert read_policy({"policy": '{"endpoints": "inference"}'}) == parse_policy(
        {"endpoints": "inference"})
    assert read_policy({"api_key": "x"}) is None
