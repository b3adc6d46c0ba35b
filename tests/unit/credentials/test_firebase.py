"""Firebase ID token verification with real RS256 signatures; certs from a fake fetcher."""

import asyncio
import time

import pytest

from authz.credentials.firebase import FirebaseVerifier
from authz.credentials.jose import jwt
from authz.credentials.jose.certs import CertStore, parse_max_age
from authz.errors import AuthenticationFailed, CertsUnavailable
from tests.support.firebase import FirebaseKeys
from tests.support.key_endpoint import FakeKeyEndpoint

PROJECT = "demo-relay"


def FakeCertsEndpoint(keys: FirebaseKeys, max_age: int = 3600) -> FakeKeyEndpoint:
    """Serves FirebaseKeys.certs_json() to CertStore without a socket."""
    return FakeKeyEndpoint(keys.certs_json, max_age)


@pytest.fixture(scope="module")
def keys() -> FirebaseKeys:
    return FirebaseKeys(PROJECT)


def verify(token: str, endpoint: FakeCertsEndpoint, **kw) -> dict:
    async def run() -> dict:
        store = CertStore("https://certs.test/", fetch=endpoint, **kw)
        await store.refresh(force=True)
        verifier = FirebaseVerifier(PROJECT, store, clock_skew_s=30)
        return await verifier.verified_claims(jwt.parse(token))

    return asyncio.run(run())


def test_a_genuine_token_verifies(keys):
    claims = verify(keys.mint(None, "user-1", "acme"), FakeCertsEndpoint(keys))
    assert claims["sub"] == "user-1"
    assert claims["clientId"] == "acme"


# Read at import: "in the future" is days ahead, so a long test session never reaches it.
NOW = time.time()


@pytest.mark.parametrize(
    ("name", "mint_kwargs"),
    [
        ("alg none", {"variant": "none"}),
        ("HS256 keyed with the public cert", {"variant": "hs256_confusion"}),
        ("unknown signer", {"variant": "unknown_signer"}),
        ("tampered payload", {"variant": "tampered"}),
        ("unknown kid", {"kid": "not-a-kid"}),
        ("no kid", {"remove_header": ["kid"]}),
        ("RS512 header", {"header": {"alg": "RS512"}}),
        ("expired", {"now": NOW - 7200}),
        ("issued in the future", {"iat": int(NOW + 10 * 86400)}),
        ("auth_time in the future", {"auth_time": int(NOW + 10 * 86400)}),
        ("auth_time missing", {"remove": ["auth_time"]}),
        ("other project audience", {"aud": "other-project"}),
        ("audience list", {"aud": [PROJECT]}),
        ("wrong issuer", {"iss": "https://evil.example/demo-relay"}),
        ("empty subject", {"sub": ""}),
        ("subject too long", {"sub": "u" * 129}),
        ("subject not a string", {"sub": 42}),
        ("exp not a number", {"exp": "soon"}),
        ("exp boolean", {"exp": True}),
        ("not yet valid", {"nbf": int(NOW + 10 * 86400)}),
    ],
)
def test_forged_and_stale_tokens_are_rejected(keys, name, mint_kwargs):
    token = keys.mint(None, "user-1", "acme", **mint_kwargs)
    with pytest.raises(AuthenticationFailed):
        verify(token, FakeCertsEndpoint(keys))


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c.d", "!!!.@@@.###", "e30.e30.", "bm90IGpzb24.e30.c2ln", "W10.e30.c2ln",
     "x" * 20_000],
)
def test_garbage_is_rejected(keys, token):
    with pytest.raises(AuthenticationFailed):
        verify(token, FakeCertsEndpoint(keys))


def test_small_clock_skew_is_tolerated(keys):
    token = keys.mint(None, "user-1", "acme", iat=int(time.time() + 10),
                      auth_time=int(time.time() + 10))
    assert verify(token, FakeCertsEndpoint(keys))["sub"] == "user-1"


def test_cold_start_without_certs_is_an_internal_error_not_401(keys):
    endpoint = FakeCertsEndpoint(keys)
    endpoint.down = True
    with pytest.raises(CertsUnavailable):
        verify(keys.mint(None, "user-1", "acme"), endpoint)


def test_a_new_signing_key_is_picked_up_without_a_restart():
    rotating = FirebaseKeys(PROJECT)
    endpoint = FakeCertsEndpoint(rotating)

    async def run() -> None:
        store = CertStore("https://certs.test/", fetch=endpoint, min_refetch_interval_s=0)
        await store.refresh(force=True)
        verifier = FirebaseVerifier(PROJECT, store)
        await verifier.verify(rotating.mint(None, "u", "acme"))
        new_kid = rotating.add_key()
        identity = await verifier.verify(rotating.mint(None, "u", "acme", kid=new_kid))
        assert identity.subject == "u"
        assert identity.client_id == "acme"
        assert endpoint.calls == 2

    asyncio.run(run())


def test_unknown_kids_cannot_make_us_hammer_the_endpoint(keys):
    endpoint = FakeCertsEndpoint(keys)

    async def run() -> None:
        store = CertStore("https://certs.test/", fetch=endpoint, min_refetch_interval_s=60)
        await store.refresh(force=True)
        verifier = FirebaseVerifier(PROJECT, store)
        for i in range(20):
            with pytest.raises(AuthenticationFailed):
                await verifier.verify(keys.mint(None, "u", "acme", kid=f"bogus-{i}"))
        assert endpoint.calls == 1

    asyncio.run(run())


def test_cached_certs_survive_an_endpoint_outage(keys):
    endpoint = FakeCertsEndpoint(keys, max_age=1)

    async def run() -> None:
        clock = [100.0]
        store = CertStore("https://certs.test/", fetch=endpoint, clock=lambda: clock[0])
        await store.refresh(force=True)
        endpoint.down = True
        clock[0] += 120
        await store.refresh(force=True)
        assert store.error_count == 1
        verifier = FirebaseVerifier(PROJECT, store)
        assert (await verifier.verify(keys.mint(None, "u", "acme"))).subject == "u"

    asyncio.run(run())


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("public, max-age=19204, must-revalidate", 19204.0), ("no-cache", 60.0), ("", 60.0),
     ("MAX-AGE=5", 5.0)],
)
def test_cache_control_max_age(header, seconds):
    assert parse_max_age(header, 60.0) == seconds
