"""Tenant keys, cached in process so Vault stays off the hot path.

- Fresh for `ttl_s` after a read; then served stale while one background read
  refreshes it (stale-while-revalidate), so a busy tenant never waits on Vault.
- If Vault fails, a cached key keeps being served up to `stale_if_error_s` past its
  TTL; after that the tenant gets VaultUnavailable (500), never a wrong answer.
- "No key" is remembered for `negative_ttl_s`, so unknown tenants cannot flood Vault.
- Misses are single-flight: a burst for a new tenant costs one Vault read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from authz.errors import ApiKeyNotFound, RelayError, VaultUnavailable
from authz.vault import TenantKey

log = logging.getLogger(__name__)


class TenantKeySource(Protocol):
    def read(self, client_id: str) -> TenantKey | None: ...


@dataclass(frozen=True)
class _Entry:
    key: TenantKey | None
    fetched_at: float


@dataclass
class KeyCacheStats:
    hits: int = 0
    misses: int = 0
    stale_served: int = 0
    source_reads: int = 0
    source_errors: int = 0
    source_successes: int = 0


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
        self._source = source
        self._ttl_s = ttl_s
        self._stale_if_error_s = stale_if_error_s
        self._negative_ttl_s = negative_ttl_s
        self._max_entries = max_entries
        self._read_timeout_s = read_timeout_s
        self._clock = clock
        self._executor = executor or ThreadPoolExecutor(4, thread_name_prefix="vault")
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}
        self.stats = KeyCacheStats()

    async def get(self, client_id: str) -> TenantKey:
        entry = self._entries.get(client_id)
        if entry is not None:
            age = self._clock() - entry.fetched_at
            if entry.key is None:
                if age < self._negative_ttl_s:
                    self.stats.hits += 1
                    raise ApiKeyNotFound("no key for tenant (cached)")
            elif age < self._ttl_s:
                self.stats.hits += 1
                return entry.key
            elif age < self._ttl_s + self._stale_if_error_s:
                # Serve what we have now; one background read brings it up to date.
                self.stats.stale_served += 1
                self._start_read(client_id)
                return entry.key
        self.stats.misses += 1
        fresh = await asyncio.shield(self._start_read(client_id))
        if fresh.key is None:
            raise ApiKeyNotFound("no key for tenant")
        return fresh.key

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def invalidate(self, client_id: str | None = None) -> None:
        """Forget one tenant's key (or all): the next request reads Vault again."""
        if client_id is None:
            self._entries.clear()
        else:
            self._entries.pop(client_id, None)

    def _start_read(self, client_id: str) -> asyncio.Future[_Entry]:
        inflight = self._inflight.get(client_id)
        if inflight is None:
            inflight = asyncio.ensure_future(self._read(client_id))
            self._inflight[client_id] = inflight
            inflight.add_done_callback(lambda f: self._read_done(client_id, f))
        return inflight

    def _read_done(self, client_id: str, future: asyncio.Future[_Entry]) -> None:
        self._inflight.pop(client_id, None)
        if not future.cancelled():
            future.exception()  # a background refresh may fail with nobody awaiting it

    async def _read(self, client_id: str) -> _Entry:
        self.stats.source_reads += 1
        loop = asyncio.get_running_loop()
        try:
            key = await asyncio.wait_for(
                loop.run_in_executor(self._executor, self._source.read, client_id),
                self._read_timeout_s,
            )
        except RelayError as exc:
            self.stats.source_errors += 1
            log.warning("tenant key read failed", extra={"client_id": client_id,
                                                         "reason": exc.reason})
            return self._on_error(client_id, exc)
        except TimeoutError:
            self.stats.source_errors += 1
            log.warning("tenant key read timed out", extra={"client_id": client_id})
            return self._on_error(client_id, VaultUnavailable("vault read timed out"))
        self.stats.source_successes += 1
        entry = _Entry(key, self._clock())
        if len(self._entries) >= self._max_entries and client_id not in self._entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[client_id] = entry
        return entry

    def _on_error(self, client_id: str, exc: RelayError) -> _Entry:
        entry = self._entries.get(client_id)
        usable = (
            entry is not None
            and entry.key is not None
            and self._clock() - entry.fetched_at < self._ttl_s + self._stale_if_error_s
        )
        if usable and entry is not None:
            return entry
        raise exc
