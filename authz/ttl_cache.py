"""An async read-through cache over a slow, synchronous source (Vault, firebase-admin).

The shape of keys.KeyCache, for any value: fresh for `ttl_s`; then served once more
while one background read refreshes it (stale-while-revalidate); while the source fails,
the last value keeps being served up to `stale_if_error_s` past its TTL; "no such thing"
is remembered for `negative_ttl_s`; misses are single-flight. Reads run in a thread.

A failed read with nothing to serve may be remembered too (`error_ttl_s`, off by default):
callers in that window get the same error without another source read, so a source that
refuses us (a Vault policy 403) is not asked again for every request.

Invalidation wins over every read that started before it: such a read still answers
the callers already waiting on it, but its value is neither stored nor reusable
(fresh_until = now), and callers arriving after the invalidation start a new read.

Every answer carries `fresh_until` (wall-clock seconds): how long a caller may reuse what
it derived from the value. A stale answer is fresh until now, so nothing downstream (the
identity cache) keeps it: the next request sees the refreshed value.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from authz.errors import InternalError, RelayError

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class Lookup(Generic[V]):
    value: V | None
    fresh_until: float


@dataclass(frozen=True)
class _Entry(Generic[V]):
    value: V | None
    fetched_at: float


@dataclass(frozen=True)
class _Failure:
    error: RelayError
    failed_at: float


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stale_served: int = 0
    source_reads: int = 0
    source_errors: int = 0
    source_successes: int = 0
    errors_remembered: int = 0


class AsyncTtlCache(Generic[K, V]):
    def __init__(
        self,
        load: Callable[[K], V | None],
        *,
        name: str,
        ttl_s: float,
        negative_ttl_s: float,
        stale_if_error_s: float,
        timeout_error: Callable[[], RelayError],
        error_ttl_s: float = 0.0,
        max_entries: int = 100_000,
        read_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self._load = load
        self._name = name
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._stale_if_error_s = stale_if_error_s
        self._error_ttl_s = error_ttl_s
        self._timeout_error = timeout_error
        self._max_entries = max_entries
        self._read_timeout_s = read_timeout_s
        self._clock = clock
        self._executor = executor or ThreadPoolExecutor(2, thread_name_prefix=name)
        self._entries: dict[K, _Entry[V]] = {}
        self._inflight: dict[K, asyncio.Future[_Entry[V]]] = {}
        # Reads an invalidation overtook: they finish for their waiters, store nothing.
        self._superseded: set[asyncio.Future[_Entry[V]]] = set()
        self._failures: dict[K, _Failure] = {}
        # Bumped by every invalidation: a read, or a caller, that began under an older
        # generation must not keep what it got.
        self._generation = 0
        self.stats = CacheStats()

    async def get(self, key: K) -> Lookup[V]:
        entry = self._entries.get(key)
        now = self._clock()
        if entry is not None:
            age = now - entry.fetched_at
            if entry.value is None:
                if age < self._negative_ttl_s:
                    self.stats.hits += 1
                    return Lookup(None, entry.fetched_at + self._negative_ttl_s)
            elif age < self._ttl_s:
                self.stats.hits += 1
                return Lookup(entry.value, entry.fetched_at + self._ttl_s)
            elif age < self._ttl_s + self._stale_if_error_s:
                self.stats.stale_served += 1
                self._start_read(key)
                return Lookup(entry.value, now)
        failure = self._failures.get(key)
        if failure is not None:
            if now - failure.failed_at < self._error_ttl_s:
                self.stats.errors_remembered += 1
                # A copy: raising one instance from many tasks would chain their tracebacks.
                raise copy.copy(failure.error).with_traceback(None)
            del self._failures[key]
        self.stats.misses += 1
        generation = self._generation
        fresh = await asyncio.shield(self._start_read(key))
        if generation != self._generation:
            # Invalidated while we waited: answer this caller, but let nobody keep it.
            return Lookup(fresh.value, self._clock())
        ttl = self._negative_ttl_s if fresh.value is None else self._ttl_s
        # A stale value served because the source failed was fetched long ago: not reusable.
        return Lookup(fresh.value, fresh.fetched_at + ttl)

    def invalidate(self, key: K | None = None) -> None:
        """Forget key (or everything). Reads in flight are overtaken: whatever they
        return is not stored, and the next get starts a new read."""
        self._generation += 1
        if key is None:
            self._entries.clear()
            self._failures.clear()
            self._superseded.update(self._inflight.values())
            self._inflight.clear()
        else:
            self._entries.pop(key, None)
            self._failures.pop(key, None)
            read = self._inflight.pop(key, None)
            if read is not None:
                self._superseded.add(read)

    def invalidate_where(self, predicate: Callable[[V], bool]) -> None:
        """Forget every value predicate holds for; reads in flight are overtaken too
        (their values are not known yet)."""
        self._generation += 1
        for key in [k for k, e in self._entries.items()
                    if e.value is not None and predicate(e.value)]:
            del self._entries[key]
        self._superseded.update(self._inflight.values())
        self._inflight.clear()

    async def settle(self) -> None:
        """Wait for the reads in flight (background refreshes included) to land."""
        while self._inflight or self._superseded:
            await asyncio.gather(*self._inflight.values(), *self._superseded,
                                 return_exceptions=True)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _start_read(self, key: K) -> asyncio.Future[_Entry[V]]:
        inflight = self._inflight.get(key)
        if inflight is None:
            inflight = asyncio.ensure_future(self._read(key))
            self._inflight[key] = inflight
            inflight.add_done_callback(lambda f: self._read_done(key, f))
        return inflight

    def _read_done(self, key: K, future: asyncio.Future[_Entry[V]]) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]
        self._superseded.discard(future)
        if not future.cancelled():
            future.exception()  # a background refresh may fail with nobody awaiting it

    async def _read(self, key: K) -> _Entry[V]:
        generation = self._generation
        self.stats.source_reads += 1
        loop = asyncio.get_running_loop()
        try:
            value = await asyncio.wait_for(
                loop.run_in_executor(self._executor, self._load, key), self._read_timeout_s)
        except RelayError as exc:
            return self._on_error(key, exc, generation)
        except TimeoutError:
            return self._on_error(key, self._timeout_error(), generation)
        except Exception as exc:  # a source bug must fail closed, not crash the check
            log.exception("%s read failed unexpectedly", self._name)
            return self._on_error(key, InternalError(f"{self._name} read failed: "
                                                     f"{type(exc).__name__}"), generation)
        self.stats.source_successes += 1
        entry: _Entry[V] = _Entry(value, self._clock())
        if generation != self._generation:
            return entry  # an invalidation overtook this read: store nothing
        self._failures.pop(key, None)
        if len(self._entries) >= self._max_entries and key not in self._entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = entry
        return entry

    def _on_error(self, key: K, exc: RelayError, generation: int) -> _Entry[V]:
        self.stats.source_errors += 1
        log.warning("%s read failed", self._name, extra={"reason": exc.reason,
                                                          "cause": exc.log_detail})
        entry = self._entries.get(key)
        if (entry is not None and entry.value is not None
                and self._clock() - entry.fetched_at < self._ttl_s + self._stale_if_error_s):
            # Serve the last good value, marked stale (fetched long ago) for the caller.
            return entry
        if self._error_ttl_s > 0 and generation == self._generation:
            self._failures[key] = _Failure(exc, self._clock())
            if len(self._failures) > self._max_entries:
                self._failures.pop(next(iter(self._failures)))
        raise exc
