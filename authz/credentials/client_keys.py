"""Relay-issued client keys, for servers and scripts: `rk_…`, opaque, shown once.

Format: "rk_" + 43 characters of secret (32 random bytes, base64url) + an 8-character
tag, HMAC-SHA256(pepper, secret) cut to 6 bytes. The tag lets the relay turn away
made-up keys without a Vault read; it proves nothing else.

Only a keyed hash of a key is stored: HMAC-SHA256(pepper, key), hex. The pepper is a
server-side secret (see client_key_store: a Vault secret by default, or a file kept out
of Vault). Keys carry 256 bits of entropy, so the hash cannot be reversed or guessed even
by someone who reads all of Vault; the pepper adds that a hash alone cannot even be
checked against a candidate key without it.

Lookup is O(1): an index secret per hash (`<index path>/<hash>` → client_id, key_id,
expires_at, revoked), read through an AsyncTtlCache. So a revocation (or expiry) is seen
within the cache TTL (AUTHZ_CLIENT_KEY_CACHE_TTL, 30 s by default) while Vault answers,
at once after `authz cache invalidate`, and within the TTL plus
AUTHZ_CLIENT_KEY_STALE_IF_ERROR (60 s by default) while Vault fails: a record is served
stale only that long, much shorter than a tenant key's hour.

A Vault policy that does not grant read on the pepper or the index (VaultForbidden) makes
client keys unverifiable: the caller gets 401 (the key cannot be accepted; nothing of
ours is broken for any other credential), the operator gets one log line naming the path
and a readiness field (`client_keys`) saying why. Failures are remembered for a few
seconds, so an `rk_…`-shaped bearer cannot make every request a Vault round trip.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from authz.credentials.identity import Identity, identity_from_claims
from authz.errors import AuthenticationFailed, RelayError, VaultForbidden, VaultUnavailable
from authz.governance.policy import Policy
from authz.tenants.client_id import is_valid_client_id
from authz.ttl_cache import AsyncTtlCache

log = logging.getLogger(__name__)

PREFIX = "rk_"
_SECRET_BYTES = 32
_SECRET_CHARS = 43  # base64url of 32 bytes, unpadded
_TAG_BYTES = 6
_TAG_CHARS = 8
KEY_LENGTH = len(PREFIX) + _SECRET_CHARS + _TAG_CHARS
_KEY_SHAPE = re.compile(rf"rk_[A-Za-z0-9_-]{{{_SECRET_CHARS + _TAG_CHARS}}}")
_TAG_CONTEXT = b"openai-relay client key tag\x00"
_HASH_CONTEXT = b"openai-relay client key hash\x00"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _tag(pepper: bytes, secret_part: str) -> str:
    mac = hmac.new(pepper, _TAG_CONTEXT + secret_part.encode("ascii"), hashlib.sha256)
    return _b64(mac.digest()[:_TAG_BYTES])


def looks_like_client_key(token: str) -> bool:
    return token.startswith(PREFIX)


def new_client_key(pepper: bytes) -> str:
    secret_part = _b64(secrets.token_bytes(_SECRET_BYTES))
    return PREFIX + secret_part + _tag(pepper, secret_part)


def has_valid_tag(pepper: bytes, key: str) -> bool:
    if _KEY_SHAPE.fullmatch(key) is None:
        return False
    secret_part, tag = key[len(PREFIX):-_TAG_CHARS], key[-_TAG_CHARS:]
    return hmac.compare_digest(_tag(pepper, secret_part), tag)


def key_hash(pepper: bytes, key: str) -> str:
    """The keyed hash stored for key (64 hex characters, one safe Vault path segment)."""
    return hmac.new(pepper, _HASH_CONTEXT + key.encode("ascii"), hashlib.sha256).hexdigest()


def hint(key: str) -> str:
    """What `keys list` shows so an owner can tell which key is which."""
    return f"{PREFIX}…{key[-4:]}"


@dataclass(frozen=True)
class ClientKeyRecord:
    client_id: str
    key_id: str
    expires_at: float | None = None
    revoked: bool = False
    #: The key's own policy, set at issue time (narrows its tenant's); None: none.
    policy: Policy | None = None


class ClientKeyIndex(Protocol):
    """The relay's read-only view of the key store (synchronous: called in a thread)."""

    def read_pepper(self) -> bytes | None: ...

    def read_index(self, hash_hex: str) -> ClientKeyRecord | None: ...


