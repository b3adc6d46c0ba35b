"""OIDC issuers: configuration, JWKS parsing, and strict verification with real RS*
signatures; the JWKS comes from a fake fetcher (no socket)."""

import asyncio
import json
import time

import pytest

from authz.credentials.jose.jwks import JwksStore, parse_jwks
from authz.credentials.oidc import OidcIssuer, OidcVerifier, parse_oidc_issuers
from authz.errors import AuthenticationFailed, CertsUnavailable, ClientIdNotFound, ConfigError
from tests.support.key_endpoint import FakeKeyEndpoint
from tests.support.oidc import OidcIssuerKeys, jwk, new_rsa

ISSUER = "https://login.example.test/"
NOW = time.time()


def FakeJwksEndpoint(keys: OidcIssuerKeys, max_age: int = 300) -> FakeKeyEndpoint:
    return FakeKeyEndpoint(keys.jwks, max_age)


@pytest.fixture(scope="module")
def keys() -> OidcIssuerKeys:
    return OidcIssuerKeys(ISSUER, audience="relay")


def config(**overrides) -> OidcIssuer:
    values = {"issuer": ISSUER, "audiences": ("relay",), "jwks_url": "https://x.test/jwks",
              "client_id_claims": ("org",)}
    values.update(overrides)
    return OidcIssuer(**values)


def run_verify(token, endpoint, cfg=None, **store_kw):
    async def run():
        store = JwksStore("https://x.test/jwks", fetch=endpoint, **store_kw)
        await store.refresh(force=True)
        return await OidcVerifier(cfg or config(), store, clock_skew_s=30).verify(token)

    return asyncio.run(run())


def test_a_genuine_token_verifies(keys):
    identity = run_verify(keys.mint("alice", org="acme"), FakeJwksEndpoint(keys))
    assert (identity.subject, identity.client_id, identity.token_type) == ("alice", "acme",
                                                                           "oidc")


def test_audience_list_and_fixed_client_id(keys):
    token = keys.mint("bob", aud=["other", "relay"])
    identity = run_verify(token, FakeJwksEndpoint(keys),
                          config(client_id="initech", client_id_claims=()))
    assert identity.client_id == "initech"


def test_other_rsa_algorithms_only_when_allowed(keys):
    token = keys.mint("carol", alg="RS384", org="acme")
    with pytest.raises(AuthenticationFailed):
        run_verify(token, FakeJwksEndpoint(keys))
    assert run_verify(token, FakeJwksEndpoint(keys),
                      config(algorithms=("RS256", "RS384"))).client_id == "acme"


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("alg none", {"variant": "none"}),
        ("HS256 keyed with the JWKS", {"variant": "hs256_confusion"}),
        ("unknown signer", {"variant": "unknown_signer"}),
        ("tampered payload", {"variant": "tampered"}),
        ("unknown kid", {"kid": "nope"}),
        ("no kid", {"header": {"kid": None}}),
        ("RS512 not allowed", {"alg": "RS512"}),
        ("expired", {"now": NOW - 7200}),
        ("issued in the future", {"iat": int(NOW + 10 * 86400)}),
        ("iat missing", {"iat": None}),
        ("not yet valid", {"nbf": int(NOW + 10 * 86400)}),
        ("other audience", {"aud": "someone-else"}),
        ("audience list without ours", {"aud": ["a", "b"]}),
        ("wrong issuer", {"iss": "https://evil.test/"}),
        ("issuer with a trailing difference", {"iss": ISSUER.rstrip("/")}),
        ("empty subject", {"sub": ""}),
        ("subject too long", {"sub": "u" * 256}),
        ("exp boolean", {"exp": True}),
    ],
)
def test_forged_and_stale_tokens_are_refused(keys, name, kwargs):
    kwargs = {"org": "acme", **kwargs}
    sub = kwargs.pop("sub", "alice")
    with pytest.raises(AuthenticationFailed):
        run_verify(keys.mint(sub, **kwargs), FakeJwksEndpoint(keys))


def test_a_key_whose_jwk_names_another_alg_is_refused():
    keys = OidcIssuerKeys(ISSUER, kids=0)
    keys.add_key("pinned", alg="RS512")
    token = keys.mint("alice", kid="pinned", alg="RS256", org="acme")
    with pytest.raises(AuthenticationFailed, match="does not match"):
        run_verify(token, FakeJwksEndpoint(keys), config(algorithms=("RS256", "RS512")))


def test_missing_or_smuggled_client_id(keys):
    with pytest.raises(ClientIdNotFound):
        run_verify(keys.mint("alice"), FakeJwksEndpoint(keys))
    with pytest.raises(ClientIdNotFound):
        run_verify(keys.mint("alice", org="../other"), FakeJwksEndpoint(keys))


def test_key_rotation_is_picked_up_by_kid_without_waiting_for_max_age():
    keys = OidcIssuerKeys(ISSUER)
    endpoint = FakeJwksEndpoint(keys, max_age=3600)

    async def run():
        store = JwksStore("https://x.test/jwks", fetch=endpoint, min_refetch_interval_s=0)
        verifier = OidcVerifier(config(), store)
        await store.refresh(force=True)
        old = keys.kids[0]
        assert (await verifier.verify(keys.mint("a", org="acme"))).client_id == "acme"
        new = keys.add_key()  # the issuer rotates: a new kid appears in the JWKS
        assert (await verifier.verify(keys.mint("a", kid=new, org="acme"))).client_id == "acme"
        assert endpoint.calls == 2
        keys.remove_key(old)  # and later retires the old key
        await store.refresh(force=True)
        with pytest.raises(AuthenticationFailed):
            await verifier.verify(keys.mint("a", kid=old, org="acme"))

    asyncio.run(run())


