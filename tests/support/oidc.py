"""A stand-in OIDC issuer: RSA signing keys by kid, a JWKS, RS256/384/512 tokens, and a
JWKS endpoint on 127.0.0.1 (live: a rotation shows at the next fetch).

``OidcIssuerKeys.mint(sub, **claims)`` signs a token for ``issuer``/``audience``;
``variant`` forges the usual attacks ("none", "hs256_confusion", "unknown_signer",
"tampered"), as tests/support/firebase.py does for Firebase.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

Variant = Literal["rs", "none", "hs256_confusion", "unknown_signer", "tampered"]
JWKS_PATH = "/.well-known/jwks.json"
_HASHES = {"RS256": hashes.SHA256, "RS384": hashes.SHA384, "RS512": hashes.SHA512}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(obj: Mapping[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def _uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def new_rsa(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def jwk(key: rsa.RSAPrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "use": "sig", "n": _uint(numbers.n),
            "e": _uint(numbers.e), **extra}


class OidcIssuerKeys:
    def __init__(self, issuer: str, audience: str = "relay", kids: int = 1) -> None:
        self.issuer = issuer
        self.audience = audience
        self._lock = threading.Lock()
        self._keys: dict[str, rsa.RSAPrivateKey] = {}
        self._jwk_extra: dict[str, dict[str, Any]] = {}
        self._rogue = new_rsa()
        for _ in range(kids):
            self.add_key()

    def add_key(self, kid: str | None = None, **jwk_extra: Any) -> str:
        kid = kid or uuid.uuid4().hex[:16]
        key = new_rsa()
        with self._lock:
            self._keys[kid] = key
            self._jwk_extra[kid] = jwk_extra
        return kid

    def remove_key(self, kid: str) -> None:
        with self._lock:
            del self._keys[kid]

    @property
    def kids(self) -> list[str]:
        with self._lock:
            return list(self._keys)

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [jwk(key, kid, **self._jwk_extra[kid])
                             for kid, key in self._keys.items()]}

    def claims(self, sub: str = "user-1", *, now: float | None = None, lifetime: int = 3600,
               **overrides: Any) -> dict[str, Any]:
        iat = int(now if now is not None else time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": self.audience, "sub": sub,
                                  "iat": iat, "exp": iat + lifetime}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(self, sub: str = "user-1", *, kid: str | None = None, alg: str = "RS256",
             variant: Variant = "rs", header: Mapping[str, Any] | None = None,
             now: float | None = None, lifetime: int = 3600, **claims: Any) -> str:
        kid = kid or self.kids[-1]
        hdr: dict[str, Any] = {"alg": {"none": "none", "hs256_confusion": "HS256"}.get(
            variant, alg), "kid": kid, "typ": "JWT"}
        hdr.update(header or {})
        hdr = {k: v for k, v in hdr.items() if v is not None}
        body = self.claims(sub, now=now, lifetime=lifetime, **claims)
        head, payload = _segment(hdr), _segment(body)
        signing_input = f"{head}.{payload}".encode("ascii")
        if variant == "none":
            return f"{head}.{payload}."
        if variant == "hs256_confusion":
            secret = json.dumps(self.jwks()).encode()
            mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
            return f"{head}.{payload}.{b64url(mac)}"
        with self._lock:
            key = self._rogue if variant == "unknown_signer" else self._keys.get(kid, self._rogue)
        signature = b64url(key.sign(signing_input, padding.PKCS1v15(), _HASHES[alg]()))
        if variant == "tampered":
            payload = _segment({**body, "sub": body["sub"] + "-tampered",
                                "clientId": "someone-else"})
        return f"{head}.{payload}.{signature}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        owner = self.server.owner
        if self.path.split("?", 1)[0] != JWKS_PATH:
            self.send_error(404)
            return
        body, status, max_age = owner.answer()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", f"public, max-age={max_age}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: JwksServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)


class JwksServer:
    """Serves ``keys.jwks()`` at http://127.0.0.1:PORT/.well-known/jwks.json."""

    def __init__(self, keys: OidcIssuerKeys, max_age: int = 300) -> None:
        self.keys = keys
        self.max_age = max_age
        self.down = False
        self.fetch_count = 0
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{JWKS_PATH}"

    def answer(self) -> tuple[bytes, int, int]:
        with self._lock:
            self.fetch_count += 1
            if self.down:
                return b'{"error": "unavailable"}', 503, 0
        return json.dumps(self.keys.jwks()).encode(), 200, self.max_age

    def start(self) -> Self:
        self._httpd = _Server(self)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
