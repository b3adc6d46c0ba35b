"""Compact JWS parsing and RS256 signature checks, strict by construction.

Only what a verifier needs: split, decode, check alg against an allow-list *before*
choosing a key, verify with a key picked by kid. There is no code path that accepts
"none" or an HMAC algorithm, so key-confusion and unsigned tokens cannot pass.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from authz.errors import AuthenticationFailed

MAX_TOKEN_BYTES = 16 * 1024
_PKCS1v15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


@dataclass(frozen=True)
class ParsedJws:
    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _b64url(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise AuthenticationFailed("token segment is not base64url") from exc


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise AuthenticationFailed(f"token {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise AuthenticationFailed(f"token {what} is not a JSON object")
    return value


def parse(token: str) -> ParsedJws:
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthenticationFailed("token too long")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise AuthenticationFailed("token is not a signed compact JWS")
    header = _json_object(_b64url(parts[0]), "header")
    payload = _json_object(_b64url(parts[1]), "payload")
    return ParsedJws(header, payload, f"{parts[0]}.{parts[1]}".encode("ascii"),
                     _b64url(parts[2]))


def require_rs256_kid(jws: ParsedJws) -> str:
    if jws.header.get("alg") != "RS256":
        raise AuthenticationFailed("token algorithm is not RS256")
    kid = jws.header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AuthenticationFailed("token has no key id")
    return kid


def verify_rs256(jws: ParsedJws, key: RSAPublicKey) -> None:
    try:
        key.verify(jws.signature, jws.signing_input, _PKCS1v15, _SHA256)
    except InvalidSignature as exc:
        raise AuthenticationFailed("token signature is invalid") from exc


def numeric_claim(payload: dict[str, Any], name: str) -> float:
    value = payload.get(name)
    # bool is an int in Python; a boolean timestamp is malformed.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthenticationFailed(f"token claim {name} is missing or not a number")
    return float(value)


def optional_numeric_claim(payload: dict[str, Any], name: str) -> float | None:
    return None if payload.get(name) is None else numeric_claim(payload, name)


# RSASSA-PKCS1-v1_5 with SHA-2: the only algorithms an OIDC issuer may be configured with.
# No "none", no HMAC, no PSS/EC: a configured allow-list is a subset of these names.
RSA_ALGORITHMS: dict[str, hashes.HashAlgorithm] = {
    "RS256": hashes.SHA256(),
    "RS384": hashes.SHA384(),
    "RS512": hashes.SHA512(),
}


def verify_rsa(jws: ParsedJws, key: RSAPublicKey, alg: str) -> None:
    """Check jws's signature with key under alg (one of RSA_ALGORITHMS)."""
    digest = RSA_ALGORITHMS.get(alg)
    if digest is None:
        raise AuthenticationFailed("token algorithm is not allowed")
    try:
        key.verify(jws.signature, jws.signing_input, _PKCS1v15, digest)
    except InvalidSignature as exc:
        raise AuthenticationFailed("token signature is invalid") from exc


def peek(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(header, payload, signature segment) of a compact JWS, verifying nothing.

    For routing a token to its verifier and for unsigned emulator tokens only: nothing
    read here may be trusted until the chosen verifier has checked it.
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthenticationFailed("token too long")
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise AuthenticationFailed("token is not a compact JWS")
    return (_json_object(_b64url(parts[0]), "header"),
            _json_object(_b64url(parts[1]), "payload"), parts[2])


def check_times(claims: dict[str, Any], now: float, skew: float,
                *, not_after_now: tuple[str, ...] = ("iat",)) -> None:
    """exp in the future, the given claims (iat, auth_time...) not in the future and an
    optional nbf reached, each with `skew` seconds of tolerance."""
    if numeric_claim(claims, "exp") <= now - skew:
        raise AuthenticationFailed("token expired")
    for name in not_after_now:
        if numeric_claim(claims, name) > now + skew:
            raise AuthenticationFailed(f"token {name} in the future")
    nbf = optional_numeric_claim(claims, "nbf")
    if nbf is not None and nbf > now + skew:
        raise AuthenticationFailed("token not yet valid")


def check_subject(claims: dict[str, Any], max_chars: int = 128) -> None:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > max_chars:
        raise AuthenticationFailed("token subject is empty, too long or not a string")
