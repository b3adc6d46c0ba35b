"""Firebase Auth Emulator tokens: development only, and only when asked for twice.

The emulator signs nothing (`alg: none`, empty signature), so anyone can write a token it
would accept. This verifier exists only when FIREBASE_AUTH_EMULATOR_HOST is set *and*
AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS=true (settings refuse the first without the second). It
then checks what can be checked without a signature: the unsigned shape, iss, aud, exp,
iat, nbf and a non-empty sub, like firebase-admin does against the emulator (plus expiry).
"""

from __future__ import annotations

from typing import Any

from authz.credentials.firebase import FirebaseClaimsVerifier
from authz.credentials.jose import jwt
from authz.errors import AuthenticationFailed


class FirebaseEmulatorVerifier(FirebaseClaimsVerifier):
    token_type = "firebase_emulator"
    not_after_now = ("iat",)

    async def verified_claims(self, jws: jwt.ParsedJws) -> dict[str, Any]:
        if jws.header.get("alg") != "none" or jws.signature:
            raise AuthenticationFailed("not an unsigned emulator token")
        self.check_claims(jws.payload)
        return jws.payload
