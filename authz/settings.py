"""The one settings model: read from the environment (and CLI flags), validated once.

`serve`, `up` and every operator command build a Settings with `Settings.from_env`
(flags over environment over defaults). A bad setting raises ConfigError with a message
naming the variable, and the process refuses to start. This is the only module that reads
the process environment (through `authz/config/env.py`, its small parsers); everything
else takes values from here. The full
table of variables is docs/configuration.md (a unit test keeps the two in step).

Sections below: helpers; the Settings fields (core, Vault and its login, token types,
caches and drain); parsing; validation.

AUTHZ_FIREBASE_PROJECT_ID is required to serve unless OIDC issuers are configured or
AUTHZ_CLIENT_KEYS=on says, explicitly, that client keys alone are the way in.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from authz.config.env import (
    DEFAULT_GRPC_ADDR,
    DEFAULT_METRICS_ADDR,
    DEFAULT_VAULT_ADDR,
    format_addr,
    is_loopback_host,
    parse_addr,
    parse_bool,
    parse_duration,
    parse_int,
    parse_on_off,
    process_environment,
    require_https_off_loopback,
)
from authz.credentials.firebase import ISSUER_PREFIX
from authz.credentials.oidc import OidcIssuer, parse_oidc_issuers
from authz.errors import ConfigError
from authz.governance.policy import ALLOW_ALL, Policy, PolicyError, parse_policy
from authz.stack import cors
from authz.tenants.client_id import CLAIM_PATH
from authz.tenants.client_key_store import (
    DEFAULT_INDEX_PATH,
    DEFAULT_PEPPER,
    DEFAULT_TENANT_PATH,
    parse_pepper_source,
)
from authz.tenants.vault_login import AUTH_METHODS, DEFAULT_K8S_TOKEN_FILE, VaultLogin

__all__ = [
    "GOOGLE_SECURETOKEN_CERTS_URL",
    "Settings",
    "format_addr",
    "is_loopback_host",
    "parse_addr",
    "parse_bool",
    "parse_duration",
    "process_environment",
]

GOOGLE_SECURETOKEN_CERTS_URL = (
    "https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com"
)

# Firebase project ids: 6-30 chars, lowercase letters, digits, hyphens (demo- projects too).
_PROJECT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{4,62}[a-z0-9]$")
# Vault mounts and paths: plain segments, no "..", no empty segment, no leading slash.
_VAULT_SEGMENTS = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")


def parse_default_policy(raw: str) -> Policy:
    """AUTHZ_DEFAULT_POLICY: a policy as JSON; empty means {"endpoints": "all"}."""
    if not raw:
        return ALLOW_ALL
    try:
        return parse_policy(raw)
    except PolicyError as exc:
        raise ConfigError(f"AUTHZ_DEFAULT_POLICY: {exc}") from None


@dataclass(frozen=True)
class Settings:
    # -- core: what is accepted, where requests go --------------------------------------
    # Empty when Firebase ID tokens are not accepted (see the module doc for when it may be).
    firebase_project_id: str = ""
    firebase_certs_url: str = GOOGLE_SECURETOKEN_CERTS_URL
    upstream_url: str = "https://api.openai.com"
    upstream_ca_file: str | None = None
    client_id_claims: tuple[str, ...] = ("clientId", "firebase.tenant")
    check_timeout_s: float = 2.0
    stream_idle_timeout_s: float = 300.0
    grpc_addr: tuple[str, int] = ("127.0.0.1", 9001)
    metrics_addr: tuple[str, int] | None = ("127.0.0.1", 9464)
    # -- Vault (KV v2) and how the service logs in to it ---------------------------------
    vault_addr: str = DEFAULT_VAULT_ADDR
    # True when VAULT_ADDR was given: `authz up` starts its own dev server otherwise.
    vault_addr_given: bool = False
    vault_token: str = field(default="", repr=False)
    vault_mount: str = "secret"
    vault_path: str = DEFAULT_TENANT_PATH
    # token, approle or kubernetes (authz/tenants/vault_login.py).
    vault_auth: str = "token"
    vault_auth_mount: str = ""  # empty: the method's name
    vault_role_id: str = field(default="", repr=False)
    vault_role_id_file: str | None = None
    vault_secret_id_file: str | None = None
    vault_k8s_role: str = ""
    vault_k8s_token_file: str = DEFAULT_K8S_TOKEN_FILE
    # -- caches and drain ---------------------------------------------------------------
    # How long a key read from Vault is served before it is re-read in the background.
    key_cache_ttl_s: float = 300.0
    # How long past its TTL a cached key may still be served while Vault is unreachable.
    key_stale_if_error_s: float = 3600.0
    # How long "no key for this tenant" is remembered, so unknown tenants cannot flood Vault.
    key_negative_ttl_s: float = 5.0
    clock_skew_s: float = 30.0
    # On SIGTERM/Ctrl-C: how long in-flight checks and open streams may run to their end.
    drain_timeout_s: float = 30.0
    # Per-tenant metric series: only these tenants, or (when empty) the first N seen.
    metrics_tenants: tuple[str, ...] = ()
    metrics_tenant_cap: int = 50
    token_cache_size: int = 100_000
    log_level: str = "INFO"
    # Governance counters shared by every replica (redis://host:port/db); None: in process.
    redis_url: str | None = field(default=None, repr=False)
    # How long one Redis call may take before this replica counts on its own.
    redis_timeout_s: float = 0.25
    # -- the token types beyond Firebase's core -----------------------------------------
    firebase_emulator_host: str | None = None
    dev_accept_emulator_tokens: bool = False
    firebase_emulator_mode: bool = False
    firebase_check_revoked: bool = False
    firebase_user_cache_ttl_s: float = 60.0
    oidc_issuers: tuple[OidcIssuer, ...] = ()
    client_keys: str = "auto"
    client_key_cache_ttl_s: float = 30.0
    # How long past its TTL a client key's index record may be served while Vault fails
    # (a revocation made meanwhile is unseen that long): short, unlike tenant keys.
    client_key_stale_if_error_s: float = 60.0
    # How long a verified identity is reused at most before the token is verified again.
    identity_cache_ttl_s: float = 300.0
    client_key_index_path: str = DEFAULT_INDEX_PATH
    client_key_pepper: str = DEFAULT_PEPPER
    # -- operator commands --------------------------------------------------------------
    # The OpenAI key `authz tenant put` and `authz up --demo` store (never logged).
    openai_api_key: str = field(default="", repr=False)
    # `authz users`: the project when neither --project nor AUTHZ_FIREBASE_PROJECT_ID is set.
    google_cloud_project: str = ""
    # Browser origins allowed to call the relay (authz/stack/cors.py); Envoy enforces them.
    cors_origins: tuple[str, ...] = ()
    # Governance: the policy of a tenant whose Vault record has none (AUTHZ_DEFAULT_POLICY).
    default_policy: Policy = ALLOW_ALL
    # Envoy verifies Firebase ID tokens and injects tenant keys itself, fed over xDS by
    # this service (authz/fastpath/); what it cannot decide alone stays on ext_authz.
    fast_path: bool = False

    @property
    def client_keys_enabled(self) -> bool:
        return self.client_keys != "off"

    @property
    def vault_login(self) -> VaultLogin:
        """What the Vault layer needs to log in: plain values, not this object."""
        return VaultLogin(
            addr=self.vault_addr, method=self.vault_auth, token=self.vault_token,
            mount=self.vault_auth_mount, role_id=self.vault_role_id,
            role_id_file=self.vault_role_id_file, secret_id_file=self.vault_secret_id_file,
            k8s_role=self.vault_k8s_role, k8s_token_file=self.vault_k8s_token_file,
        )

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, object] | None = None,
        *, serving: bool = True,
    ) -> Settings:
        """Defaults, then the environment, then `overrides` (CLI flags); validated.

        `serving=False` (operator commands) skips the checks that only matter to a
        running relay: that some token type is accepted, the emulator refusal.
        """
        env = process_environment() if env is None else env

        def get(name: str, default: str = "") -> str:
            return env.get(name, default).strip()

        client_keys = (get("AUTHZ_CLIENT_KEYS") or "auto").lower()
        if client_keys not in ("on", "off", "auto"):
            raise ConfigError(f"AUTHZ_CLIENT_KEYS: {client_keys!r} must be on, off or auto")
        emulator_host = get("FIREBASE_AUTH_EMULATOR_HOST")
        dev_flag = parse_bool("AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS",
                              get("AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS"))
        metrics_raw = get("AUTHZ_METRICS_ADDR")
        values: dict[str, object] = {
            # core
            "firebase_project_id": get("AUTHZ_FIREBASE_PROJECT_ID"),
            "firebase_certs_url": get("AUTHZ_FIREBASE_CERTS_URL") or GOOGLE_SECURETOKEN_CERTS_URL,
            "upstream_url": get("AUTHZ_UPSTREAM_URL") or "https://api.openai.com",
            "upstream_ca_file": get("AUTHZ_UPSTREAM_CA_FILE") or None,
            "client_id_claims": tuple(
                c.strip()
                for c in (get("AUTHZ_CLIENT_ID_CLAIMS") or "clientId,firebase.tenant").split(",")
                if c.strip()
            ),
            "check_timeout_s": parse_duration(
                "AUTHZ_CHECK_TIMEOUT", get("AUTHZ_CHECK_TIMEOUT") or "2s"
            ),
            "stream_idle_timeout_s": parse_duration(
                "AUTHZ_STREAM_IDLE_TIMEOUT", get("AUTHZ_STREAM_IDLE_TIMEOUT") or "300s"
            ),
            "grpc_addr": parse_addr("AUTHZ_GRPC_ADDR", get("AUTHZ_GRPC_ADDR") or DEFAULT_GRPC_ADDR),
            "metrics_addr": (
                None if metrics_raw.lower() in ("off", "none", "disabled")
                else parse_addr("AUTHZ_METRICS_ADDR", metrics_raw or DEFAULT_METRICS_ADDR)
            ),
            # Vault and its login
            "vault_addr": get("VAULT_ADDR") or DEFAULT_VAULT_ADDR,
            "vault_addr_given": bool(get("VAULT_ADDR")),
            "vault_token": get("VAULT_TOKEN"),
            "vault_mount": get("AUTHZ_VAULT_MOUNT") or "secret",
            "vault_path": get("AUTHZ_VAULT_PATH") or DEFAULT_TENANT_PATH,
            "vault_auth": (get("AUTHZ_VAULT_AUTH") or "token").lower(),
            "vault_auth_mount": get("AUTHZ_VAULT_AUTH_MOUNT"),
            "vault_role_id": get("AUTHZ_VAULT_ROLE_ID"),
            "vault_role_id_file": get("AUTHZ_VAULT_ROLE_ID_FILE") or None,
            "vault_secret_id_file": get("AUTHZ_VAULT_SECRET_ID_FILE") or None,
            "vault_k8s_role": get("AUTHZ_VAULT_K8S_ROLE"),
            "vault_k8s_token_file": get("AUTHZ_VAULT_K8S_TOKEN_FILE") or DEFAULT_K8S_TOKEN_FILE,
            # caches and drain
            "key_cache_ttl_s": parse_duration(
                "AUTHZ_KEY_CACHE_TTL", get("AUTHZ_KEY_CACHE_TTL") or "300s"
            ),
            "key_stale_if_error_s": parse_duration(
                "AUTHZ_KEY_STALE_IF_ERROR", get("AUTHZ_KEY_STALE_IF_ERROR") or "1h"
            ),
            "key_negative_ttl_s": parse_duration(
                "AUTHZ_KEY_NEGATIVE_TTL", get("AUTHZ_KEY_NEGATIVE_TTL") or "5s"
            ),
            "clock_skew_s": parse_duration("AUTHZ_CLOCK_SKEW", get("AUTHZ_CLOCK_SKEW") or "30s"),
            "drain_timeout_s": parse_duration(
                "AUTHZ_DRAIN_TIMEOUT", get("AUTHZ_DRAIN_TIMEOUT") or "30s"
            ),
            "metrics_tenants": tuple(
                t.strip() for t in get("AUTHZ_METRICS_TENANTS").split(",") if t.strip()
            ),
            "metrics_tenant_cap": parse_int(
                "AUTHZ_METRICS_TENANT_CAP", get("AUTHZ_METRICS_TENANT_CAP") or "50"
            ),
            "log_level": (get("AUTHZ_LOG_LEVEL") or "INFO").upper(),
            # token types
            "firebase_emulator_host": emulator_host or None,
            "dev_accept_emulator_tokens": dev_flag,
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
                "AUTHZ_CLIENT_KEY_STALE_IF_ERROR",
                get("AUTHZ_CLIENT_KEY_STALE_IF_ERROR") or "60s"),
            "identity_cache_ttl_s": parse_duration(
                "AUTHZ_IDENTITY_CACHE_TTL", get("AUTHZ_IDENTITY_CACHE_TTL") or "5m"),
            "client_key_index_path": get("AUTHZ_CLIENT_KEY_INDEX_PATH") or DEFAULT_INDEX_PATH,
            "client_key_pepper": get("AUTHZ_CLIENT_KEY_PEPPER") or DEFAULT_PEPPER,
            # operator commands
            "openai_api_key": get("OPENAI_API_KEY"),
            "google_cloud_project": get("GOOGLE_CLOUD_PROJECT"),
            **cors.settings_from_env(get),
            "redis_url": get("AUTHZ_REDIS_URL") or None,
            "redis_timeout_s": parse_duration(
                "AUTHZ_REDIS_TIMEOUT", get("AUTHZ_REDIS_TIMEOUT") or "250ms"
            ),
            "default_policy": parse_default_policy(get("AUTHZ_DEFAULT_POLICY")),
            "fast_path": parse_on_off("AUTHZ_FAST_PATH", get("AUTHZ_FAST_PATH") or "off"),
        }
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        if "vault_addr" in given:
            given.setdefault("vault_addr_given", True)
        values.update(given)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate(serving=serving)
        return settings

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not what was meant (printed at start)."""
        found = []
        if self.vault_addr_given and self.vault_auth == "token" and not self.vault_token:
            found.append(f"VAULT_ADDR is set ({self.vault_addr}) but VAULT_TOKEN is not: "
                         "Vault will refuse every read (set VAULT_TOKEN, or AUTHZ_VAULT_AUTH)")
        firebase_served = bool(self.firebase_project_id) and not (
            self.firebase_emulator_mode or self.firebase_check_revoked)
        if not is_loopback_host(self.grpc_addr[0]):
            found.append(f"AUTHZ_GRPC_ADDR {format_addr(self.grpc_addr)} is not loopback: "
                         "whoever reaches it with a user's token can call Check and read the "
                         "tenant's key in its answer; keep it where only Envoy can reach it")
        if self.fast_path and not firebase_served and not self.oidc_issuers:
            found.append("AUTHZ_FAST_PATH=on serves Firebase ID and OIDC tokens only, and "
                         "Firebase's not with the emulator or AUTHZ_FIREBASE_CHECK_REVOKED: "
                         "here every request still goes to ext_authz")
        return found

    def validate(self, *, serving: bool = True) -> None:
        if serving:
            self._validate_ways_in()
        if self.dev_accept_emulator_tokens and not self.firebase_emulator_host:
            raise ConfigError("AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS=true needs "
                              "FIREBASE_AUTH_EMULATOR_HOST (the emulator's HOST:PORT)")
        if self.firebase_project_id and not _PROJECT_ID.match(self.firebase_project_id):
            raise ConfigError(
                f"AUTHZ_FIREBASE_PROJECT_ID: {self.firebase_project_id!r} is not a project id"
            )
        # Signing keys and Vault secrets come from these: https unless on this machine.
        require_https_off_loopback("AUTHZ_FIREBASE_CERTS_URL", self.firebase_certs_url)
        require_https_off_loopback("VAULT_ADDR", self.vault_addr)
        if not self.upstream_url.startswith(("https://", "http://")):
            raise ConfigError(
                f"AUTHZ_UPSTREAM_URL: {self.upstream_url!r} must be an http:// or https:// URL")
        if self.upstream_ca_file and not os.path.isfile(self.upstream_ca_file):
            raise ConfigError(f"AUTHZ_UPSTREAM_CA_FILE: {self.upstream_ca_file!r} is not a file")
        self._validate_vault()
        if not self.client_id_claims:
            raise ConfigError("AUTHZ_CLIENT_ID_CLAIMS must name at least one claim")
        for claim in self.client_id_claims:
            if not CLAIM_PATH.match(claim):
                raise ConfigError(f"AUTHZ_CLIENT_ID_CLAIMS: {claim!r} is not a claim name "
                                  "(dots separate nested claims: firebase.tenant)")
        for name, value, low, high, text in (
            ("AUTHZ_CHECK_TIMEOUT", self.check_timeout_s, 0, 60, "1ms and 60s"),
            ("AUTHZ_STREAM_IDLE_TIMEOUT", self.stream_idle_timeout_s, 0, 86400, "1ms and 24h"),
            ("AUTHZ_KEY_CACHE_TTL", self.key_cache_ttl_s, 0, 86400, "1ms and 24h"),
            ("AUTHZ_CLIENT_KEY_CACHE_TTL", self.client_key_cache_ttl_s, 0, 3600, "1ms and 1h"),
            ("AUTHZ_IDENTITY_CACHE_TTL", self.identity_cache_ttl_s, 0, 3600, "1ms and 1h"),
            ("AUTHZ_FIREBASE_USER_CACHE_TTL", self.firebase_user_cache_ttl_s, 0, 3600,
             "1ms and 1h"),
        ):
            if not low < value <= high:
                raise ConfigError(f"{name} must be between {text}")
        for name, value, high, text in (
            ("AUTHZ_KEY_STALE_IF_ERROR", self.key_stale_if_error_s, 7 * 86400, "0 and 7 days"),
            ("AUTHZ_KEY_NEGATIVE_TTL", self.key_negative_ttl_s, 3600, "0 and 1h"),
            ("AUTHZ_CLIENT_KEY_STALE_IF_ERROR", self.client_key_stale_if_error_s, 3600,
             "0 and 1h"),
            ("AUTHZ_CLOCK_SKEW", self.clock_skew_s, 300, "0 and 5m"),
            ("AUTHZ_DRAIN_TIMEOUT", self.drain_timeout_s, 3600, "0 and 1h"),
            ("AUTHZ_METRICS_TENANT_CAP", self.metrics_tenant_cap, 10_000, "0 and 10000"),
        ):
            if not 0 <= value <= high:
                raise ConfigError(f"{name} must be between {text}")
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("AUTHZ_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")

    def _validate_ways_in(self) -> None:
        """A running relay must accept some token type, and never unsigned ones silently."""
        project = self.firebase_project_id
        if self.firebase_emulator_host and not self.dev_accept_emulator_tokens:
            # Emulator tokens are unsigned: honouring them silently would accept forgeries.
            raise ConfigError(
                "FIREBASE_AUTH_EMULATOR_HOST is set: emulator tokens carry no signature, so "
                "this service refuses to start rather than accept unsigned tokens. Unset it, "
                "or, for local development only, also set AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS=true"
            )
        if not project and not self.oidc_issuers and self.client_keys != "on":
            raise ConfigError(
                "AUTHZ_FIREBASE_PROJECT_ID is required: the Firebase project whose ID tokens "
                "this relay accepts (or configure AUTHZ_OIDC_ISSUERS, or set "
                "AUTHZ_CLIENT_KEYS=on to accept relay-issued client keys only; "
                "`authz up --demo` does that for you)")
        if self.firebase_emulator_mode and not project:
            raise ConfigError("the Firebase Auth Emulator mode needs AUTHZ_FIREBASE_PROJECT_ID")
        if self.firebase_check_revoked and not project:
            raise ConfigError("AUTHZ_FIREBASE_CHECK_REVOKED needs AUTHZ_FIREBASE_PROJECT_ID")
        if project:
            for issuer in self.oidc_issuers:
                if issuer.issuer == ISSUER_PREFIX + project:
                    raise ConfigError("AUTHZ_OIDC_ISSUERS: Firebase's issuer is configured by "
                                      "AUTHZ_FIREBASE_PROJECT_ID, not as an OIDC issuer")

    def _validate_vault(self) -> None:
        if "{client_id}" not in self.vault_path:
            raise ConfigError("AUTHZ_VAULT_PATH must contain {client_id}")
        if not _VAULT_SEGMENTS.match(self.vault_mount):
            raise ConfigError(f"AUTHZ_VAULT_MOUNT: {self.vault_mount!r} is not a mount path")
        if not _VAULT_SEGMENTS.match(self.vault_path.replace("{client_id}", "x")):
            raise ConfigError(f"AUTHZ_VAULT_PATH: {self.vault_path!r} is not a secret path")
        if not _VAULT_SEGMENTS.match(self.client_key_index_path):
            raise ConfigError(f"AUTHZ_CLIENT_KEY_INDEX_PATH: {self.client_key_index_path!r} "
                              "is not a secret path")
        pepper = parse_pepper_source("AUTHZ_CLIENT_KEY_PEPPER", self.client_key_pepper)
        if pepper.kind == "vault" and not _VAULT_SEGMENTS.match(pepper.path):
            raise ConfigError(f"AUTHZ_CLIENT_KEY_PEPPER: {pepper.path!r} is not a secret path")
        if self.client_keys_enabled and not self.vault_path.endswith("/{client_id}"):
            raise ConfigError("AUTHZ_VAULT_PATH must end in /{client_id} while client keys are "
                              "enabled (their records live under it); or set AUTHZ_CLIENT_KEYS=off")
        if self.fast_path and not self.vault_path.endswith("/{client_id}"):
            raise ConfigError("AUTHZ_FAST_PATH=on needs AUTHZ_VAULT_PATH to end in "
                              "/{client_id}: the fast path lists the tenants under it")
        if self.fast_path and not is_loopback_host(self.grpc_addr[0]):
            # The ADS stream carries every tenant's key in the Lua config, unencrypted.
            raise ConfigError(f"AUTHZ_FAST_PATH=on needs a loopback AUTHZ_GRPC_ADDR (got "
                              f"{format_addr(self.grpc_addr)}): Envoy's config, served there "
                              "over plain gRPC, holds every tenant's key")
        method = self.vault_auth
        if method not in AUTH_METHODS:
            raise ConfigError(
                f"AUTHZ_VAULT_AUTH: {method!r} is not one of {', '.join(AUTH_METHODS)}")
        if self.vault_auth_mount and not _VAULT_SEGMENTS.match(self.vault_auth_mount):
            raise ConfigError(
                f"AUTHZ_VAULT_AUTH_MOUNT: {self.vault_auth_mount!r} is not a mount path")
        if method == "approle":
            if bool(self.vault_role_id) == bool(self.vault_role_id_file):
                raise ConfigError("AUTHZ_VAULT_AUTH=approle needs exactly one of "
                                  "AUTHZ_VAULT_ROLE_ID and AUTHZ_VAULT_ROLE_ID_FILE")
            for name, path in (("AUTHZ_VAULT_ROLE_ID_FILE", self.vault_role_id_file),
                               ("AUTHZ_VAULT_SECRET_ID_FILE", self.vault_secret_id_file)):
                if path and not os.path.isfile(path):
                    raise ConfigError(f"{name}: {path!r} is not a file")
        elif method == "kubernetes":
            if not self.vault_k8s_role:
                raise ConfigError("AUTHZ_VAULT_AUTH=kubernetes needs AUTHZ_VAULT_K8S_ROLE "
                                  "(the Vault role bound to this service account)")
            if not os.path.isfile(self.vault_k8s_token_file):
                raise ConfigError(f"AUTHZ_VAULT_K8S_TOKEN_FILE: {self.vault_k8s_token_file!r} "
                                  "is not a file (is a service account token mounted?)")
        if self.redis_url is not None and not re.match(
                r"^rediss?://[^/?#\s]+(/\d{1,2})?/?$", self.redis_url):
            raise ConfigError("AUTHZ_REDIS_URL must be redis://host:port/db "
                              "(or rediss:// for TLS)")
        if not 0 < self.redis_timeout_s <= 5:
            raise ConfigError("AUTHZ_REDIS_TIMEOUT must be between 1ms and 5s")
