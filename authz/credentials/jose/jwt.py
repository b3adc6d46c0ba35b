"""Compact JWS parsing and RSA signature checks, strict by construction: the one JWS path.

Only what a verifier needs: split, decode, check alg against an allow-list *before*
choosing a key, verify with a key picked by kid. There is no code path that accepts
"none" or an HMAC algorithm for a signed token, so key-confusion cannot pass.

Every token has exactly one spelling, so the identity cache (keyed by the token) cannot
be filled with variants of one token and no variant is worth an RSA check:
- each segment is base64url without padding, canonical (no stray bits in the last
  character; `+`, `/`, `=` and whitespace are refused);
- header and payload are JSON objects with no duplicate member names and only finite
  numbers (`NaN`, `Infinity` and numbers that overflow a double are refused);
- a `crit` header is refused: we implement no JWS extension (RFC 7515 §4.1.11).
A token is decoded once (`parse`); the dispatcher routes the parsed token to its verifier.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from authz.errors import AuthenticationFailed

MAX_TOKEN_BYTES = 16 * 1024
_PKCS1v15 = padding.PKCS1v15()
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class ParsedJws:
    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def b64url_decode(segment: str) -> bytes:
    """Strict, canonical base64url without padding (RFC 7515 §2); else ValueError."""
    if _SEGMENT.fullmatch(segment) is None or len(segment) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc
    # Unused low bits of the last character must be zero: one byte string, one spelling.
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != segment.encode("ascii"):
        raise ValueError("not canonical base64url")
    return raw


def _b64url(segment: str) -> bytes:
    try:
        return b64url_decode(segment)
    except ValueError as exc:
        raise AuthenticationFailed("token segment is not strict base64url") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("duplicate member name")
    return members


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float,
                           object_pairs_hook=_unique_members)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise AuthenticationFailed(f"token {what} is not strict JSON") from exc
    if not isinstance(value, dict):
        raise AuthenticationFailed(f"token {what} is not a JSON object")
    return value


def parse(token: str) -> ParsedJws:
    """Decode a compact JWS once, verifying nothing: nothing read here may be trusted
    until a verifier has checked the signature (routing by `iss` is safe, see verifiers).
    The signature may be empty only for the emulator's unsigned tokens, which only the
    emulator verifier accepts."""
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthenticationFailed("token too long")
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise AuthenticationFailed("token is not a compact JWS")
    header = _json_object(_b64url(parts[0]), "header")
    if "crit" in header:
        raise AuthenticationFailed("token header names critical extensions")
    payload = _json_object(_b64url(parts[1]), "payload")
    return ParsedJws(header, payload, f"{parts[0]}.{parts[1]}".encode("ascii"),
                     _b64url(parts[2]))


# RSASSA-PKCS1-v1_5 with SHA-2: the only algorithms a verifier may be configured with.
# No "none", no HMAC, no PSS/EC: a configured allow-list is a subset of these names.
RSA_ALGORITHMS: dict[str, hashes.HashAlgorithm] = {
    "RS256": hashes.SHA256(),
    "RS384": hashes.SHA384(),
    "RS512": hashes.SHA512(),
}


def algorithm_and_kid(jws: ParsedJws, allowed: tuple[str, ...]) -> tuple[str, str]:
    """The header's alg (one of `allowed`, checked before any key is chosen) and kid."""
    alg = jws.header.get("alg")
    if not isinstance(alg, str) or alg not in allowed or alg not in RSA_ALGORITHMS:
        raise AuthenticationFailed("token algorithm is not allowed")
    kid = jws.header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AuthenticationFailed("token has no key id")
    return alg, kid


def verify_rsa(jws: ParsedJws, key: RSAPublicKey, alg: str) -> None:
    """Check jws's signature with key under alg (one of RSA_ALGORITHMS)."""
    digest = RSA_ALGORITHMS.get(alg)
    if digest is None:
        raise AuthenticationFailed("token algorithm is not allowed")
    if not jws.signature:
        raise AuthenticationFailed("token is not signed")
    try:
        key.verify(jws.signature, jws.signing_input, _PKCS1v15, digest)
    except InvalidSignature as exc:
        raise AuthenticationFailed("token signature is invalid") from exc


def numeric_claim(payload: dict[str, Any], name: str) -> float:
    value = payload.get(name)
    # bool is an int in Python; a boolean timestamp is malformed. Integers too large for
    # a double, and (defensively, parse refuses them) NaN and infinities are refused.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthenticationFailed(f"token claim {name} is missing or not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise AuthenticationFailed(f"token claim {name} is not a finite number")
    return number


def optional_numeric_claim(payload: dict[str, Any], name: str) -> float | None:
    return None if name not in payload else numeric_claim(payload, name)


def check_times(claims: dict[str, Any], now: float, skew: float,
                *, not_after_now: tuple[str, ...] = ("iat",)) -> None:
    """exp in the future, the given claims (iat, auth_time...) not in the future and an
    optional nbf reached, each with `skew` seconds of tolerance. A time claim that is
    present must be a finite number, even one we do not otherwise need."""
    if numeric_claim(claims, "exp") <= now - skew:
        raise AuthenticationFailed("token expired")
    for name in not_after_now:
        if numeric_claim(claims, name) > now + skew:
            raise AuthenticationFailed(f"token {name} in the future")
    nbf = optional_numeric_claim(claims, "nbf")
    if nbf is not None and nbf > now + skew:
        raise AuthenticationFailed("token not yet valid")
    for name in ("iat", "auth_time"):
        optional_numeric_claim(claims, name)


def check_subject(claims: dict[str, Any], max_chars: int = 128) -> None:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > max_chars:
        raise AuthenticationFailed("token subject is empty, too long or not a string")
