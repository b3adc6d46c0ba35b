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

With a RedisStore, Redis is the shared truth while it answers. A request whose limits
are all far from reached does not wait for it: the limiter admits it from the counts
Redis returned for the same user and tenant within the last second, plus what this
replica admitted since, and counts it in Redis in the background (in order, on the same
connection as admissions). "Far" means: this replica's admissions not yet counted in
Redis stay within HEADROOM_SHARE of each limit, and the counts plus that share leave
room. Near a limit (or with no recent counts, or a limit under 1/HEADROOM_SHARE) every
request is checked and counted by one atomic script, as before. The overshoot this
allows is bounded by the share (docs/governance.md). A Redis error or a slow
answer (the store's short timeout) flips the limiter to its LocalStore: requests keep
flowing on per-replica counting, one log line and `authz_redis_up 0` say so, and a
probe every second flips it back. Settlements of Redis leases wait in a bounded queue
while Redis is down and are applied when it is back; requests admitted on this
replica's own counters during an outage are released here, and their usage is copied to
Redis when it is back.
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
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Protocol, TypeVar

from authz.errors import RateLimitExceeded, TokenBudgetExhausted
from authz.governance.cancelling import cancel_and_wait, stop_if_cancelling
from authz.governance.counters import (
    AdmitRequest,
    Counts,
    LocalStore,
    Refusal,
    Settlement,
)
from authz.governance.model import Admission, CompletedRequest, Limits, Metered

if TYPE_CHECKING:  # redis-py costs ~8 MB of memory: imported only when Redis is set
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
#: The share of a limit one replica may admit before Redis has counted it: 1/40 (2.5%).
#: With R replicas a limit of N admits at most about N + (R - 1) * N/40 * 2 (each other
#: replica's uncounted admissions, and those it made on counts up to one reply old).
HEADROOM_SHARE = 40
#: How long admissions gather before they are counted in Redis together.
RECORD_BATCH_S = 0.02
#: Counts from Redis older than this are not used to admit without asking.
VIEW_TTL_MS = 1000

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


class _View:
    """What Redis last said of one user (or one tenant), and what this replica has
    admitted for it since without Redis having counted it yet."""

    __slots__ = ("at_ms", "counts", "requests", "tokens")

    def __init__(self, counts: Counts, at_ms: int) -> None:
        self.counts = counts
        self.at_ms = at_ms
        self.requests = 0
        self.tokens = 0


_K = TypeVar("_K")
_T = TypeVar("_T")


def _add(table: dict[_K, int], key: _K, delta: int) -> None:
    left = table.get(key, 0) + delta
    if left:
        table[key] = left
    else:
        table.pop(key, None)


def _room(counted: int, uncounted: int, adding: int, limit: int | None) -> bool:
    """Whether a limit leaves room for `adding` more, far from the limit (see the module
    doc); True when the limit is not set."""
    if limit is None:
        return True
    share = limit // HEADROOM_SHARE
    return (share > 0 and uncounted + adding <= share
            and counted + uncounted + adding + share < limit)


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
        self._closing = False
        self._lease_prefix = os.urandom(4).hex()
        self._lease_seq = 0
        # Admitting without waiting for Redis (see the module doc).
        self._user_views: dict[tuple[str, str], _View] = {}
        self._tenant_views: dict[str, _View] = {}
        self._records: list[AdmitRequest] = []  # admitted here, to be counted in Redis
        self._uncounted: set[str] = set()  # their leases, until Redis has counted them
        self._held: dict[str, Settlement] = {}  # settlements of those, waiting
        self._relocated: set[str] = set()  # leases counted locally when Redis failed
        self._record_tasks: set[asyncio.Task[None]] = set()
        self._unapplied_user: dict[tuple[str, str], int] = {}
        self._unapplied_tenant: dict[str, int] = {}
        self.admitted_without_waiting = 0
        #: Told of every metered request (the fast path's budget state, usage watchers).
        self.listeners: list[Callable[[Metered], None]] = []
        if redis is not None:
            self.events.store_up(True)

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        if self.redis is not None and not self._tasks:
            self._closing = False
            self._wake = asyncio.Event()
            self._tasks = [asyncio.ensure_future(self._flusher()),
                           asyncio.ensure_future(self._prober())]

    async def close(self) -> None:
        self._closing = True  # the loops end at their next turn even if a cancel was lost
        for task in list(self._record_tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await cancel_and_wait(self._tasks)
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
            if self._far_from_limits(request):
                self._record(request)
                return Admission(request.lease, reserve)
            try:
                answer = await self.redis.admit(request)
                if isinstance(answer, Refusal):
                    refusal = answer
                else:
                    self._update_views(request, answer, now_ms)
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

    def _far_from_limits(self, r: AdmitRequest) -> bool:
        user = self._user_views.get((r.client_id, r.user))
        tenant = self._tenant_views.get(r.client_id)
        if (user is None or tenant is None or r.now_ms - user.at_ms > VIEW_TTL_MS
                or r.now_ms - tenant.at_ms > VIEW_TTL_MS):
            return False
        limits = r.limits
        return (_room(user.counts.user_requests, user.requests, 1,
                      limits.user_requests_per_minute)
                and _room(tenant.counts.tenant_requests, tenant.requests, 1,
                          limits.tenant_requests_per_minute)
                and _room(user.counts.user_in_flight, user.requests, 1,
                          limits.user_concurrent_requests)
                and _room(user.counts.user_tokens
                          + self._unapplied_user.get((r.client_id, r.user), 0),
                          user.tokens, r.reserve, limits.user_tokens_per_day)
                and _room(tenant.counts.tenant_tokens
                          + self._unapplied_tenant.get(r.client_id, 0),
                          tenant.tokens, r.reserve, limits.tenant_tokens_per_day))

    def _record(self, r: AdmitRequest) -> None:
        """Admitted here: count it in Redis in the background, in admission order."""
        self.admitted_without_waiting += 1
        for view in (self._user_views[(r.client_id, r.user)], self._tenant_views[r.client_id]):
            view.requests += 1
            view.tokens += r.reserve
        self._uncounted.add(r.lease)
        if not self._records:
            task = asyncio.ensure_future(self._write_records())
            self._record_tasks.add(task)
            task.add_done_callback(self._record_tasks.discard)
        self._records.append(r)

    async def _write_records(self) -> None:
        # Admissions of the next few milliseconds join the batch: one write and one read
        # for many, instead of a wakeup for each (views age by this much at most).
        await asyncio.sleep(RECORD_BATCH_S)
        batch, self._records = self._records, []
        if not batch:
            return
        assert self.redis is not None
        try:
            counts: list[Counts] | None = await self.redis.record_many(batch)
        except Exception as exc:
            self._redis_down(exc)
            counts = None
        now_ms = int(self.clock() * 1000)
        for i, r in enumerate(batch):
            for view in (self._user_views.get((r.client_id, r.user)),
                         self._tenant_views.get(r.client_id)):
                if view is not None:
                    view.requests -= 1
                    view.tokens -= r.reserve
            self._uncounted.discard(r.lease)
            held = self._held.pop(r.lease, None)
            if counts is None:
                # Not in Redis: this replica counts it, and settles it, itself.
                self.local.record_now(r)
                if held is not None:
                    self._unapplied(held, -1)
                    self._settle_here(held)
                elif len(self._relocated) < MAX_PENDING:
                    self._relocated.add(r.lease)
                continue
            self._update_views(r, counts[i], now_ms)
            if held is not None:
                self._pending.append(held)
                self._wake.set()

    def _update_views(self, r: AdmitRequest, counts: Counts, now_ms: int) -> None:
        user = self._user_views.get((r.client_id, r.user))
        if user is None:
            if len(self._user_views) >= 100_000:
                self._user_views.clear()
            user = self._user_views[(r.client_id, r.user)] = _View(counts, now_ms)
        tenant = self._tenant_views.get(r.client_id)
        if tenant is None:
            if len(self._tenant_views) >= 100_000:
                self._tenant_views.clear()
            tenant = self._tenant_views[r.client_id] = _View(counts, now_ms)
        user.counts = tenant.counts = counts
        user.at_ms = tenant.at_ms = now_ms

    # -- settlement ------------------------------------------------------------------
    async def settle(self, completed: CompletedRequest) -> None:
        self.settle_nowait(completed)

    def settle_nowait(self, done: CompletedRequest) -> None:
        """Record one completed request; never blocks (Redis work is queued)."""
        input_tokens, output_tokens = charged_tokens(done)
        self.events.metered(done.client_id, input_tokens, output_tokens)
        now_s = self.clock()
        settlement = Settlement(done.client_id, done.user, done.lease,
                                max(0, done.reserved_tokens), input_tokens, output_tokens,
                                utc_day(now_s))
        if self.listeners:
            event = Metered(done.client_id, done.user, settlement.day, input_tokens,
                            output_tokens, done.status, int(now_s * 1000))
            for listener in self.listeners:
                listener(event)
        if self.redis is None:
            self.local.settle_now(settlement)
            return
        if done.lease.startswith("l"):
            self._settle_here(settlement)  # admitted while Redis was away
            return
        self._unapplied(settlement, +1)
        if done.lease in self._uncounted:
            # Admitted here and not yet counted in Redis: released once it is.
            self._held[done.lease] = settlement
            return
        if done.lease in self._relocated:
            self._relocated.discard(done.lease)
            self._unapplied(settlement, -1)
            self._settle_here(settlement)
            return
        self._queue(settlement)

    def _settle_here(self, settlement: Settlement) -> None:
        """A request this replica counted itself (Redis was away): released here, and its
        usage also goes to Redis when it is back, so the shared ledger misses none."""
        self.local.settle_now(settlement)
        copy = Settlement(settlement.client_id, settlement.user, "", 0,
                          settlement.input_tokens, settlement.output_tokens, settlement.day)
        self._unapplied(copy, +1)
        self._queue(copy)

    def _queue(self, settlement: Settlement) -> None:
        self._pending.append(settlement)
        if len(self._pending) > MAX_PENDING:
            # Redis has been away long: keep this replica's view rather than memory.
            oldest = self._pending.popleft()
            self._unapplied(oldest, -1)
            if oldest.lease:
                self.local.settle_now(oldest)
            # (a usage-only copy is in this replica's counters already: dropped)
        self._wake.set()

    def _unapplied(self, s: Settlement, sign: int) -> None:
        """Track tokens settled here but not yet in Redis (usage may exceed the
        reservation): the counts Redis returns do not hold them yet."""
        delta = sign * (s.input_tokens + s.output_tokens - s.reserved)
        if delta:
            _add(self._unapplied_user, (s.client_id, s.user), delta)
            _add(self._unapplied_tenant, s.client_id, delta)

    def _applied(self, s: Settlement) -> None:
        """Redis now holds a settlement: counts read before it do not. They take it in
        here (counts read after it then count it twice, erring high, until the user's
        next answer from Redis replaces them)."""
        delta = s.input_tokens + s.output_tokens - s.reserved
        user = self._user_views.get((s.client_id, s.user))
        if user is not None:
            user.counts.user_tokens += delta
        tenant = self._tenant_views.get(s.client_id)
        if tenant is not None:
            tenant.counts.tenant_tokens += delta

    async def _flusher(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            while self._pending and self.redis_up and not self._closing:
                await self._flush_once(BATCH)
                stop_if_cancelling()  # redis-py may have lost the cancel (cancelling.py)
            await asyncio.sleep(self._flush_interval_s)  # let the next batch gather

    async def _flush_once(self, count: int) -> None:
        assert self.redis is not None
        batch = [self._pending.popleft() for _ in range(min(count, len(self._pending)))]
        try:
            await self.redis.settle_many(batch, int(self.clock() * 1000))
        except Exception as exc:  # keep them for when Redis is back
            self._pending.extendleft(reversed(batch))
            self._redis_down(exc)
            return
        for settlement in batch:
            self._unapplied(settlement, -1)
            self._applied(settlement)

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
        while not self._closing:
            await asyncio.sleep(self._probe_interval_s)
            if self.redis_up:
                continue
            try:
                await self.redis.ping()
            except Exception:  # still down; the next probe retries
                stop_if_cancelling()  # redis-py may have turned it into this (cancelling.py)
                continue
            stop_if_cancelling()
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
        report = await self._shared_or_local(lambda redis: redis.usage(client_id, day),
                                             lambda: self.local.usage_now(client_id, day))
        return report.report(client_id, day, user)

    async def _shared_or_local(self, shared: Callable[[RedisStore], Awaitable[_T]],
                               local: Callable[[], _T]) -> _T:
        """Read from Redis while it answers (every replica's counts), else from this
        replica's own."""
        if self.redis is not None and self.redis_up:
            try:
                return await shared(self.redis)
            except Exception as exc:
                self._redis_down(exc)
        return local()

    async def exhausted(self, budgets: Mapping[str, Limits]
                        ) -> dict[str, bool | frozenset[str]]:
        """For the fast path (which admits without reserving): of each tenant with a
        token budget, True when the tenant's tokens for today are used up, else the set
        of its users whose own are (empty sets left out). From Redis when it answers,
        so it holds every replica's usage."""
        day = utc_day(self.clock())
        totals = await self._shared_or_local(lambda redis: redis.used_up(day, budgets),
                                             lambda: self.local.used_up(day, budgets))
        found: dict[str, bool | frozenset[str]] = {}
        for client_id, (total, users) in totals.items():
            budget = budgets[client_id].tenant_tokens_per_day
            if budget is not None and total >= budget:
                found[client_id] = True
            elif users:
                found[client_id] = users
        return found
