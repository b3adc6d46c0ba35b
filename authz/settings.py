"""Settings: read from the environment (and CLI flags), validated once at start-up.

A bad setting raises ConfigError with a message naming the variable, and the process
refuses to start. Nothing downstream re-reads the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from authz import token_settings
from authz.credentials.oidc import OidcIssuer
from authz.errors import ConfigError
from authz.tenants import vault_login as vault_auth
from authz.tenants.vault_login import DEFAULT_K8S_TOKEN_FILE

GOOGLE_SECURETOKEN_CERTS_URL = (
    "https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com"
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
# Firebase project ids: 6-30 chars, lowercase letters, digits, hyphens (demo- projects too).
_PROJECT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{4,62}[a-z0-9]$")
# Vault mounts and paths: plain segments, no "..", no empty segment, no leading slash.
_VAULT_SEGMENTS = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")
_CLAIM_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")


def parse_duration(name: str, raw: str) -> float:
    """'2s', '250ms', '5m', '1h' or a bare number of seconds → seconds (float)."""
    match = _DURATION.match(raw)
    if not match:
        raise ConfigError(f"{name}: {raw!r} is not a duration (examples: 2s, 250ms, 5m, 1h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _parse_int(name: str, raw: str) -> int:
    if not raw.strip().isdigit():
        raise ConfigError(f"{name}: {raw!r} is not a whole number")
    return int(raw)


def parse_addr(name: str, raw: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as '[::1]:PORT') → (host, port)."""
    host, sep, port_text = raw.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{name}: {raw!r} is not HOST:PORT")
    return host, int(port_text)


