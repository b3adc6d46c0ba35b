"""Firebase's token-signing certificates: fetched off the hot path, held in memory.

The cert endpoint serves a JSON map kid → x509 PEM with Cache-Control max-age. We parse
each cert once into a public key, refresh in the background shortly before max-age runs
out, keep serving the last good set when the endpoint fails (for a bounded time), and
re-fetch early (rate-limited) when a token names a kid we have not seen, so a new signing
key is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from authz.errors import CertsUnavailable

log = logging.getLogger(__name__)

K = TypeVar("K")

_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*(\d+)", re.IGNORECASE)
_MAX_CERTS_BYTES = 1 << 20


# (url, timeout) -> (body bytes, Cache-Control header or "")
Fetcher = Callable[[str, float], tuple[bytes, str]]


def urllib_fetch(url: str, timeout: float) -> tuple[bytes, str]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        body = response.read(_MAX_CERTS_BYTES + 1)
        if len(body) > _MAX_CERTS_BYTES:
            raise ValueError("certificate document too large")
        return body, response.headers.get("Cache-Control", "")


def parse_max_age(cache_control: str, default: float) -> float:
    match = _MAX_AGE.search(cache_control or "")
    return float(match.group(1)) if match else default


def parse_certs(body: bytes) -> dict[str, RSAPublicKey]:
    """{kid: PEM certificate} → {kid: RSA public key}; anything else is rejected."""
    document = json.loads(body)
    if not isinstance(document, dict) or not document:
        raise ValueError("certificate document is not a non-empty JSON object")
    keys: dict[str, RSAPublicKey] = {}
    for kid, pem in document.items():
        if not isinstance(kid, str) or not isinstance(pem, str):
            raise ValueError("certificate document maps names to non-strings")
        public_key = x509.load_pem_x509_certificate(pem.encode("ascii")).public_key()
        if not isinstance(public_key, RSAPublicKey):
            raise ValueError(f"certificate {kid!r} does not hold an RSA key")
        keys[kid] = public_key
    return keys


class KeyStore(Generic[K]):
    """Public keys by kid, refreshed in the background; lookups never do I/O.

    `parse` turns the fetched document into {kid: key}; it raises on anything it does not
    accept, and then the last good set is kept. CertStore (Firebase's x509 map) and
    jwks.JwksStore (a JSON Web Key Set) are the two kinds.
    """

    def __init__(
        self,
        url: str,
        parse: Callable[[bytes], Mapping[str, K]],
        *,
        fetch: Fetcher = urllib_fetch,
        fetch_timeout_s: float = 5.0,
        default_max_age_s: float = 3600.0,
        min_refetch_interval_s: float = 10.0,
        stale_if_error_s: float = 24 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._parse = parse
        self._fetch = fetch
        self._fetch_timeout_s = fetch_timeout_s
        self._default_max_age_s = default_max_age_s
        self._min_refetch_interval_s = min_refetch_interval_s
        self._stale_if_error_s = stale_if_error_s
        self._clock = clock
        self._keys: Mapping[str, K] = {}
        self._fresh_until = 0.0
        self._usable_until = 0.0
        self._last_attempt = float("-inf")
        self._inflight: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self.fetch_count = 0
        self.error_count = 0

    @property
    def loaded(self) -> bool:
        return bool(self._keys) and self._clock() < self._usable_until

    def lookup(self, kid: str) -> K | None:
        if self._clock() >= self._usable_until:
            return None
        return self._keys.get(kid)

    def current(self) -> Mapping[str, K]:
        """Every usable key by kid, empty once the set is past its stale limit: the fast
        path hands Envoy exactly the keys this store would verify with."""
        return dict(self._keys) if self._clock() < self._usable_until else {}

    async def key_for(self, kid: str) -> K | None:
        """The key for kid, re-fetching once (rate-limited) when kid is unknown.

        Raises CertsUnavailable when no usable certificate set can be had at all: that
        is our failure, not the caller's, so it must not read as a bad token.
        """
        key = self.lookup(kid)
        if key is not None:
            return key
        if self._clock() - self._last_attempt >= self._min_refetch_interval_s or not self.loaded:
            await self.refresh(force=not self.loaded)
        if not self.loaded:
            raise CertsUnavailable("no usable signing certificates")
        return self.lookup(kid)

    async def refresh(self, *, force: bool = False) -> None:
        """Fetch now (single-flight). Errors are logged and counted, never raised."""
        if self._inflight is None or self._inflight.done():
            if not force and self._clock() - self._last_attempt < self._min_refetch_interval_s:
                return
            if force and self._clock() - self._last_attempt < 1.0:
                return  # even a cold store retries at most once a second
            self._inflight = asyncio.ensure_future(self._refresh_once())
        await asyncio.shield(self._inflight)

    async def _refresh_once(self) -> None:
        self._last_attempt = self._clock()
        try:
            body, cache_control = await asyncio.to_thread(
                self._fetch, self._url, self._fetch_timeout_s
            )
            keys = self._parse(body)
        except Exception as exc:  # any failure keeps the last good set
            self.error_count += 1
            log.warning("certificate fetch failed", extra={"error": type(exc).__name__,
                                                           "detail": str(exc)[:200],
                                                           "url": self._url})
            return
        max_age = max(1.0, parse_max_age(cache_control, self._default_max_age_s))
        now = self._clock()
        self._keys = keys
        self._fresh_until = now + max_age
        self._usable_until = now + max_age + self._stale_if_error_s
        self.fetch_count += 1
        log.info("certificates loaded", extra={"kids": sorted(keys), "max_age_s": max_age,
                                               "url": self._url})

    def start(self) -> None:
        """Start the background refresher (call from a running event loop)."""
        if self._refresher is None:
            self._refresher = asyncio.ensure_future(self._refresh_loop())

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None

    async def _refresh_loop(self) -> None:
        backoff = 1.0
        while True:
            await self.refresh(force=True)
            now = self._clock()
            if now < self._fresh_until:
                backoff = 1.0
                # Refresh a little before max-age runs out, so lookups never wait on it.
                delay = max(1.0, (self._fresh_until - now) * 0.9)
            else:
                delay, backoff = backoff, min(backoff * 2, 60.0)
            await asyncio.sleep(delay)


class CertStore(KeyStore[RSAPublicKey]):
    """Firebase's signing certificates: {kid: x509 PEM} → {kid: RSA public key}."""

    def __init__(self, url: str, **options: Any) -> None:
        """Options as KeyStore's (fetch, timeouts, clock)."""
        super().__init__(url, parse_certs, **options)
