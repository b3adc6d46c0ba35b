"""Tenant keys, cached in process so Vault stays off the hot path.

A thin layer over ttl_cache.AsyncTtlCache, which gives every cached source here the
same behaviour:
- fresh for `ttl_s` after a read; then served stale while one background read
  refreshes it (stale-while-revalidate), so a busy tenant never waits on Vault;
- if Vault fails, a cached key keeps being served up to `stale_if_error_s` past its
  TTL; after that the tenant gets VaultUnavailable (500), never a wrong answer;
- "no key" is remembered for `negative_ttl_s`, so unknown tenants cannot flood Vault;
- misses are single-flight: a burst for a new tenant costs one Vault read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from authz.errors import ApiKeyNotFound, VaultUnavailable
from authz.tenants.vault import TenantKey
from authz.ttl_cache import AsyncTtlCache, CacheStats


class TenantKeySource(Protocol):
    def read(self, client_id: str) -> TenantKey | None: ...


class KeyCache:
    def __init__(
        self,
        source: TenantKeySource,
        *,
        ttl_s: float = 300.0,
        stale_if_error_s: float = 3600.0,
        negative_ttl_s: float = 5.0,
        max_entries: int = 100_000,
        read_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self._cache: AsyncTtlCache[str, TenantKey] = AsyncTtlCache(
            source.read,
            name="vault",
            ttl_s=ttl_s,
            negative_ttl_s=negative_ttl_s,
            stale_if_error_s=stale_if_error_s,
            timeout_error=lambda: VaultUnavailable("vault read timed out"),
            max_entries=max_entries,
            read_timeout_s=read_timeout_s,
            clock=clock,
            executor=executor or ThreadPoolExecutor(4, thread_name_prefix="vault"),
        )

    @property
    def stats(self) -> CacheStats:
        return self._cache.stats

    async def get(self, client_id: str) -> TenantKey:
        lookup = await self._cache.get(client_id)
        if lookup.value is None:
            raise ApiKeyNotFound("no key for tenant")
        return lookup.value

    def invalidate(self, client_id: str | None = None) -> None:
        """Forget one tenant's key (or all): the next request reads Vault again."""
        self._cache.invalidate(client_id)

    def close(self) -> None:
        self._cache.close()