@dataclass(frozen=True)
class Settings:
    # Empty when Firebase ID tokens are not accepted (see token_settings for when it may be).
    firebase_project_id: str = ""
    firebase_certs_url: str = GOOGLE_SECURETOKEN_CERTS_URL
    upstream_url: str = "https://api.openai.com"
    upstream_ca_file: str | None = None
    vault_addr: str = "http://127.0.0.1:8200"
    vault_token: str = field(default="", repr=False)
    vault_mount: str = "secret"
    vault_path: str = "openai/clients/{client_id}"
    # How the service logs in to Vault (authz/vault_auth.py): token, approle or kubernetes.
    vault_auth: str = "token"
    vault_auth_mount: str = ""  # empty: the method's name
    vault_role_id: str = field(default="", repr=False)
    vault_role_id_file: str | None = None
    vault_secret_id_file: str | None = None
    vault_k8s_role: str = ""
    vault_k8s_token_file: str = DEFAULT_K8S_TOKEN_FILE
    client_id_claims: tuple[str, ...] = ("clientId", "firebase.tenant")
    check_timeout_s: float = 2.0
    stream_idle_timeout_s: float = 300.0
    grpc_addr: tuple[str, int] = ("127.0.0.1", 9001)
    metrics_addr: tuple[str, int] | None = ("127.0.0.1", 9464)
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
    # The other token types (issue 6): read and checked by authz/token_settings.py.
    firebase_emulator_host: str | None = None
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
    client_key_index_path: str = "openai/client-keys"
    client_key_pepper: str = "vault:openai/relay/client-key-pepper"

    @property
    def client_keys_enabled(self) -> bool:
        return self.client_keys != "off"

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, object] | None = None
    ) -> Settings:
        env = os.environ if env is None else env

        def get(name: str, default: str = "") -> str:
            return env.get(name, default).strip()

        # Emulator refusal (unless in the explicit development mode), OIDC, client keys.
        token_values = token_settings.from_env(get, parse_duration)
        values: dict[str, object] = {
            "firebase_project_id": get("AUTHZ_FIREBASE_PROJECT_ID"),
            "firebase_certs_url": get("AUTHZ_FIREBASE_CERTS_URL") or GOOGLE_SECURETOKEN_CERTS_URL,
            "upstream_url": get("AUTHZ_UPSTREAM_URL") or "https://api.openai.com",
            "upstream_ca_file": get("AUTHZ_UPSTREAM_CA_FILE") or None,
            "vault_addr": get("VAULT_ADDR") or "http://127.0.0.1:8200",
            "vault_token": get("VAULT_TOKEN"),
            "vault_mount": get("AUTHZ_VAULT_MOUNT") or "secret",
            "vault_path": get("AUTHZ_VAULT_PATH") or "openai/clients/{client_id}",
            **vault_auth.settings_from_env(get),
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
            "grpc_addr": parse_addr("AUTHZ_GRPC_ADDR", get("AUTHZ_GRPC_ADDR") or "127.0.0.1:9001"),
            "metrics_addr": (
                None
                if get("AUTHZ_METRICS_ADDR").lower() in ("off", "none", "disabled")
                else parse_addr(
                    "AUTHZ_METRICS_ADDR", get("AUTHZ_METRICS_ADDR") or "127.0.0.1:9464"
                )
            ),
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
            "metrics_tenant_cap": _parse_int(
                "AUTHZ_METRICS_TENANT_CAP", get("AUTHZ_METRICS_TENANT_CAP") or "50"
            ),
            "log_level": (get("AUTHZ_LOG_LEVEL") or "INFO").upper(),
            **token_values,
        }
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        token_settings.validate(self)
        if self.firebase_project_id and not _PROJECT_ID.match(self.firebase_project_id):
            raise ConfigError(
                f"AUTHZ_FIREBASE_PROJECT_ID: {self.firebase_project_id!r} is not a project id"
            )
        for name, url in (("AUTHZ_FIREBASE_CERTS_URL", self.firebase_certs_url),
                          ("VAULT_ADDR", self.vault_addr),
                          ("AUTHZ_UPSTREAM_URL", self.upstream_url)):
            if not url.startswith(("https://", "http://")):
                raise ConfigError(f"{name}: {url!r} must be an http:// or https:// URL")
        if self.upstream_ca_file and not os.path.isfile(self.upstream_ca_file):
            raise ConfigError(f"AUTHZ_UPSTREAM_CA_FILE: {self.upstream_ca_file!r} is not a file")
        if "{client_id}" not in self.vault_path:
            raise ConfigError("AUTHZ_VAULT_PATH must contain {client_id}")
        if not _VAULT_SEGMENTS.match(self.vault_mount):
            raise ConfigError(f"AUTHZ_VAULT_MOUNT: {self.vault_mount!r} is not a mount path")
        if not _VAULT_SEGMENTS.match(self.vault_path.replace("{client_id}", "x")):
            raise ConfigError(f"AUTHZ_VAULT_PATH: {self.vault_path!r} is not a secret path")
        vault_auth.validate_settings(self)
        if not self.client_id_claims:
            raise ConfigError("AUTHZ_CLIENT_ID_CLAIMS must name at least one claim")
        for claim in self.client_id_claims:
            if not _CLAIM_PATH.match(claim):
                raise ConfigError(f"AUTHZ_CLIENT_ID_CLAIMS: {claim!r} is not a claim name "
                                  "(dots separate nested claims: firebase.tenant)")
        if not 0 < self.check_timeout_s <= 60:
            raise ConfigError("AUTHZ_CHECK_TIMEOUT must be between 1ms and 60s")
        if not 0 < self.stream_idle_timeout_s <= 24 * 3600:
            raise ConfigError("AUTHZ_STREAM_IDLE_TIMEOUT must be between 1ms and 24h")
        if not 0 < self.key_cache_ttl_s <= 24 * 3600:
            raise ConfigError("AUTHZ_KEY_CACHE_TTL must be between 1ms and 24h")
        if not 0 <= self.key_stale_if_error_s <= 7 * 24 * 3600:
            raise ConfigError("AUTHZ_KEY_STALE_IF_ERROR must be between 0 and 7 days")
        if not 0 <= self.key_negative_ttl_s <= 3600:
            raise ConfigError("AUTHZ_KEY_NEGATIVE_TTL must be between 0 and 1h")
        if not 0 <= self.clock_skew_s <= 300:
            raise ConfigError("AUTHZ_CLOCK_SKEW must be between 0 and 5m")
        if not 0 <= self.drain_timeout_s <= 3600:
            raise ConfigError("AUTHZ_DRAIN_TIMEOUT must be between 0 and 1h")
        if not 0 <= self.metrics_tenant_cap <= 10_000:
            raise ConfigError("AUTHZ_METRICS_TENANT_CAP must be between 0 and 10000")
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("AUTHZ_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
