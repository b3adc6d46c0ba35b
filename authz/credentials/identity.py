"""Who is calling: the result of verifying a credential, the interface every credential
type implements, and the cache of verified identities.

A new kind of credential is a new module with a class that satisfies TokenVerifier;
the check pipeline (decision.py) does not change.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

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


class TokenVerifier(Protocol):
    def token_type_of(self, token: str) -> str:
        """A cheap guess of the credential's type, for metrics: never a decision."""
        ...

    async def verify(self, token: str) -> Identity:
        """The caller's identity, or a RelayError (AuthenticationFailed, ClientIdNotFound,
        InternalError...) saying why not."""
        ...


class IdentityCache:
    """Verified identities by SHA-256 of the token, each kept no longer than its
    expires_at. Bounded: when full, the oldest entry goes. Only successes are cached,
    and the raw token is never stored.
    """

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        self._max_entries = max_entries
        self._clock = clock
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
        if len(self._entries) >= self._max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[digest] = identity

    def clear(self) -> None:
        self._entries.clear()
