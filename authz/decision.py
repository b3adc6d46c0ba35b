"""One check, as named phases: credential → identity → tenant → key → header mutations.

Works on plain values (a header mapping in, an Allow or a Deny out); protobuf stays in
envoy_edge.py. Every failure is a RelayError that already knows its status and body.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from authz.client_id import client_id_from_claims
from authz.errors import AuthenticationFailed, InternalError, RelayError
from authz.keys import KeyCache

log = logging.getLogger(__name__)

# Headers the upstream must never see from the client. Authorization is replaced, not
# listed here; OpenAI-Organization/-Project are replaced or removed per tenant.
STRIPPED_HEADERS = frozenset({
    "cookie",
    "proxy-authorization",
    "x-api-key",
    "x-client-id",
    "x-tenant-id",
    "forwarded",
    "x-real-ip",
})
STRIPPED_PREFIXES = ("x-forwarded-", "x-envoy-", "x-relay-")
TENANT_OPTION_HEADERS = ("openai-organization", "openai-project")

# RFC 6750 b64token, which every JWT and opaque key we accept fits.
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *")


class TokenVerifier(Protocol):
    token_type: str

    async def verify(self, token: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Identity:
    subject: str
    client_id: str
    token_type: str
    expires_at: float


@dataclass(frozen=True)
class Allow:
    client_id: str
    token_type: str
    set_headers: tuple[tuple[str, str], ...]
    remove_headers: tuple[str, ...]


@dataclass(frozen=True)
class Deny:
    error: RelayError
    token_type: str = "none"


Decision = Allow | Deny


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed("no authorization header")
    match = _BEARER.fullmatch(authorization)
    if match is None:
        raise AuthenticationFailed("authorization is not a single bearer token")
    return match.group(1)


def headers_to_remove(names: Iterable[str], tenant_sets: Sequence[str]) -> tuple[str, ...]:
    """Every client header the upstream must not receive, by exact name."""
    removed = []
    for name in names:
        if name.startswith(":"):
            continue
        if (
            name in STRIPPED_HEADERS
            or name.startswith(STRIPPED_PREFIXES)
            or (name in TENANT_OPTION_HEADERS and name not in tenant_sets)
        ):
            removed.append(name)
    return tuple(removed)


class IdentityCache:
    """Verified identities by SHA-256 of the token, each kept no longer than its exp.

    Bounded: when full, the oldest entry goes. Only successes are cached, and the raw
    token is never stored.
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


class Authorizer:
    def __init__(
        self,
        verifier: TokenVerifier,
        keys: KeyCache,
        *,
        client_id_claims: Sequence[str],
        identity_cache: IdentityCache,
    ) -> None:
        self._verifier = verifier
        self._keys = keys
        self._claims = tuple(client_id_claims)
        self._identities = identity_cache

    async def identify(self, token: str) -> Identity:
        digest = IdentityCache.digest(token)
        identity = self._identities.get(digest)
        if identity is not None:
            return identity
        claims = await self._verifier.verify(token)
        identity = Identity(
            subject=str(claims["sub"]),
            client_id=client_id_from_claims(claims, self._claims),
            token_type=self._verifier.token_type,
            expires_at=float(claims["exp"]),
        )
        self._identities.put(digest, identity)
        return identity

    async def check(self, headers: Mapping[str, str]) -> Decision:
        token_type = "none"
        try:
            token = bearer_token(headers.get("authorization"))
            token_type = self._verifier.token_type
            identity = await self.identify(token)
            key = await self._keys.get(identity.client_id)
        except RelayError as error:
            return Deny(error, token_type)
        except Exception:
            # A bug must still fail closed with the contract's body; never leak why.
            log.exception("unexpected error during check")
            return Deny(InternalError("unexpected error", detail="check failed"), token_type)
        set_headers = [("authorization", f"Bearer {key.api_key}")]
        if key.organization:
            set_headers.append(("openai-organization", key.organization))
        if key.project:
            set_headers.append(("openai-project", key.project))
        tenant_sets = [name for name, _ in set_headers]
        return Allow(
            client_id=identity.client_id,
            token_type=identity.token_type,
            set_headers=tuple(set_headers),
            remove_headers=headers_to_remove(headers.keys(), tenant_sets),
        )
