"""Firebase ID tokens: RS256 signatures against Firebase's published certs, and claims.

Checks, as firebase-admin does and more: alg RS256 with a kid, signature, iss, aud,
exp, iat, auth_time, a non-empty sub of at most 128 characters, all with a small
bounded clock skew.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from authz import jwt
from authz.certs import CertStore
from authz.client_id import client_id_from_claims
from authz.errors import AuthenticationFailed
from authz.identity import Identity

ISSUER_PREFIX = "https://securetoken.google.com/"


class FirebaseVerifier:
    token_type = "firebase"

    def __init__(
        self,
        project_id: str,
        certs: CertStore,
        *,
        client_id_claims: Sequence[str] = ("clientId", "firebase.tenant"),
        clock_skew_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._project_id = project_id
        self._issuer = ISSUER_PREFIX + project_id
        self._certs = certs
        self._client_id_claims = tuple(client_id_claims)
        self._skew = clock_skew_s
        self._clock = clock

    def token_type_of(self, token: str) -> str:
        return self.token_type

    async def verify(self, token: str) -> Identity:
        claims = await self.verified_claims(token)
        return Identity(
            subject=claims["sub"],
            client_id=client_id_from_claims(claims, self._client_id_claims),
            token_type=self.token_type,
            expires_at=float(claims["exp"]),
        )

    async def verified_claims(self, token: str) -> dict[str, Any]:
        """The verified claims of token; AuthenticationFailed (or CertsUnavailable)."""
        jws = jwt.parse(token)
        kid = jwt.require_rs256_kid(jws)
        key = await self._certs.key_for(kid)
        if key is None:
            raise AuthenticationFailed("token signed by an unknown key")
        jwt.verify_rs256(jws, key)
        self.check_claims(jws.payload)
        return jws.payload

    def check_claims(self, claims: dict[str, Any]) -> None:
        now = self._clock()
        if claims.get("iss") != self._issuer:
            raise AuthenticationFailed("token issuer is not this project")
        if claims.get("aud") != self._project_id:
            raise AuthenticationFailed("token audience is not this project")
        exp = jwt.numeric_claim(claims, "exp")
        iat = jwt.numeric_claim(claims, "iat")
        auth_time = jwt.numeric_claim(claims, "auth_time")
        if exp <= now - self._skew:
            raise AuthenticationFailed("token expired")
        if iat > now + self._skew:
            raise AuthenticationFailed("token issued in the future")
        if auth_time > now + self._skew:
            raise AuthenticationFailed("token auth_time in the future")
        nbf = jwt.optional_numeric_claim(claims, "nbf")
        if nbf is not None and nbf > now + self._skew:
            raise AuthenticationFailed("token not yet valid")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise AuthenticationFailed("token subject is empty, too long or not a string")