def test_jwks_unreachable_at_start_is_our_failure_not_the_callers():
    keys = OidcIssuerKeys(ISSUER)
    endpoint = FakeJwksEndpoint(keys)
    endpoint.down = True
    with pytest.raises(CertsUnavailable):
        run_verify(keys.mint("a", org="acme"), endpoint)


def test_parse_jwks_keeps_only_usable_rsa_signing_keys():
    key = new_rsa()
    body = json.dumps({"keys": [
        jwk(key, "sig-1"),
        jwk(key, "enc-1", use="enc"),
        jwk(key, "es-1", alg="ES256"),
        {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": "AA", "y": "AA"},
        {**jwk(key, "x"), "kid": ""},
    ]}).encode()
    assert sorted(parse_jwks(body)) == ["sig-1"]


@pytest.mark.parametrize(
    "document",
    [
        {"keys": []},
        {"nope": []},
        [],
        {"keys": [{"kty": "RSA", "kid": "a", "n": "", "e": "AQAB"}]},
    ],
)
def test_parse_jwks_refuses_unusable_sets(document):
    with pytest.raises(ValueError):  # noqa: PT011 - several distinct messages
        parse_jwks(json.dumps(document).encode())


def test_parse_jwks_refuses_short_keys_and_duplicate_kids():
    short = new_rsa(1024)
    with pytest.raises(ValueError, match="shorter"):
        parse_jwks(json.dumps({"keys": [jwk(short, "s")]}).encode())
    key = new_rsa()
    with pytest.raises(ValueError, match="twice"):
        parse_jwks(json.dumps({"keys": [jwk(key, "d"), jwk(key, "d")]}).encode())


def test_issuers_config_inline_and_from_a_file(tmp_path):
    entry = {"issuer": ISSUER, "audience": ["relay", "api"], "jwks_url": "https://x.test/j",
             "client_id_claim": "org", "algorithms": ["RS256", "RS512"]}
    [parsed] = parse_oidc_issuers(json.dumps([entry]))
    assert parsed == OidcIssuer(ISSUER, ("relay", "api"), "https://x.test/j", ("org",), None,
                                ("RS256", "RS512"))
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps([{k: v for k, v in entry.items() if k != "client_id_claim"}]))
    [from_file] = parse_oidc_issuers(str(path))
    assert from_file.client_id_claims == ("clientId",)
    assert parse_oidc_issuers("") == ()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"audience": "r", "jwks_url": "https://x.test/j"}, "issuer"),
        ({"issuer": ISSUER, "jwks_url": "https://x.test/j"}, "audience"),
        ({"issuer": ISSUER, "audience": "r"}, "jwks_url"),
        ({"issuer": "http://login.example.test/", "audience": "r",
          "jwks_url": "https://x.test/j"}, "https"),
        ({"issuer": ISSUER, "audience": "r", "jwks_url": "ftp://x.test/j"}, "jwks_url"),
        ({"issuer": ISSUER, "audience": [], "jwks_url": "https://x.test/j"}, "audience"),
        ({"issuer": ISSUER, "audience": "r", "jwks_url": "https://x.test/j",
          "algorithms": ["HS256"]}, "HS256"),
        ({"issuer": ISSUER, "audience": "r", "jwks_url": "https://x.test/j",
          "algorithms": ["none"]}, "none"),
        ({"issuer": ISSUER, "audience": "r", "jwks_url": "https://x.test/j",
          "client_id": "../x"}, "client_id"),
        ({"issuer": ISSUER, "audience": "r", "jwks_url": "https://x.test/j",
          "client_id": "a", "client_id_claim": "b"}, "not both"),
        ({"issuer": ISSUER, "audience": "r", "jwks_url": "https://x.test/j",
          "client_id_claim": "a/b"}, "claim"),
        ({"issuer": ISSUER, "audience": "r", "jwks_url": "https://x.test/j",
          "extra": 1}, "unknown field"),
    ],
)
def test_issuers_config_errors_name_the_problem(entry, message):
    with pytest.raises(ConfigError, match=message):
        parse_oidc_issuers(json.dumps([entry]))


def test_issuers_config_refuses_duplicates_and_non_lists(tmp_path):
    entry = {"issuer": ISSUER, "audience": "r", "jwks_url": "https://x.test/j"}
    with pytest.raises(ConfigError, match="twice"):
        parse_oidc_issuers(json.dumps([entry, entry]))
    with pytest.raises(ConfigError, match="readable file"):
        parse_oidc_issuers(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="JSON"):
        parse_oidc_issuers("[not json")


def test_plain_http_is_allowed_on_loopback_only():
    [parsed] = parse_oidc_issuers(json.dumps([{
        "issuer": "http://127.0.0.1:8000/", "audience": "r",
        "jwks_url": "http://localhost:8000/jwks"}]))
    assert parsed.issuer == "http://127.0.0.1:8000/"