class ClientKeyVerifier:
    token_type = "client_key"

    def __init__(
        self,
        index: ClientKeyIndex,
        *,
        cache_ttl_s: float = 30.0,
        negative_ttl_s: float = 5.0,
        stale_if_error_s: float = 60.0,
        pepper_retry_s: float = 5.0,
        required: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._index = index
        self._clock = clock
        self._pepper: bytes | None = None
        self._pepper_checked_at = float("-inf")
        self._pepper_error: RelayError | None = None
        self._pepper_retry_s = pepper_retry_s
        self._pepper_lock = asyncio.Lock()
        #: AUTHZ_CLIENT_KEYS=on: readiness fails while keys cannot be verified.
        self.required = required
        #: "ok", "unchecked", or "unverifiable: <why>" (for /readyz and the operator).
        self.status = "unchecked"
        self.records: AsyncTtlCache[str, ClientKeyRecord] = AsyncTtlCache(
            index.read_index, name="client-keys", ttl_s=cache_ttl_s,
            negative_ttl_s=negative_ttl_s, stale_if_error_s=stale_if_error_s,
            error_ttl_s=negative_ttl_s,
            timeout_error=lambda: VaultUnavailable("client key index read timed out"),
            clock=clock,
        )

    @property
    def verifiable(self) -> bool:
        return not self.status.startswith("unverifiable")

    def token_type_of(self, token: str) -> str:
        return self.token_type

    async def pepper(self) -> bytes | None:
        """The pepper, read once and kept; "none yet" and failures are re-checked every
        few seconds, not at every request."""
        if self._pepper is not None:
            return self._pepper
        async with self._pepper_lock:
            if self._pepper is None and (
                self._clock() - self._pepper_checked_at >= self._pepper_retry_s
            ):
                self._pepper_checked_at = self._clock()
                try:
                    self._pepper = await asyncio.to_thread(self._index.read_pepper)
                    self._pepper_error = None
                except RelayError as exc:
                    self._pepper_error = exc
            if self._pepper is None and self._pepper_error is not None:
                raise copy.copy(self._pepper_error).with_traceback(None)
        return self._pepper

    async def probe(self) -> None:
        """At start: read the pepper and one index entry that cannot exist, so readiness
        says at once whether the Vault policy lets client keys be verified."""
        try:
            await self.pepper()
            await self.records.get("0" * 64)
        except VaultForbidden as exc:
            self._unverifiable(exc)
        except RelayError:
            pass  # Vault down: the tenant-key side reports it; try again at the next key
        else:
            self._verified()
        finally:
            # The first key may be issued right after start: ask again at the first one.
            if self._pepper is None:
                self._pepper_checked_at = float("-inf")

    async def verify(self, token: str) -> Identity:
        if _KEY_SHAPE.fullmatch(token) is None:
            raise AuthenticationFailed("malformed client key")
        try:
            pepper = await self.pepper()
            if pepper is None:
                raise AuthenticationFailed("no client key has been issued")
            if not has_valid_tag(pepper, token):
                raise AuthenticationFailed("client key tag does not match")
            lookup = await self.records.get(key_hash(pepper, token))
        except VaultForbidden as exc:
            self._unverifiable(exc)
            raise AuthenticationFailed(f"client keys cannot be verified: {exc.log_detail}"
                                       ) from None
        self._verified()
        record, now = lookup.value, self._clock()
        if record is None:
            raise AuthenticationFailed("unknown client key")
        if record.revoked:
            raise AuthenticationFailed("client key revoked")
        if record.expires_at is not None and record.expires_at <= now:
            raise AuthenticationFailed("client key expired")
        if not is_valid_client_id(record.client_id):
            raise AuthenticationFailed("client key index names no valid client id")
        fresh_until = lookup.fresh_until
        if record.expires_at is not None:
            fresh_until = min(fresh_until, record.expires_at)
        # The index record plays the claims' part: who, and until when.
        return identity_from_claims(
            {"sub": f"client-key:{record.key_id}", "exp": fresh_until},
            client_id=record.client_id, token_type=self.token_type,
            policy=record.policy)

    def _unverifiable(self, exc: VaultForbidden) -> None:
        status = f"unverifiable: {exc.log_detail}"
        if status != self.status:
            # Once per change of state, not per request: the operator's one line.
            log.error("client keys cannot be verified: grant the relay's Vault policy "
                      "read on the client-key index and pepper (see README, Vault policy); "
                      "rk_ keys get 401 meanwhile", extra={"cause": exc.log_detail})
            self.status = status

    def _verified(self) -> None:
        if self.status != "ok":
            if not self.verifiable:
                log.info("client keys can be verified again")
            self.status = "ok"

    def invalidate(self, client_id: str | None = None) -> None:
        """Forget cached index records (one tenant's, or all) and remembered failures."""
        if client_id is None:
            self.records.invalidate()
        else:
            self.records.invalidate_where(lambda record: record.client_id == client_id)
        if self._pepper is None:
            self._pepper_checked_at = float("-inf")
            self._pepper_error = None

    def close(self) -> None:
        self.records.close()
