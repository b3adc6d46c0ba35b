"""The one entry for every credential type: routing by shape and (unverified) issuer, never
by trying verifiers in turn; the emulator verifier; the set built from Settings."""

import asyncio
import json
import time

import pytest

from authz.credentials.firebase_emulator import FirebaseEmulatorVerifier
from authz.credentials.identity import Identity
from authz.credentials.verifiers import TokenDispatcher, build_token_verifiers
from authz.errors import AuthenticationFailed, ClientIdNotFound
from authz.settings import Settings
from tests.support.firebase import FirebaseKeys
from tests.support.oidc import OidcIssuerKeys

PROJECT = "demo-relay"
FIREBASE_ISS = f"https://securetoken.google.com/{PROJECT}"
OIDC_ISS = "https://login.example.test/"


class Spy:
    """A verifier that records being asked, and accepts everything."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.token_type = name
        self.calls = 0

    def token_type_of(self, token: str) -> str:
        return self.name

    async def verify(self, token: str) -> Identity:
        self.calls += 1
        return Identity("sub", "acme", self.name, time.time() + 60)

    async def verify_jws(self, jws) -> Identity:
        return await self.verify("")


@pytest.fixture
def spies() -> dict[str, Spy]:
    return {name: Spy(name) for name in ("firebase", "emulator", "oidc", "client_key")}


def dispatcher(spies: dict[str, Spy], *, emulator: bool = False) -> TokenDispatcher:
    return TokenDispatcher(
        firebase_issuer=FIREBASE_ISS,
        firebase=None if emulator else spies["firebase"],
        firebase_emulator=spies["emulator"] if emulator else None,
        oidc={OIDC_ISS: spies["oidc"]},
        client_keys=spies["client_key"],
    )


@pytest.fixture(scope="module")
def firebase() -> FirebaseKeys:
    return FirebaseKeys(PROJECT)


@pytest.fixture(scope="module")
def oidc() -> OidcIssuerKeys:
    return OidcIssuerKeys(OIDC_ISS)


def only_called(spies: dict[str, Spy]) -> list[str]:
    return [name for name, spy in spies.items() if spy.calls]


def test_each_shape_goes_to_exactly_one_verifier(spies, firebase, oidc):
    d = dispatcher(spies)
    for token, expected in (
        (firebase.mint(None, "u", "acme"), "firebase"),
        (oidc.mint("u"), "oidc"),
        ("rk_" + "a" * 51, "client_key"),
    ):
        for spy in spies.values():
            spy.calls = 0
        assert asyncio.run(d.verify(token)).token_type == expected
        assert only_called(spies) == [expected]
        assert d.token_type_of(token) == expected


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("unconfigured issuer", "oidc-other"),
        ("no issuer", "no-iss"),
        ("unsigned firebase token, no emulator mode", "firebase-none"),
        ("not a JWT", "opaque"),
        ("two segments", "two"),
    ],
)
def test_unroutable_tokens_are_401_and_reach_no_verifier(spies, firebase, oidc, name, token):
    tokens = {
        "oidc-other": OidcIssuerKeys("https://other.test/").mint("u"),
        "no-iss": oidc.mint("u", iss=None),
        "firebase-none": firebase.mint(None, "u", "acme", variant="none"),
        "opaque": "sk-not-a-relay-credential",
        "two": "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0",
    }
    d = dispatcher(spies)
    with pytest.raises(AuthenticationFailed):
        asyncio.run(d.verify(tokens[token]))
    assert only_called(spies) == []
    assert d.token_type_of(tokens[token]) == "unknown"


def test_emulator_mode_routes_unsigned_firebase_tokens_and_refuses_signed_ones(spies,
                                                                                firebase):
    d = dispatcher(spies, emulator=True)
    assert asyncio.run(d.verify(firebase.mint(None, "u", "acme", variant="none"))
                       ).token_type == "emulator"
    with pytest.raises(AuthenticationFailed):
        asyncio.run(d.verify(firebase.mint(None, "u", "acme")))
    assert spies["firebase"].calls == 0


def test_client_keys_switched_off_are_401(spies):
    d = dispatcher(spies)
    d.client_keys = None
    with pytest.raises(AuthenticationFailed):
        asyncio.run(d.verify("rk_" + "a" * 51))


# -- the emulator verifier -------------------------------------------------------------

def emulator_verify(token: str):
    return asyncio.run(FirebaseEmulatorVerifier(PROJECT).verify(token))


def test_emulator_token_accepted_with_its_claims(firebase):
    identity = emulator_verify(firebase.mint(None, "uid-1", "acme", variant="none"))
    assert (identity.subject, identity.client_id, identity.token_type) == (
        "uid-1", "acme", "firebase_emulator")
    tenant = emulator_verify(firebase.mint(None, "uid-2", None, tenant="globex",
                                           variant="none"))
    assert tenant.client_id == "globex"  # Identity Platform tenant → clientId


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("signed, not unsigned", {"variant": "rs256"}),
        ("other project", {"aud": "other-project"}),
        ("wrong issuer", {"iss": "https://securetoken.google.com/other"}),
        ("empty subject", {"sub": ""}),
        ("expired", {"now": time.time() - 7200}),
        ("issued in the future", {"iat": int(time.time() + 10 * 86400)}),
    ],
)
def test_emulator_verifier_still_checks_what_it_can(firebase, name, kwargs):
    token = firebase.mint(None, "uid-1", "acme", **{"variant": "none", **kwargs})
    with pytest.raises(AuthenticationFailed):
        emulator_verify(token)


def test_emulator_verifier_refuses_alg_none_with_a_signature(firebase):
    with pytest.raises(AuthenticationFailed):
        emulator_verify(firebase.mint(None, "uid-1", "acme", variant="none") + "c2ln")


def test_emulator_token_without_client_id(firebase):
    with pytest.raises(ClientIdNotFound):
        emulator_verify(firebase.mint(None, "uid-1", None, variant="none"))


# -- built from Settings -------------------------------------------------------------------

def test_build_from_settings_enables_what_is_configured():
    issuers = json.dumps([{"issuer": OIDC_ISS, "audience": "relay",
                           "jwks_url": "https://login.example.test/jwks"}])
    d = build_token_verifiers(Settings.from_env({
        "AUTHZ_FIREBASE_PROJECT_ID": PROJECT, "AUTHZ_OIDC_ISSUERS": issuers}))
    assert d.firebase is not None
    assert d.firebase_emulator is None
    assert list(d.oidc) == [OIDC_ISS]
    assert d.client_keys is not None
    assert len(d.stores) == 2  # Firebase certs and the issuer's JWKS
    assert not d.ready

    keys_only = build_token_verifiers(Settings.from_env({"AUTHZ_CLIENT_KEYS": "on"}))
    assert keys_only.firebase is None
    assert keys_only.oidc == {}
    assert keys_only.stores == ()
    assert keys_only.ready  # nothing to fetch

    emulator = build_token_verifiers(Settings.from_env({
        "AUTHZ_FIREBASE_PROJECT_ID": PROJECT, "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099",
        "AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS": "true", "AUTHZ_CLIENT_KEYS": "off"}))
    assert emulator.firebase is None
    assert emulator.firebase_emulator is not None
    assert emulator.client_keys is None
    assert emulator.stores == ()
