"""The settings of the token types beyond Firebase's core: read and checked with Settings.

| variable | default | meaning |
|---|---|---|
| AUTHZ_OIDC_ISSUERS | none | JSON list (or a file path) of OIDC issuers, see oidc.py |
| AUTHZ_CLIENT_KEYS | auto | relay-issued `rk_` keys: on, off, or auto (= on) |
| AUTHZ_CLIENT_KEY_CACHE_TTL | 30s | a key's index entry is re-read after this: revocation delay |
| AUTHZ_CLIENT_KEY_STALE_IF_ERROR | 60s | index entry served this long past its TTL if Vault fails |
| AUTHZ_IDENTITY_CACHE_TTL | 5m | a verified token is verified again after this (or at its exp) |
| AUTHZ_CLIENT_KEY_INDEX_PATH | openai/client-keys | Vault path of the hash → key index |
| AUTHZ_CLIENT_KEY_PEPPER | vault:openai/relay/client-key-pepper | or file:/path |
| AUTHZ_FIREBASE_CHECK_REVOKED | false | refuse disabled, deleted and revoked users |
| AUTHZ_FIREBASE_USER_CACHE_TTL | 60s | how long a user's status is reused |
| FIREBASE_AUTH_EMULATOR_HOST | unset | honoured only with AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS=true |
| AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS | false | development only: accept unsigned emulator tokens |

AUTHZ_FIREBASE_PROJECT_ID is required unless OIDC issuers are configured or
AUTHZ_CLIENT_KEYS=on says, explicitly, that client keys alone are the way in.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from authz.credentials.firebase import ISSUER_PREFIX
from authz.credentials.oidc import parse_oidc_issuers
from authz.errors import ConfigError
from authz.tenants.client_key_store import DEFAULT_INDEX_PATH, DEFAULT_PEPPER, parse_pepper_source

if TYPE_CHECKING:
    from authz.settings import Settings

_VAULT_SEGMENTS = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}: {raw!r} is not true or false")


def from_env(get: Callable[..., str],
             parse_duration: Callable[[str, str], float]) -> dict[str, object]:
    emulator_host = get("FIREBASE_AUTH_EMULATOR_HOST")
    dev_flag = parse_bool("AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS",
                          get("AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS"))
    if emulator_host and not dev_flag:
        # Emulator tokens are unsigned: honouring them silently would accept forgeries.
        raise ConfigError(
            "FIREBASE_AUTH_EMULATOR_HOST is set: emulator tokens carry no signature, so this "
            "service refuses to start rather than accept unsigned tokens. Unset it, or, for "
            "local development only, also set AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS=true"
        )
    if dev_flag and not emulator_host:
        raise ConfigError("AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS=true needs "
                          "FIREBASE_AUTH_EMULATOR_HOST (the emulator's HOST:PORT)")
    client_keys = (get("AUTHZ_CLIENT_KEYS") or "auto").lower()
    if client_keys not in ("on", "off", "auto"):
        raise ConfigError(f"AUTHZ_CLIENT_KEYS: {client_keys!r} must be on, off or auto")
    return {
        "firebase_emulator_host": emulator_host or None,
        "firebase_emulator_mode": bool(emulator_host and dev_flag),
        "firebase_check_revoked": parse_bool("AUTHZ_FIREBASE_CHECK_REVOKED",
                                             get("AUTHZ_FIREBASE_CHECK_REVOKED")),
        "firebase_user_cache_ttl_s": parse_duration(
            "AUTHZ_FIREBASE_USER_CACHE_TTL", get("AUTHZ_FIREBASE_USER_CACHE_TTL") or "60s"),
        "oidc_issuers": parse_oidc_issuers(get("AUTHZ_OIDC_ISSUERS")),
        "client_keys": client_keys,
        "client_key_cache_ttl_s": parse_duration(
            "AUTHZ_CLIENT_KEY_CACHE_TTL", get("AUTHZ_CLIENT_KEY_CACHE_TTL") or "30s"),
        "client_key_stale_if_error_s": parse_duration(
            "AUTHZ_CLIENT_KEY_STALE_IF_ERROR", get("AUTHZ_CLIENT_KEY_STALE_IF_ERROR") or "60s"),
        "identity_cache_ttl_s": parse_duration(
            "AUTHZ_IDENTITY_CACHE_TTL", get("AUTHZ_IDENTITY_CACHE_TTL") or "5m"),
        "client_key_index_path": get("AUTHZ_CLIENT_KEY_INDEX_PATH") or DEFAULT_INDEX_PATH,
        "client_key_pepper": get("AUTHZ_CLIENT_KEY_PEPPER") or DEFAULT_PEPPER,
    }


def validate(settings: Settings) -> None:
    project = settings.firebase_project_id
    if not project and not settings.oidc_issuers and settings.client_keys != "on":
        raise ConfigError(
            "AUTHZ_FIREBASE_PROJECT_ID is required: the Firebase project whose ID tokens this "
            "relay accepts (or configure AUTHZ_OIDC_ISSUERS, or set AUTHZ_CLIENT_KEYS=on to "
            "accept relay-issued client keys only)")
    if settings.firebase_emulator_mode and not project:
        raise ConfigError("the Firebase Auth Emulator mode needs AUTHZ_FIREBASE_PROJECT_ID")
    if settings.firebase_check_revoked and not project:
        raise ConfigError("AUTHZ_FIREBASE_CHECK_REVOKED needs AUTHZ_FIREBASE_PROJECT_ID")
    if project:
        for issuer in settings.oidc_issuers:
            if issuer.issuer == ISSUER_PREFIX + project:
                raise ConfigError("AUTHZ_OIDC_ISSUERS: Firebase's issuer is configured by "
                                  "AUTHZ_FIREBASE_PROJECT_ID, not as an OIDC issuer")
    if not 0 < settings.client_key_cache_ttl_s <= 3600:
        raise ConfigError("AUTHZ_CLIENT_KEY_CACHE_TTL must be between 1ms and 1h")
    if not 0 <= settings.client_key_stale_if_error_s <= 3600:
        raise ConfigError("AUTHZ_CLIENT_KEY_STALE_IF_ERROR must be between 0 and 1h")
    if not 0 < settings.identity_cache_ttl_s <= 3600:
        raise ConfigError("AUTHZ_IDENTITY_CACHE_TTL must be between 1ms and 1h")
    if not 0 < settings.firebase_user_cache_ttl_s <= 3600:
        raise ConfigError("AUTHZ_FIREBASE_USER_CACHE_TTL must be between 1ms and 1h")
    if not _VAULT_SEGMENTS.match(settings.client_key_index_path):
        raise ConfigError(f"AUTHZ_CLIENT_KEY_INDEX_PATH: {settings.client_key_index_path!r} "
                          "is not a secret path")
    pepper = parse_pepper_source("AUTHZ_CLIENT_KEY_PEPPER", settings.client_key_pepper)
    if pepper.kind == "vault" and not _VAULT_SEGMENTS.match(pepper.path):
        raise ConfigError(f"AUTHZ_CLIENT_KEY_PEPPER: {pepper.path!r} is not a secret path")
    if (settings.client_keys_enabled and "{client_id}" in settings.vault_path
            and not settings.vault_path.endswith("/{client_id}")):
        raise ConfigError("AUTHZ_VAULT_PATH must end in /{client_id} while client keys are "
                          "enabled (their records live under it); or set AUTHZ_CLIENT_KEYS=off")
