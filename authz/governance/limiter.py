"""The Limiter: request limits, concurrency leases, token budgets and the usage ledger.

    admit()   (check path, only for tenants with limits) one store call: every limit of
              the request checked and counted atomically, or a 429 with a truthful
              Retry-After and nothing counted
    settle()  (access-log path, every allowed request) queued; a flusher applies the
              queue in batches: lease and reservation released, tokens recorded

Tokens of a settled request: the upstream's usage (input + output) when it reported
one; otherwise 0 when the response was an error (status >= 400) or ended cleanly, and
an estimate when the stream did not end cleanly (client gone, upstream reset, idle
timeout): input = ceil(request body bytes / 4), output = SSE events seen.

With a RedisStore, Redis is the shared truth while it answers. A Redis error or a slow
answer (the store's short timeout) flips the limiter to its LocalStore: requests keep
flowing on per-replica counting, one log line and `authz_redis_up 0` say so, and a
probe every second flips it back. Settlements of Redis leases wait in a bounded queue
while Redis is down and are applied when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from authz.errors import RateLimitExceeded, TokenBudgetExhausted
from authz.governance.counters import (
    AdmitRequest,
    LocalStore,
    Refusal,
    Settlement,
    TenantUsage,
)
from authz.governance.model import Admission, CompletedRequest, Limits
from authz.governance.redis_store import RedisStore

log = logging.getLogger(__name__)

#: A lease not settled within this long is dropped (its access-log entry was lost), so a
#: lost entry cannot hold a user's concurrency slot or reservation forever. A stream
#: longer than this loses its slot early (documented in docs/governance.md).
LEASE_TTL_S = 3600.0
#: Retry-After of a concurrency refusal: slots free when a request ends, which no one
#: can predict; one second is a polite poll interval.
CONCURRENCY_RETRY_S = 1
#: Settlements waiting for Redis while it is down; beyond this the oldest are applied
#: locally (this replica's view) rather than kept.
MAX_PENDING = 100_000
BATCH = 512

Clock = Callable[[], float]


class LimiterEvents(Protocol):
    """What the limiter reports (authz.edge.metrics.Metrics implements it)."""

    def limit_rejected(self, limit: str) -> None: ...

    def metered(self, client_id: str, input_tokens: int, output_tokens: int) -> None: ...

    def store_up(self, up: bool) -> None: ...

    def store_fallback(self) -> None: ...


class _NoEvents:
    def limit_rejected(self, limit: str) -> None:
        pass

    def metered(self, client_id: str, input_tokens: int, output_tokens: int) -> None:
        pass

    def store_up(self, up: bool) -> None:
        pass

    def store_fallback(self) -> None:
        pass


_day_cache: tuple[float, float, str] = (0.0, 0.0, "")


def utc_day(now_s: float) -> str:
    """'YYYY-MM-DD' of now_s in UTC (cached for the day: it is asked on every request)."""
    global _day_cache
    start, end, day = _day_cache
    if start <= now_s < end:
        return day
    start = now_s - now_s % 86400
    day = dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y-%m-%d")
    _day_cache = (start, start + 86400, day)
    return day


def seconds_to_utc_midnight(now_s: float) -> int:
    return max(1, math.ceil(86400 - now_s % 86400))


def charged_tokens(done: CompletedRequest) -> tuple[int, int]:
    """(input, output) tokens a completed request is charged (see the module doc)."""
    if done.input_tokens is not None or done.output_tokens is not None:
        return max(0, done.input_tokens or 0), max(0, done.output_tokens or 0)
    if done.status >= 400 or not done.response_flags:
        return 0, 0
    return math.ceil(max(0, done.request_body_bytes) / 4), max(0, done.events)


class GovernanceLimiter:
    def __init__(self, redis: RedisStore | None = None, *, clock: Clock = time.time,
                 events: LimiterEvents | None = None, lease_ttl_s: float = LEASE_TTL_S,
                 probe_interval_s: float = 1.0, flush_interval_s: float = 0.05) -> None:
        self.local = LocalStore()
        self.redis = redis
        self.clock = clock
        self.events: LimiterEvents = events or _NoEvents()
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.redis_up = redis is not None
        self._probe_interval_s = probe_interval_s
        self._flush_interval_s = flush_interval_s
        self._pending: deque[Settlement] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._lease_prefix = os.urandom(4).hex()
        self._lease_seq = 0
        if redis is not None:
            self.events.store_up(True)

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        if self.redis is not None and not self._tasks:
            self._wake = asyncio.Event()
            self._tasks = [asyncio.ensure_future(self._flusher()),
                           asyncio.ensure_future(self._prober())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.redis is not None:
            if self.redis_up:
                with contextlib.suppress(Exception):
                    await self._flush_once(len(self._pending))
            with contextlib.suppress(Exception):
                await self.redis.close()

    # -- check path ------------------------------------------------------------------
    def _new_lease(self, store: str) -> str:
        self._lease_seq += 1
        # "r" leases live in Redis, "l" leases in this process: settle goes to the same.
        return f"{store}{self._lease_prefix}{self._lease_seq:x}"

    async def admit(self, client_id: str, user: str, limits: Limits,
                    estimate_tokens: int) -> Admission:
        now_s = self.clock()
        now_ms = int(now_s * 1000)
        reserve = max(0, int(estimate_tokens))
        if (limits.user_tokens_per_day is None and limits.tenant_tokens_per_day is None):
            reserve = 0  # nothing to reserve against
        refusal: Refusal | None = None
        use_redis = self.redis is not None and self.redis_up
        request = AdmitRequest(client_id, user, self._new_lease("r" if use_redis else "l"),
                               limits, reserve, now_ms, utc_day(now_s),
                               now_ms + self.lease_ttl_ms)
        if use_redis:
            assert self.redis is not None
            try:
                refusal = await self.redis.admit(request)
            except Exception as exc:  # any Redis failure: count locally
                self._redis_down(exc)
                use_redis = False
                request = AdmitRequest(client_id, user, self._new_lease("l"), limits, reserve,
                                       now_ms, request.day, request.lease_expiry_ms)
        if not use_redis:
            refusal = self.local.admit_now(request)
        if refusal is not None:
            self.events.limit_rejected(refusal.limit)
            if refusal.limit.endswith("_tokens_per_day"):
                raise TokenBudgetExhausted(refusal.limit, seconds_to_utc_midnight(now_s))
            retry_s = (math.ceil(refusal.retry_ms / 1000) if refusal.retry_ms > 0
                       else CONCURRENCY_RETRY_S)
            raise RateLimitExceeded(refusal.limit, retry_s)
        return Admission(request.lease, reserve)

    # -- settlement ------------------------------------------------------------------
    async def settle(self, completed: CompletedRequest) -> None:
        self.settle_nowait(completed)

    def settle_nowait(self, done: CompletedRequest) -> None:
        """Record one completed request; never blocks (Redis work is queued)."""
        input_tokens, output_tokens = charged_tokens(done)
        self.events.metered(done.client_id, input_tokens, output_tokens)
        settlement = Settlement(done.client_id, done.user, done.lease,
                                max(0, done.reserved_tokens), input_tokens, output_tokens,
                                utc_day(self.clock()))
        if self.redis is None or done.lease.startswith("l"):
            self.local.settle_now(settlement)
            return
        self._pending.append(settlement)
        if len(self._pending) > MAX_PENDING:
            # Redis has been away long: keep this replica's view rather than memory.
            self.local.settle_now(self._pending.popleft())
        self._wake.set()

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending and self.redis_up:
                await self._flush_once(BATCH)
            await asyncio.sleep(self._flush_interval_s)  # let the next batch gather

    async def _flush_once(self, count: int) -> None:
        assert self.redis is not None
        batch = [self._pending.popleft() for _ in range(min(count, len(self._pending)))]
        try:
            await self.redis.settle_many(batch, int(self.clock() * 1000))
        except Exception as exc:  # keep them for when Redis is back
            self._pending.extendleft(reversed(batch))
            self._redis_down(exc)

    # -- Redis health ----------------------------------------------------------------
    def _redis_down(self, exc: BaseException) -> None:
        self.events.store_fallback()
        if self.redis_up:
            self.redis_up = False
            self.events.store_up(False)
            log.warning("redis unreachable: counting on this replica until it is back",
                        extra={"error": type(exc).__name__})

    async def _prober(self) -> None:
        assert self.redis is not None
        while True:
            await asyncio.sleep(self._probe_interval_s)
            if self.redis_up:
                continue
            try:
                await self.redis.ping()
            except Exception:  # noqa: S112 - still down; the next probe retries
                continue
            self.redis_up = True
            self.events.store_up(True)
            log.warning("redis is back: counting in redis again",
                        extra={"pending_settlements": len(self._pending)})
            self._wake.set()

    # -- usage -----------------------------------------------------------------------
    async def usage(self, client_id: str, user: str | None = None) -> dict[str, object]:
        """Today's usage report (/admin/usage): from Redis when it answers, so any
        replica answers for all; this replica's own counting otherwise."""
        day = utc_day(self.clock())
        report: TenantUsage | None = None
        if self.redis is not None and self.redis_up:
            try:
                report = await self.redis.usage(client_id, day)
            except Exception as exc:
                self._redis_down(exc)
        if report is None:
            report = self.local.usage_now(client_id, day)
        return report.report(client_id, day, user)
