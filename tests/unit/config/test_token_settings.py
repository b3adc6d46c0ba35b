"""Settings of the token types beyond Firebase: emulator refusal, ways in, client keys."""

import json

import pytest

from authz.errors import ConfigError
from authz.settings import Settings

PROJECT = {"AUTHZ_FIREBASE_PROJECT_ID": "demo-relay"}
EMULATOR = {"FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"}
ISSUERS = json.dumps([{"issuer": "https://login.example.test/", "audience": "relay",
                       "jwks_url": "https://login.example.test/jwks"}])


def test_emulator_host_alone_refuses_to_start_and_says_why():
    with pytest.raises(ConfigError, match="unsigned") as raised:
        Settings.from_env({**PROJECT, **EMULATOR})
    assert "AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS=true" in str(raised.value)


def test_emulator_mode_needs_both_the_host_and_the_flag():
    settings = Settings.from_env({**PROJECT, **EMULATOR,
                                  "AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS": "true"})
    assert settings.firebase_emulator_mode
    assert settings.firebase_emulator_host == "127.0.0.1:9099"
    with pytest.raises(ConfigError, match="FIREBASE_AUTH_EMULATOR_HOST"):
        Settings.from_env({**PROJECT, "AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS": "true"})
    with pytest.raises(ConfigError, match="AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS"):
        Settings.from_env({**PROJECT, **EMULATOR, "AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS": "maybe"})
    with pytest.raises(ConfigError, match="AUTHZ_FIREBASE_PROJECT_ID"):
        Settings.from_env({**EMULATOR, "AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS": "true",
                           "AUTHZ_CLIENT_KEYS": "on"})


def test_the_firebase_project_is_optional_when_another_way_in_is_configured():
    with pytest.raises(ConfigError, match="AUTHZ_FIREBASE_PROJECT_ID is required"):
        Settings.from_env({})
    with pytest.raises(ConfigError, match="AUTHZ_FIREBASE_PROJECT_ID is required"):
        Settings.from_env({"AUTHZ_CLIENT_KEYS": "auto"})
    assert Settings.from_env({"AUTHZ_OIDC_ISSUERS": ISSUERS}).oidc_issuers
    keys_only = Settings.from_env({"AUTHZ_CLIENT_KEYS": "on"})
    assert keys_only.client_keys_enabled
    assert not keys_only.firebase_project_id
    assert not Settings.from_env({**PROJECT, "AUTHZ_CLIENT_KEYS": "off"}).client_keys_enabled


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"AUTHZ_CLIENT_KEYS": "sometimes"}, "AUTHZ_CLIENT_KEYS"),
        ({"AUTHZ_CLIENT_KEY_CACHE_TTL": "2h"}, "AUTHZ_CLIENT_KEY_CACHE_TTL"),
        ({"AUTHZ_CLIENT_KEY_CACHE_TTL": "soon"}, "AUTHZ_CLIENT_KEY_CACHE_TTL"),
        ({"AUTHZ_CLIENT_KEY_INDEX_PATH": "../keys"}, "AUTHZ_CLIENT_KEY_INDEX_PATH"),
        ({"AUTHZ_CLIENT_KEY_PEPPER": "env:X"}, "AUTHZ_CLIENT_KEY_PEPPER"),
        ({"AUTHZ_CLIENT_KEY_PEPPER": "vault:../x"}, "AUTHZ_CLIENT_KEY_PEPPER"),
        ({"AUTHZ_VAULT_PATH": "tenants/{client_id}/openai"}, "AUTHZ_VAULT_PATH"),
        ({"AUTHZ_FIREBASE_CHECK_REVOKED": "perhaps"}, "AUTHZ_FIREBASE_CHECK_REVOKED"),
        ({"AUTHZ_FIREBASE_USER_CACHE_TTL": "0s"}, "AUTHZ_FIREBASE_USER_CACHE_TTL"),
        ({"AUTHZ_OIDC_ISSUERS": json.dumps([{
            "issuer": "https://securetoken.google.com/demo-relay", "audience": "demo-relay",
            "jwks_url": "https://x.test/j"}])}, "AUTHZ_OIDC_ISSUERS"),
    ],
)
def test_bad_token_settings_are_named(env, names):
    with pytest.raises(ConfigError, match=names):
        Settings.from_env({**PROJECT, **env})


def test_check_revoked_needs_a_firebase_project():
    assert Settings.from_env({**PROJECT, "AUTHZ_FIREBASE_CHECK_REVOKED": "true"}
                             ).firebase_check_revoked
    with pytest.raises(ConfigError, match="AUTHZ_FIREBASE_CHECK_REVOKED"):
        Settings.from_env({"AUTHZ_CLIENT_KEYS": "on", "AUTHZ_FIREBASE_CHECK_REVOKED": "true"})


def test_client_key_stale_bound_and_identity_reuse_have_short_defaults():
    settings = Settings.from_env({"AUTHZ_FIREBASE_PROJECT_ID": "demo-relay"})
    assert settings.client_key_stale_if_error_s == 60.0
    assert settings.key_stale_if_error_s == 3600.0  # tenant keys keep their hour
    assert settings.identity_cache_ttl_s == 300.0


@pytest.mark.parametrize(("name", "value"), [
    ("AUTHZ_CLIENT_KEY_STALE_IF_ERROR", "2h"),
    ("AUTHZ_CLIENT_KEY_STALE_IF_ERROR", "soon"),
    ("AUTHZ_IDENTITY_CACHE_TTL", "0s"),
    ("AUTHZ_IDENTITY_CACHE_TTL", "2h"),
])
def test_the_new_bounds_are_validated_and_named(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({"AUTHZ_FIREBASE_PROJECT_ID": "demo-relay", name: value})
