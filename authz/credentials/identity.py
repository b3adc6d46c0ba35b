"""Who is calling: the result of verifying a credential, the interface every credential
type implements, and the cache of verified identities.

A new kind of credential is a new module with a class that satisfies TokenVerifier;
the check pipeline (decision.py) does not change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from authz.credentials.jose.jwt import ParsedJws

from authz.governance.policy import Policy


@dataclass(frozen=True)
class Identity:
    subject: str
    client_id: str
    token_type: str
    #: Unix time after which this identity must be verified again (the token's exp,
    #: or sooner for credentials that can be revoked).
    expires_at: float
    #: A client key's own policy (narrower than its tenant's), set when it was issued.
    policy: Policy | None = None


def identity_from_claims(claims: Mapping[str, Any], *, client_id: str, token_type: str,
                         reuse_until: float = math.inf,
                         policy: Policy | None = None) -> Identity:
    """The one place a verified credential becomes an Identity (JWT claims, or a client
    key's index record in the same shape): its subject, its tenant, and
    how long it may be reused (the token's exp, or sooner: `reuse_until` for statuses that
    can change, and IdentityCache's own bound). Claims are already checked (sub, exp)."""
    return Identity(subject=claims["sub"], client_id=client_id, token_type=token_type,
                    expires_at=min(float(claims["exp"]), reuse_until), policy=policy)


class TokenVerifier(Protocol):
    def token_type_of(self, token: str) -> str:
        """A cheap guess of the credential's type, for metrics: never a decision."""
        ...

    async def verify(self, token: str) -> Identity:
        """The caller's identity, or a RelayError (AuthenticationFailed, ClientIdNotFound,
        InternalError...) saying why not."""
        ...


class JwsVerifier(Protocol):
    """A verifier of signed (or, for the emulator, unsigned) compact JWS tokens, handed
    the token already decoded once by the dispatcher."""

    token_type: str

    async def verify_jws(self, jws: ParsedJws) -> Identity: ...


class IdentityCache:
    """Verified identities by SHA-256 of the token, each kept no longer than its
    expires_at and never longer than `max_age_s` (AUTHZ_IDENTITY_CACHE_TTL): a token is
    then verified again, against the key set as it is by then, so a signing key removed
    from a JWKS or cert set stops working within max_age_s plus that set's refresh
    period, not at the token's exp. Bounded: when full, the oldest entry goes. Only
    successes are cached, and the raw token is never stored.
    """

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time,
                 *, max_age_s: float = 300.0) -> None:
        self._max_entries = max_entries
        self._clock = clock
        self._max_age_s = max_age_s
        self._entries: dict[bytes, Identity] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def digest(token: str) -> bytes:
        return hashlib.sha256(token.encode("ascii")).digest()

    def get(self, digest: bytes) -> Identity | None:
        identity = self._entries.get(digest)
        if identity is None:
            self.misses += 1
            return None
        if identity.expires_at <= self._clock():
            del self._entries[digest]
            self.misses += 1
            return None
        self.hits += 1
        return identity

    def put(self, digest: bytes, identity: Identity) -> None:
        if self._max_entries <= 0:
            return
        latest = self._clock() + self._max_age_s
        if identity.expires_at > latest:
            identity = dataclasses.replace(identity, expires_at=latest)
        if len(self._entries) >= self._max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[digest] = identity

    def clear(self, client_id: str | None = None) -> None:
        """Forget every identity (or those of one tenant): they are verified again."""
        if client_id is None:
            self._entries.clear()
            return
        for digest in [d for d, i in self._entries.items() if i.client_id == client_id]:
            del self._entries[digest]
