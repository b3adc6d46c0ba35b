"""A generic OIDC issuer beside Firebase: a stand-in issuer on loopback serves its JWKS,
rotates its signing key, and the relay follows, with real Envoy, authz and OpenBao."""

import json
from collections.abc import Iterator

import httpx2 as httpx
import pytest

from tests.integration.conftest import FAST_PATH
from tests.support.authz_cli import seconds_until
from tests.support.oidc import JwksServer, OidcIssuerKeys

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def issuer() -> Iterator[tuple[OidcIssuerKeys, JwksServer]]:
    keys = OidcIssuerKeys("https://login.example.test/realms/apps", audience="relay-api")
    server = JwksServer(keys, max_age=1).start()  # refreshed about every second
    try:
        yield keys, server
    finally:
        server.stop()


def issuers_env(server: JwksServer, **extra: object) -> dict[str, str]:
    return {"AUTHZ_OIDC_ISSUERS": json.dumps([{
        "issuer": "https://login.example.test/realms/apps", "audience": "relay-api",
        "jwks_url": server.url, "client_id_claim": ["org.tenant", "clientId"], **extra}])}


def call(relay, token):
    with httpx.Client(timeout=20) as client:
        return client.get(relay.api_base + "/models", headers={"authorization": f"Bearer {token}"})


def test_oidc_tokens_reach_their_tenant_beside_firebase(relay_with_oidc, issuer, tenants,
                                                        upstream, token_for):
    keys, _ = issuer
    relay = relay_with_oidc
    assert call(relay, keys.mint("alice", org={"tenant": "globex"})).status_code == 200
    assert call(relay, keys.mint("bob", clientId="acme")).status_code == 200
    assert call(relay, token_for("initech")).status_code == 200  # Firebase still works
    assert [r.header("authorization") for r in upstream.requests] == [
        f"Bearer {tenants[c].api_key}" for c in ("globex", "acme", "initech")]

    unknown_tenant = call(relay, keys.mint("carol", clientId="nobody"))
    assert (unknown_tenant.status_code, unknown_tenant.json()) == (
        500, {"error": "OpenAI API key not found"})
    no_tenant = call(relay, keys.mint("dave"))
    assert (no_tenant.status_code, no_tenant.json()) == (500, {"error": "Client ID not found"})
    assert len(upstream.requests) == 3


@pytest.mark.parametrize(
    ("name", "make_token"),
    [
        ("unconfigured issuer", lambda k: OidcIssuerKeys("https://evil.test/").mint(
            "x", clientId="acme")),
        ("issuer right, audience wrong", lambda k: k.mint("x", clientId="acme", aud="other")),
        ("alg none", lambda k: k.mint("x", clientId="acme", variant="none")),
        ("HS256 key confusion", lambda k: k.mint("x", clientId="acme",
                                                 variant="hs256_confusion")),
        ("signed by another key", lambda k: k.mint("x", clientId="acme",
                                                   variant="unknown_signer")),
        ("expired", lambda k: k.mint("x", clientId="acme", now=1_000_000_000)),
    ],
)
def test_forged_oidc_tokens_are_401_and_forward_nothing(issuer, upstream, name, make_token,
                                                        relay_with_oidc):
    keys, _ = issuer
    response = call(relay_with_oidc, make_token(keys))
    assert (response.status_code, response.json()) == (401, {"error": "Authentication failed"})
    assert upstream.requests == []


@pytest.fixture(scope="module")
def relay_with_oidc(issuer, pki, firebase, vault, fake_openai, tenants, tmp_path_factory):
    from tests.integration.conftest import relay_env
    from tests.support.relay import RelayStack

    _, server = issuer
    stack = RelayStack({**relay_env(pki, firebase, vault, fake_openai), **issuers_env(server)},
                       tmp_path_factory.mktemp("relay-oidc"))
    try:
        yield stack.start()
    finally:
        stack.stop()


def test_the_relay_follows_the_issuers_key_rotation(relay_with_oidc, issuer, upstream):
    keys, server = issuer
    old = keys.kids[-1]
    assert call(relay_with_oidc, keys.mint("alice", clientId="acme")).status_code == 200

    new = keys.add_key()  # the issuer publishes a new key and starts signing with it
    new_token = keys.mint("alice", kid=new, clientId="acme")
    elapsed = seconds_until(lambda: call(relay_with_oidc, new_token).status_code == 200,
                            timeout=15)
    print(f"\nnew OIDC signing key accepted after {elapsed:.2f}s (JWKS max-age 1s)")
    old_token = keys.mint("alice", kid=old, clientId="acme")
    assert call(relay_with_oidc, old_token).status_code == 200  # both valid meanwhile

    # The issuer retires the old key. A token the relay has already verified stays cached
    # for AUTHZ_IDENTITY_CACHE_TTL (5 min here); one it has not seen, signed with the
    # retired key, is refused once the relay's background refresh has taken the key out
    # (the second fetch after removal proves the first one was applied). RS256 signatures
    # are deterministic, so the subject is one no other test mints: "bob" for acme, minted
    # by the first test in the same second, was the very token the relay had cached.
    unseen = keys.mint("rotation-unseen", kid=old, clientId="acme")
    keys.remove_key(old)
    fetched = server.fetch_count
    elapsed = seconds_until(lambda: server.fetch_count >= fetched + 2, timeout=15)
    print(f"retired OIDC signing key dropped within {elapsed:.2f}s (JWKS max-age 1s)")
    if FAST_PATH:  # Envoy gets the key set the service holds at its next poll (1 s)
        took = seconds_until(lambda: call(relay_with_oidc, unseen).status_code == 401,
                             timeout=5)
        print(f"retired OIDC signing key dropped by Envoy {took:.2f}s later")
    response = call(relay_with_oidc, unseen)
    assert (response.status_code, response.json()) == (401, {"error": "Authentication failed"})
    assert call(relay_with_oidc, new_token).status_code == 200
