"""Optional revocation and disabled-user checks for Firebase ID tokens (check_revoked).

With AUTHZ_FIREBASE_CHECK_REVOKED=true, a verified Firebase token is also refused when
its user is disabled, deleted, or had their refresh tokens revoked after the token's
auth_time (firebase-admin's rule: auth_time * 1000 < tokens_valid_after_timestamp). The
user's status comes from firebase-admin's get_user (Identity Platform tenants through
that tenant's client), read through an AsyncTtlCache: one network call per user per
AUTHZ_FIREBASE_USER_CACHE_TTL (60 s by default), never one per request. A disabled or
revoked user is therefore refused within that TTL.

firebase-admin needs Application Default Credentials in production; against the Auth
Emulator (FIREBASE_AUTH_EMULATOR_HOST) it needs none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from authz.credentials.identity import Identity
from authz.credentials.jose import jwt
from authz.credentials.jose.jwt import ParsedJws
from authz.errors import AuthenticationFailed, InternalError
from authz.ttl_cache import AsyncTtlCache

log = logging.getLogger(__name__)


class UserStatusUnavailable(InternalError):
    reason = "user_status_unavailable"

    def __init__(self, log_detail: str = "") -> None:
        super().__init__(log_detail, detail="user status unavailable")


@dataclass(frozen=True)
class UserStatus:
    disabled: bool
    #: Unix seconds before which the user's tokens are revoked (None: never revoked).
    valid_since: float | None


# (uid, Identity Platform tenant or None) -> status, None when there is no such user.
UserLookup = Callable[[tuple[str, str | None]], UserStatus | None]


class ClaimsVerifier(Protocol):
    token_type: str

    async def verified_claims(self, jws: ParsedJws) -> dict[str, Any]: ...

    def identity_for(self, claims: dict[str, Any], reuse_until: float = ...) -> Identity: ...


def firebase_admin_lookup(project_id: str) -> UserLookup:
    """get_user through firebase-admin, for the project (and its tenants)."""
    import firebase_admin
    from firebase_admin import auth, tenant_mgt

    name = f"openai-relay-{project_id}"
    try:
        app = firebase_admin.get_app(name)
    except ValueError:
        app = firebase_admin.initialize_app(options={"projectId": project_id}, name=name)

    def lookup(key: tuple[str, str | None]) -> UserStatus | None:
        uid, tenant = key
        try:
            if tenant:
                user = tenant_mgt.auth_for_tenant(tenant, app=app).get_user(uid)
            else:
                user = auth.get_user(uid, app=app)
        except (auth.UserNotFoundError, tenant_mgt.TenantNotFoundError):
            return None
        except Exception as exc:  # network, credentials, quota: we cannot tell
            raise UserStatusUnavailable(f"firebase get_user failed: {type(exc).__name__}"
                                        ) from None
        valid_after_ms = user.tokens_valid_after_timestamp
        return UserStatus(disabled=bool(user.disabled),
                          valid_since=valid_after_ms / 1000.0 if valid_after_ms else None)

    return lookup


class RevocationCheckingVerifier:
    """A Firebase (or emulator) verifier, plus the user's status from firebase-admin."""

    def __init__(
        self,
        inner: ClaimsVerifier,
        lookup: UserLookup,
        *,
        cache_ttl_s: float = 60.0,
        negative_ttl_s: float = 5.0,
        stale_if_error_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self.token_type = inner.token_type
        self._clock = clock
        self.users: AsyncTtlCache[tuple[str, str | None], UserStatus] = AsyncTtlCache(
            lookup, name="firebase-users", ttl_s=cache_ttl_s, negative_ttl_s=negative_ttl_s,
            stale_if_error_s=stale_if_error_s,
            timeout_error=lambda: UserStatusUnavailable("firebase get_user timed out"),
            clock=clock,
        )

    def token_type_of(self, token: str) -> str:
        return self.token_type

    async def verify(self, token: str) -> Identity:
        return await self.verify_jws(jwt.parse(token))

    async def verify_jws(self, jws: ParsedJws) -> Identity:
        claims = await self._inner.verified_claims(jws)
        firebase = claims.get("firebase")
        tenant = firebase.get("tenant") if isinstance(firebase, dict) else None
        lookup = await self.users.get((claims["sub"], tenant if isinstance(tenant, str)
                                       else None))
        status = lookup.value
        if status is None:
            raise AuthenticationFailed("user no longer exists")
        if status.disabled:
            raise AuthenticationFailed("user is disabled")
        auth_time = claims.get("auth_time")
        if status.valid_since is not None and (
            not isinstance(auth_time, int | float) or auth_time < status.valid_since
        ):
            raise AuthenticationFailed("token revoked")
        # A user's status can change: the identity is reused no longer than the status.
        return self._inner.identity_for(claims, lookup.fresh_until)

    def invalidate(self) -> None:
        """Forget every user's status: the next request of each reads it again."""
        self.users.invalidate()

    def close(self) -> None:
        self.users.close()
