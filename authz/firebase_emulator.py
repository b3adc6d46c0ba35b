"""Firebase Auth Emulator tokens: development only, and only when asked for twice.

The emulator signs nothing (`alg: none`, empty signature), so anyone can write a token it
would accept. This verifier exists only when FIREBASE_AUTH_EMULATOR_HOST is set *and*
AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS=true (settings refuse the first without the second). It
then checks what can be checked without a signature: the unsigned shape, iss, aud, exp,
iat, nbf and a non-empty sub, like firebase-admin does against the emulator (plus expiry).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from authz import jwt
from authz.client_id import client_id_from_claims
from authz.errors import AuthenticationFailed
from authz.firebase import ISSUER_PREFIX
from authz.identity import Identity


class FirebaseEmulatorVerifier:
    token_type = "firebase_emulator"

    def __init__(
        self,
        project_id: str,
        *,
        client_id_claims: Sequence[str] = ("clientId", "firebase.tenant"),
        clock_skew_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._project_id = project_id
        self._issuer = ISSUER_PREFIX + project_id
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
        header, claims, signature = jwt.peek(token)
        if header.get("alg") != "none" or signature:
            raise AuthenticationFailed("not an unsigned emulator token")
        self.check_claims(claims)
        return claims

    def check_claims(self, claims: dict[str, Any]) -> None:
        now = self._clock()
        if claims.get("iss") != self._issuer:
            raise AuthenticationFailed("token issuer is not this project")
        if claims.get("aud") != self._project_id:
            raise AuthenticationFailed("token audience is not this project")
        if jwt.numeric_claim(claims, "exp") <= now - self._skew:
            raise AuthenticationFailed("token expired")
        if jwt.numeric_claim(claims, "iat") > now + self._skew:
            raise AuthenticationFailed("token issued in the future")
        nbf = jwt.optional_numeric_claim(claims, "nbf")
        if nbf is not None and nbf > now + self._skew:
            raise AuthenticationFailed("token not yet valid")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise AuthenticationFailed("token subject is empty, too long or not a string")
