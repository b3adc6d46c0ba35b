"""Firebase ID tokens: RS256 signatures against Firebase's published certs, and claims.

Checks, as firebase-admin does and more: alg RS256 with a kid, signature, iss, aud,
exp, iat, auth_time, a non-empty sub of at most 128 characters, all with a small
bounded clock skew.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from authz.credentials.identity import Identity, identity_from_claims
from authz.credentials.jose import jwt
from authz.credentials.jose.certs import CertStore
from authz.errors import AuthenticationFailed
from authz.tenants.client_id import client_id_from_claims

ISSUER_PREFIX = "https://securetoken.google.com/"


class FirebaseClaimsVerifier:
    """What every Firebase ID token must satisfy, signed or (emulator) not: iss and aud of
    this project, exp/iat/auth_time with bounded skew, a sane sub. Subclasses decide how
    the claims are obtained (verified_claims)."""

    token_type = "firebase"
    #: Claims that may not lie in the future; the emulator's tokens lack auth_time.
    not_after_now: tuple[str, ...] = ("iat", "auth_time")

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
        return await self.verify_jws(jwt.parse(token))

    async def verify_jws(self, jws: jwt.ParsedJws) -> Identity:
        return self.identity_for(await self.verified_claims(jws))

    def identity_for(self, claims: dict[str, Any], reuse_until: float = math.inf) -> Identity:
        return identity_from_claims(
            claims, client_id=client_id_from_claims(claims, self._client_id_claims),
            token_type=self.token_type, reuse_until=reuse_until)

    async def verified_claims(self, jws: jwt.ParsedJws) -> dict[str, Any]:
        raise NotImplementedError

    def check_claims(self, claims: dict[str, Any]) -> None:
        if claims.get("iss") != self._issuer:
            raise AuthenticationFailed("token issuer is not this project")
        if claims.get("aud") != self._project_id:
            raise AuthenticationFailed("token audience is not this project")
        jwt.check_times(claims, self._clock(), self._skew, not_after_now=self.not_after_now)
        jwt.check_subject(claims)


class FirebaseVerifier(FirebaseClaimsVerifier):
    def __init__(
        self,
        project_id: str,
        certs: CertStore,
        *,
        client_id_claims: Sequence[str] = ("clientId", "firebase.tenant"),
        clock_skew_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(project_id, client_id_claims=client_id_claims,
                         clock_skew_s=clock_skew_s, clock=clock)
        self._certs = certs

    async def verified_claims(self, jws: jwt.ParsedJws) -> dict[str, Any]:
        """The verified claims of jws; AuthenticationFailed (or CertsUnavailable)."""
        alg, kid = jwt.algorithm_and_kid(jws, ("RS256",))
        key = await self._certs.key_for(kid)
        if key is None:
            raise AuthenticationFailed("token signed by an unknown key")
        jwt.verify_rsa(jws, key, alg)
        self.check_claims(jws.payload)
        return jws.payload
