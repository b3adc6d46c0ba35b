"""Every authentication failure: the contract's JSON, and nothing forwarded upstream."""

import time

import httpx2 as httpx
import pytest

pytestmark = pytest.mark.integration

AUTH_FAILED = {"error": "Authentication failed"}
NOW = time.time()


def get(relay, headers):
    with httpx.Client(timeout=20) as client:
        return client.get(relay.api_base + "/models", headers=headers)


def assert_denied(response, upstream, status, body):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == body
    assert "server" not in response.headers
    assert not any(name.startswith("x-envoy") for name in response.headers)
    assert upstream.requests == []


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic dXNlcjpwYXNz", "Token abc", "garbage",
     "Bearer not-a-jwt", "Bearer a.b.c", "Bearer " + "A" * 20_000],
)
def test_missing_or_malformed_credentials(relay, upstream, authorization):
    headers = {} if authorization is None else {"authorization": authorization}
    assert_denied(get(relay, headers), upstream, 401, AUTH_FAILED)


@pytest.mark.parametrize(
    "mint_kwargs",
    [
        {"variant": "none"},
        {"variant": "hs256_confusion"},
        {"variant": "unknown_signer"},
        {"variant": "tampered"},
        {"kid": "unknown-kid"},
        {"remove_header": ["kid"]},
        {"now": NOW - 7200},
        {"iat": int(NOW + 3600)},
        {"auth_time": int(NOW + 3600)},
        {"aud": "other-project"},
        {"iss": "https://securetoken.google.com/other-project"},
        {"sub": ""},
    ],
    ids=["alg-none", "hs256-key-confusion", "unknown-signer", "tampered", "unknown-kid",
         "no-kid", "expired", "iat-future", "auth-time-future", "wrong-aud", "wrong-iss",
         "empty-sub"],
)
def test_forged_or_stale_tokens(relay, upstream, token_for, mint_kwargs):
    token = token_for("acme", **mint_kwargs)
    assert_denied(get(relay, {"authorization": f"Bearer {token}"}), upstream, 401, AUTH_FAILED)


def test_truncated_token(relay, upstream, token_for):
    token = token_for("acme")
    assert_denied(get(relay, {"authorization": f"Bearer {token[:-10]}"}), upstream, 401,
                  AUTH_FAILED)


@pytest.mark.parametrize("client_id", [None, "", "../globex", "a/b", 7, ["acme"]])
def test_no_resolvable_client_id_is_500(relay, upstream, firebase, client_id):
    extra = {} if client_id is None else {"clientId": client_id}
    token = firebase.mint(None, "user-x", None, **extra)
    assert_denied(get(relay, {"authorization": f"Bearer {token}"}), upstream, 500,
                  {"error": "Client ID not found"})


def test_known_client_without_a_key_is_500(relay, upstream, token_for):
    token = token_for("tenant-without-key")
    assert_denied(get(relay, {"authorization": f"Bearer {token}"}), upstream, 500,
                  {"error": "OpenAI API key not found"})


def test_firebase_tenant_claim_selects_the_tenant(relay, upstream, firebase, tenants):
    token = firebase.mint(None, "user-t", None, tenant="globex")
    response = get(relay, {"authorization": f"Bearer {token}"})
    assert response.status_code == 200
    [received] = upstream.requests
    assert received.header("authorization") == f"Bearer {tenants['globex'].api_key}"


def test_sdk_sees_authentication_errors_as_its_own_exception(relay, upstream):
    import openai

    client = openai.OpenAI(base_url=relay.api_base, api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as excinfo:
        client.models.list()
    assert excinfo.value.status_code == 401
    assert excinfo.value.body == AUTH_FAILED or excinfo.value.response.json() == AUTH_FAILED
    assert upstream.requests == []
