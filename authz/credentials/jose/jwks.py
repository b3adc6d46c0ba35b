"""JSON Web Key Sets (RFC 7517) of OIDC issuers: parsed into RSA public keys by kid.

Only what a strict RS* verifier can use is kept: `kty` RSA, a non-empty `kid`, `use`
absent or "sig", `alg` absent or one of jwt.RSA_ALGORITHMS. Other keys (EC, encryption
keys, unknown algorithms) are skipped, not fatal: issuers publish them side by side. A set
with no usable key, a duplicate kid or a malformed RSA key is refused as a whole, so the
store keeps its last good set.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers

from authz.credentials.jose.certs import KeyStore
from authz.credentials.jose.jwt import RSA_ALGORITHMS

log = logging.getLogger(__name__)

MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class Jwk:
    key: RSAPublicKey
    #: The key's own `alg`, when the issuer names one: a token must then use exactly it.
    alg: str | None


def _b64url_uint(value: Any, name: str) -> int:
    if not isinstance(value, str) or not value:
        raise ValueError(f"RSA key member {name} is missing")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"RSA key member {name} is not base64url") from exc
    return int.from_bytes(raw, "big")


def parse_jwks(body: bytes) -> dict[str, Jwk]:
    document = json.loads(body)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("JWKS is not an object with a 'keys' list")
    keys: dict[str, Jwk] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict):
            raise ValueError("JWKS entry is not an object")
        kid, alg = entry.get("kid"), entry.get("alg")
        if entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig":
            continue
        if alg is not None and alg not in RSA_ALGORITHMS:
            continue
        if not isinstance(kid, str) or not kid:
            continue  # a key without a kid can never be chosen: tokens must name one
        if kid in keys:
            raise ValueError(f"JWKS names kid {kid!r} twice")
        numbers = RSAPublicNumbers(_b64url_uint(entry.get("e"), "e"),
                                   _b64url_uint(entry.get("n"), "n"))
        key = numbers.public_key()
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"JWKS key {kid!r} is shorter than {MIN_RSA_BITS} bits")
        keys[kid] = Jwk(key, alg)
    if not keys:
        raise ValueError("JWKS holds no usable RSA signing key")
    return keys


class JwksStore(KeyStore[Jwk]):
    """One issuer's JWKS: fetched off the hot path, cached by Cache-Control max-age (5 min
    when the issuer sends none), re-fetched early (rate-limited) on an unknown kid."""

    def __init__(self, url: str, **options: Any) -> None:
        """Options as KeyStore's (fetch, timeouts, clock)."""
        options.setdefault("default_max_age_s", 300.0)
        super().__init__(url, parse_jwks, **options)
