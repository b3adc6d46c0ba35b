"""Generic OIDC / JWT issuers (Auth0, Keycloak, Google, your own), one verifier per issuer.

Configured by AUTHZ_OIDC_ISSUERS: a JSON list (inline, or a path to a JSON file) of

    {"issuer": "https://login.example.com/",       exact `iss`
     "audience": "relay" | ["relay", "api"],        the token's `aud` must hold one of these
     "jwks_url": "https://login.example.com/.well-known/jwks.json",
     "client_id_claim": "tenant" | ["org", "tenant"] (default "clientId"; dots for nested)
       or "client_id": "acme"                       (every caller of this issuer is tenant acme)
     "algorithms": ["RS256"]}                        (default ["RS256"]; RS256/RS384/RS512 only)

Checks, as for Firebase: the header's alg is in the issuer's allow-list before any key is
chosen, a kid is required and names a key in the issuer's JWKS (whose own alg, when given,
must match), the signature, iss, aud, exp, iat and nbf with the bounded clock skew, and a
non-empty sub of at most 255 characters.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from authz.credentials.identity import Identity, identity_from_claims
from authz.credentials.jose import jwt
from authz.credentials.jose.certs import KeyStore
from authz.credentials.jose.jwks import Jwk
from authz.errors import AuthenticationFailed, ConfigError
from authz.tenants.client_id import CLAIM_PATH as _CLAIM_PATH
from authz.tenants.client_id import client_id_from_claims, is_valid_client_id

SETTING = "AUTHZ_OIDC_ISSUERS"
_KNOWN_FIELDS = frozenset({"issuer", "audience", "jwks_url", "client_id_claim", "client_id",
                           "algorithms"})
MAX_SUBJECT_CHARS = 255


@dataclass(frozen=True)
class OidcIssuer:
    issuer: str
    audiences: tuple[str, ...]
    jwks_url: str
    client_id_claims: tuple[str, ...] = ("clientId",)
    client_id: str | None = None
    algorithms: tuple[str, ...] = ("RS256",)


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a URL")
    parts = urlsplit(value)
    if not parts.hostname or parts.scheme not in ("https", "http"):
        raise ConfigError(f"{where}: {value!r} is not an http(s) URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(f"{where}: {value!r} must be https:// (plain http only on loopback)")
    return value


def _strings(where: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(
        isinstance(item, str) and item for item in items
    ):
        raise ConfigError(f"{where} must be a non-empty string or list of strings")
    return tuple(items)


def _issuer(index: int, entry: Any) -> OidcIssuer:
    where = f"{SETTING}[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an object")
    unknown = sorted(set(entry) - _KNOWN_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    issuer = _url(f"{where}.issuer", entry.get("issuer"))
    if "audience" not in entry:
        raise ConfigError(f"{where}.audience is required")
    audiences = _strings(f"{where}.audience", entry["audience"])
    jwks_url = _url(f"{where}.jwks_url", entry.get("jwks_url"))
    algorithms = _strings(f"{where}.algorithms", entry.get("algorithms", ["RS256"]))
    for alg in algorithms:
        if alg not in jwt.RSA_ALGORITHMS:
            raise ConfigError(f"{where}.algorithms: {alg!r} is not one of "
                              f"{', '.join(jwt.RSA_ALGORITHMS)}")
    client_id = entry.get("client_id")
    if client_id is not None:
        if "client_id_claim" in entry:
            raise ConfigError(f"{where}: give client_id or client_id_claim, not both")
        if not isinstance(client_id, str) or not is_valid_client_id(client_id):
            raise ConfigError(f"{where}.client_id: {client_id!r} is not a valid client id")
        claims: tuple[str, ...] = ()
    else:
        claims = _strings(f"{where}.client_id_claim", entry.get("client_id_claim", "clientId"))
        for claim in claims:
            if not _CLAIM_PATH.match(claim):
                raise ConfigError(f"{where}.client_id_claim: {claim!r} is not a claim name")
    return OidcIssuer(issuer, audiences, jwks_url, claims, client_id, algorithms)


def parse_oidc_issuers(raw: str) -> tuple[OidcIssuer, ...]:
    """AUTHZ_OIDC_ISSUERS (inline JSON list, or the path of a file holding one) → issuers."""
    raw = raw.strip()
    if not raw:
        return ()
    if raw.startswith("["):
        text = raw
    else:
        try:
            text = Path(raw).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{SETTING}: neither a JSON list nor a readable file: "
                              f"{exc.strerror or exc}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{SETTING}: not valid JSON ({exc})") from None
    if not isinstance(document, list):
        raise ConfigError(f"{SETTING} must be a JSON list of issuers")
    issuers = tuple(_issuer(i, entry) for i, entry in enumerate(document))
    seen: set[str] = set()
    for issuer in issuers:
        if issuer.issuer in seen:
            raise ConfigError(f"{SETTING}: issuer {issuer.issuer!r} is configured twice")
        seen.add(issuer.issuer)
    return issuers


class OidcVerifier:
    token_type = "oidc"

    def __init__(
        self,
        config: OidcIssuer,
        keys: KeyStore[Jwk],
        *,
        clock_skew_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.keys = keys
        self._skew = clock_skew_s
        self._clock = clock

    def token_type_of(self, token: str) -> str:
        return self.token_type

    async def verify(self, token: str) -> Identity:
        return await self.verify_jws(jwt.parse(token))

    async def verify_jws(self, jws: jwt.ParsedJws) -> Identity:
        claims = await self.verified_claims(jws)
        client_id = self.config.client_id or client_id_from_claims(
            claims, self.config.client_id_claims)
        return identity_from_claims(claims, client_id=client_id, token_type=self.token_type)

    async def verified_claims(self, jws: jwt.ParsedJws) -> dict[str, Any]:
        alg, kid = jwt.algorithm_and_kid(jws, self.config.algorithms)
        jwk = await self.keys.key_for(kid)
        if jwk is None:
            raise AuthenticationFailed("token signed by an unknown key")
        if jwk.alg is not None and jwk.alg != alg:
            raise AuthenticationFailed("token algorithm does not match its key")
        jwt.verify_rsa(jws, jwk.key, alg)
        self.check_claims(jws.payload)
        return jws.payload

    def check_claims(self, claims: dict[str, Any]) -> None:
        now = self._clock()
        if claims.get("iss") != self.config.issuer:
            raise AuthenticationFailed("token issuer is not this issuer")
        aud = claims.get("aud")
        audiences: Sequence[Any] = [aud] if isinstance(aud, str) else (
            aud if isinstance(aud, list) else [])
        if not any(isinstance(a, str) and a in self.config.audiences for a in audiences):
            raise AuthenticationFailed("token audience is not accepted")
        jwt.check_times(claims, now, self._skew)
        jwt.check_subject(claims, MAX_SUBJECT_CHARS)
