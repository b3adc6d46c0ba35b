"""One token, one spelling, finite claims, no unknown extensions; decoded once; and a
verified identity reused for a bounded time (issue 11 item 5, issue 10 item 3)."""

import asyncio
import base64
import time

import pytest

from authz.credentials.firebase import FirebaseVerifier
from authz.credentials.identity import Identity, IdentityCache
from authz.credentials.jose import jwt
from authz.credentials.jose.certs import CertStore
from authz.credentials.verifiers import TokenDispatcher
from authz.errors import AuthenticationFailed
from tests.support.firebase import FirebaseKeys
from tests.support.key_endpoint import FakeKeyEndpoint

PROJECT = "demo-relay"


@pytest.fixture(scope="module")
def keys() -> FirebaseKeys:
    return FirebaseKeys(PROJECT)


def verifier(keys: FirebaseKeys) -> FirebaseVerifier:
    async def build() -> FirebaseVerifier:
        store = CertStore("https://certs.test/", fetch=FakeKeyEndpoint(keys.certs_json, 3600))
        await store.refresh(force=True)
        return FirebaseVerifier(PROJECT, store, clock_skew_s=30)

    return asyncio.run(build())


def verify(keys: FirebaseKeys, token: str) -> Identity:
    return asyncio.run(verifier(keys).verify(token))


def respell(token: str, segment: int, how: str) -> str | None:
    """Another spelling of the same bytes in one segment, or None when this token's
    segment has no character the change applies to."""
    parts = token.split(".")
    text = parts[segment]
    if how == "std-alphabet":
        changed = text.replace("-", "+").replace("_", "/")
    elif how == "padding":
        changed = base64.urlsafe_b64encode(jwt.b64url_decode(text)).decode()
    elif how == "stray-bits":
        if len(text) % 4 == 0:
            return None
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(text[-1])
        changed = text[:-1] + alphabet[last | 1] if last % 2 == 0 else None  # type: ignore
        if changed is None:
            return None
    else:
        changed = text + " "
    if changed == text:
        return None
    parts[segment] = changed
    return ".".join(parts)


@pytest.mark.parametrize("segment", [0, 1, 2])
@pytest.mark.parametrize("how", ["std-alphabet", "padding", "stray-bits", "space"])
def test_only_the_canonical_spelling_verifies(keys, segment, how):
    for attempt in range(40):  # find a token whose segment the change applies to
        # "~" and "?" give base64 the characters that differ between the two alphabets.
        token = keys.sign(keys.claims(None, f"user-{attempt}", "acme", n="~?" * attempt),
                          header={"n": "~?" * attempt})
        variant = respell(token, segment, how)
        if variant is not None:
            break
    else:
        pytest.skip("no token with a segment this change applies to")
    assert verify(keys, token).subject.startswith("user-")
    with pytest.raises(AuthenticationFailed):
        verify(keys, variant)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("claim", ["exp", "iat", "auth_time", "nbf"])
def test_non_finite_time_claims_are_refused(keys, claim, value):
    claims = keys.claims(None, "user-1", "acme")
    claims[claim] = value
    with pytest.raises(AuthenticationFailed):
        verify(keys, keys.sign(claims))


@pytest.mark.parametrize("raw", ["1e400", "-1e400"])
def test_floats_beyond_a_double_are_refused_when_parsed(raw):
    head = _b64('{"alg":"RS256","kid":"k"}')
    body = _b64('{"exp":' + raw + "}")
    with pytest.raises(AuthenticationFailed):
        jwt.parse(f"{head}.{body}.c2ln")


def test_integers_beyond_a_double_are_not_times():
    with pytest.raises(AuthenticationFailed):
        jwt.numeric_claim({"exp": 10**400}, "exp")


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("value", [None, "soon", True, [1]])
def test_present_time_claims_must_be_numbers(keys, value):
    claims = keys.claims(None, "user-1", "acme")
    claims["nbf"] = value
    with pytest.raises(AuthenticationFailed):
        verify(keys, keys.sign(claims))


def test_a_crit_header_is_refused(keys):
    token = keys.mint(None, "user-1", "acme")
    assert verify(keys, token).subject == "user-1"
    with pytest.raises(AuthenticationFailed, match="critical"):
        verify(keys, keys.sign(keys.claims(None, "user-1", "acme"), header={"crit": ["exp"]}))


def test_duplicate_member_names_are_refused():
    head = _b64('{"alg":"RS256","kid":"k","kid":"other"}')
    with pytest.raises(AuthenticationFailed):
        jwt.parse(f"{head}.{_b64('{}')}.c2ln")


def test_a_token_is_decoded_once_on_a_cache_miss(keys, monkeypatch):
    calls = []
    real = jwt.parse

    def counting(token: str) -> jwt.ParsedJws:
        calls.append(token)
        return real(token)

    monkeypatch.setattr(jwt, "parse", counting)
    dispatcher = TokenDispatcher(firebase_issuer=f"https://securetoken.google.com/{PROJECT}",
                                 firebase=verifier(keys))
    identity = asyncio.run(dispatcher.verify(keys.mint(None, "user-1", "acme")))
    assert identity.client_id == "acme"
    assert len(calls) == 1


def test_identity_reuse_is_capped_below_the_tokens_exp():
    now = [1000.0]
    cache = IdentityCache(10, clock=lambda: now[0], max_age_s=300)
    cache.put(b"d", Identity("u", "acme", "firebase", expires_at=now[0] + 3600))
    now[0] += 299
    assert cache.get(b"d") is not None
    now[0] += 1
    assert cache.get(b"d") is None  # verified again, against the key set as it is now


def test_identity_cache_clear_for_one_tenant():
    cache = IdentityCache(10, clock=time.time)
    far = time.time() + 60
    cache.put(b"a", Identity("u", "acme", "firebase", far))
    cache.put(b"g", Identity("u", "globex", "firebase", far))
    cache.clear("acme")
    assert cache.get(b"a") is None
    assert cache.get(b"g") is not None
