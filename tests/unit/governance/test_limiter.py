"""The limiter with its in-process store and a clock the tests move."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import replace

import pytest

from authz.errors import RateLimitExceeded, TokenBudgetExhausted
from authz.governance.limiter import (
    CONCURRENCY_RETRY_S,
    GovernanceLimiter,
    charged_tokens,
    seconds_to_utc_midnight,
)
from authz.governance.model import Admission, CompletedRequest, Limits, Metered

# 2026-12-04 12:00:00 UTC: twelve hours to midnight.
NOON = dt.datetime(2026, 12, 4, 12, tzinfo=dt.UTC).timestamp()


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def done(admission: Admission | None, *, client_id: str = "acme", user: str = "u1",
         status: int = 200, flags: str = "", input_tokens: int | None = None,
         output_tokens: int | None = None, request_bytes: int = 0,
         events: int = 0) -> CompletedRequest:
    return CompletedRequest(
        client_id=client_id, user=user, lease=admission.lease if admission else "",
        reserved_tokens=admission.reserved_tokens if admission else 0, status=status,
        response_flags=flags, request_body_bytes=request_bytes, response_body_bytes=0,
        input_tokens=input_tokens, output_tokens=output_tokens, events=events)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(clock: Clock) -> GovernanceLimiter:
    return GovernanceLimiter(clock=clock)


def test_user_rpm_hit_then_freed_when_oldest_leaves_window(limiter, clock) -> None:
    limits = Limits(user_requests_per_minute=3)

    async def scenario() -> None:
        for _ in range(3):
            await limiter.admit("acme", "u1", limits, 0)
            clock.now += 10  # admitted at +0, +10, +20
        # Now +30: the oldest (at +0) leaves the window at +60.
        with pytest.raises(RateLimitExceeded) as refused:
            await limiter.admit("acme", "u1", limits, 0)
        assert refused.value.limit_name == "user_requests_per_minute"
        assert refused.value.retry_after_s == 30
        assert refused.value.body() == {"error": "Rate limit exceeded",
                                         "details": "user_requests_per_minute"}
        # Another user of the tenant is not affected.
        await limiter.admit("acme", "u2", limits, 0)
        clock.now = NOON + 60.001
        await limiter.admit("acme", "u1", limits, 0)

    run(scenario())


def test_tenant_rpm_counts_all_users_and_user_limit_is_named_first(limiter, clock) -> None:
    limits = Limits(user_requests_per_minute=2, tenant_requests_per_minute=3)

    async def scenario() -> None:
        await limiter.admit("acme", "a", limits, 0)
        await limiter.admit("acme", "a", limits, 0)
        await limiter.admit("acme", "b", limits, 0)
        # Both are hit for "a": the per-user limit answers.
        with pytest.raises(RateLimitExceeded) as refused:
            await limiter.admit("acme", "a", limits, 0)
        assert refused.value.limit_name == "user_requests_per_minute"
        with pytest.raises(RateLimitExceeded) as refused:
            await limiter.admit("acme", "c", limits, 0)
        assert refused.value.limit_name == "tenant_requests_per_minute"
        assert refused.value.retry_after_s == 60
        # Other tenants have their own counters.
        await limiter.admit("globex", "a", limits, 0)

    run(scenario())


def test_refusal_counts_nothing(limiter, clock) -> None:
    """A request refused by a later limit must not consume an earlier one's slot."""
    limits = Limits(user_requests_per_minute=5, user_concurrent_requests=1)

    async def scenario() -> None:
        first = await limiter.admit("acme", "u1", limits, 0)
        for _ in range(10):  # each is refused by concurrency, after passing the rpm check
            with pytest.raises(RateLimitExceeded) as refused:
                await limiter.admit("acme", "u1", limits, 0)
            assert refused.value.limit_name == "user_concurrent_requests"
        await limiter.settle(done(first))
        # Only the one admitted request is in the window: four more fit.
        for _ in range(4):
            admission = await limiter.admit("acme", "u1", limits, 0)
            await limiter.settle(done(admission))
        with pytest.raises(RateLimitExceeded) as refused:
            await limiter.admit("acme", "u1", limits, 0)
        assert refused.value.limit_name == "user_requests_per_minute"

    run(scenario())


def test_concurrency_held_until_settled(limiter, clock) -> None:
    limits = Limits(user_concurrent_requests=2)

    async def scenario() -> None:
        a = await limiter.admit("acme", "u1", limits, 0)
        b = await limiter.admit("acme", "u1", limits, 0)
        with pytest.raises(RateLimitExceeded) as refused:
            await limiter.admit("acme", "u1", limits, 0)
        assert refused.value.limit_name == "user_concurrent_requests"
        assert refused.value.retry_after_s == CONCURRENCY_RETRY_S
        await limiter.settle(done(a, flags="DC"))  # the client left: slot freed too
        c = await limiter.admit("acme", "u1", limits, 0)
        # Settling twice (a duplicated entry) frees nothing more.
        await limiter.settle(done(a))
        with pytest.raises(RateLimitExceeded):
            await limiter.admit("acme", "u1", limits, 0)
        await limiter.settle(done(b))
        await limiter.settle(done(c))
        assert limiter.local.in_flight("acme", "u1") == 0

    run(scenario())


def test_lost_entry_lease_expires(clock) -> None:
    limiter = GovernanceLimiter(clock=clock, lease_ttl_s=120)
    limits = Limits(user_concurrent_requests=1)

    async def scenario() -> None:
        await limiter.admit("acme", "u1", limits, 0)  # never settled
        with pytest.raises(RateLimitExceeded):
            await limiter.admit("acme", "u1", limits, 0)
        clock.now += 120
        await limiter.admit("acme", "u1", limits, 0)

    run(scenario())


def test_a_settled_lease_leaves_nothing_behind_and_expiry_keeps_admission_order(clock) -> None:
    """Memory follows the requests in flight, not the requests of the last hour."""
    limiter = GovernanceLimiter(clock=clock, lease_ttl_s=120)
    limits = Limits(user_concurrent_requests=10)

    async def scenario() -> None:
        await limiter.admit("acme", "lost", limits, 0)  # its entry never comes
        for _ in range(1000):
            clock.now += 0.01
            await limiter.settle(done(await limiter.admit("acme", "u1", limits, 5)))
        assert limiter.local.leases_held() == 1
        clock.now += 60
        late = await limiter.admit("acme", "late", limits, 0)
        clock.now += 60  # `lost` is past its TTL; `late` is not
        await limiter.admit("acme", "u2", limits, 0)
        assert limiter.local.in_flight("acme", "lost") == 0
        assert limiter.local.in_flight("acme", "late") == 1
        await limiter.settle(done(late, user="late"))
        assert limiter.local.leases_held() == 1  # u2's

    run(scenario())


def test_user_budget_exhausted_by_metered_usage_and_reset_next_day(limiter, clock) -> None:
    limits = Limits(user_tokens_per_day=100)

    async def scenario() -> None:
        a = await limiter.admit("acme", "u1", limits, 10)
        assert a.reserved_tokens == 10
        await limiter.settle(done(a, input_tokens=60, output_tokens=39))
        # 99 used < 100: one more is admitted...
        b = await limiter.admit("acme", "u1", limits, 0)
        await limiter.settle(done(b, input_tokens=1, output_tokens=0))
        # ...and now 100 are used.
        with pytest.raises(TokenBudgetExhausted) as refused:
            await limiter.admit("acme", "u1", limits, 0)
        assert refused.value.limit_name == "user_tokens_per_day"
        assert refused.value.retry_after_s == 12 * 3600
        assert refused.value.body() == {"error": "Token budget exhausted",
                                        "details": "user_tokens_per_day"}
        await limiter.admit("acme", "u2", limits, 0)  # another user's budget
        clock.now = NOON + 12 * 3600  # midnight: a new UTC day
        await limiter.admit("acme", "u1", limits, 0)

    run(scenario())


def test_reservations_of_in_flight_requests_count_against_budget(limiter, clock) -> None:
    limits = Limits(tenant_tokens_per_day=1000)

    async def scenario() -> None:
        held = [await limiter.admit("acme", f"u{i}", limits, 300) for i in range(4)]
        # 1200 reserved >= 1000: the fifth waits for a settlement.
        with pytest.raises(TokenBudgetExhausted) as refused:
            await limiter.admit("acme", "u9", limits, 300)
        assert refused.value.limit_name == "tenant_tokens_per_day"
        # Settled with less than reserved: 3 x 300 reserved + 50 used = 950 < 1000.
        await limiter.settle(done(held[0], user="u0", input_tokens=40, output_tokens=10))
        await limiter.admit("acme", "u9", limits, 300)

    run(scenario())


def test_user_budget_answers_before_tenant_budget(limiter, clock) -> None:
    limits = Limits(user_tokens_per_day=10, tenant_tokens_per_day=10)

    async def scenario() -> None:
        a = await limiter.admit("acme", "u1", limits, 0)
        await limiter.settle(done(a, input_tokens=10, output_tokens=0))
        with pytest.raises(TokenBudgetExhausted) as refused:
            await limiter.admit("acme", "u1", limits, 0)
        assert refused.value.limit_name == "user_tokens_per_day"
        with pytest.raises(TokenBudgetExhausted) as refused:
            await limiter.admit("acme", "u2", limits, 0)
        assert refused.value.limit_name == "tenant_tokens_per_day"

    run(scenario())


def test_usage_recorded_for_tenants_without_limits(limiter, clock) -> None:
    async def scenario() -> dict[str, object]:
        await limiter.settle(done(None, user="u1", input_tokens=5, output_tokens=7))
        await limiter.settle(done(None, user="u1", input_tokens=1, output_tokens=2))
        await limiter.settle(done(None, user="u2", status=401))
        await limiter.settle(done(None, client_id="globex", input_tokens=100))
        return await limiter.usage("acme")

    assert run(scenario()) == {
        "client_id": "acme", "day": "2026-12-04", "requests": 3, "input_tokens": 6,
        "output_tokens": 9, "total_tokens": 15,
        "users": {"u1": {"requests": 2, "input_tokens": 6, "output_tokens": 9,
                         "total_tokens": 15},
                  "u2": {"requests": 1, "input_tokens": 0, "output_tokens": 0,
                         "total_tokens": 0}},
    }
    one = run(limiter.usage("acme", "u2"))
    assert list(one["users"]) == ["u2"]  # type: ignore[arg-type]
    clock.now += 12 * 3600
    assert run(limiter.usage("acme"))["total_tokens"] == 0


def test_charged_tokens() -> None:
    base = done(None, request_bytes=401, events=7)
    # The upstream's usage, whatever the ending.
    assert charged_tokens(replace(base, input_tokens=3, output_tokens=4, response_flags="DC")
                          ) == (3, 4)
    assert charged_tokens(replace(base, input_tokens=3)) == (3, 0)
    # No usage: a clean end or an error costs nothing...
    assert charged_tokens(base) == (0, 0)
    assert charged_tokens(replace(base, status=502, response_flags="UF")) == (0, 0)
    # ...a stream that did not end cleanly is estimated: ceil(bytes / 4) + events seen.
    for flags in ("DC", "UR", "SI", "DR"):
        assert charged_tokens(replace(base, response_flags=flags)) == (101, 7)
    assert charged_tokens(replace(base, status=0, response_flags="DC")) == (101, 7)


def test_seconds_to_midnight() -> None:
    assert seconds_to_utc_midnight(NOON) == 43200
    assert seconds_to_utc_midnight(NOON + 43199.5) == 1
    assert seconds_to_utc_midnight(NOON + 43200) == 86400


def test_unlimited_budget_reserves_nothing(limiter) -> None:
    admission = run(limiter.admit("acme", "u1", Limits(user_concurrent_requests=5), 500))
    assert admission.reserved_tokens == 0


class _FailingRecords:
    """A Redis store whose checks answer and whose background counting fails (Redis
    went away between the two)."""

    def __init__(self) -> None:
        self.settled: list[object] = []

    async def admit(self, request):  # type: ignore[no-untyped-def]
        from authz.governance.counters import Counts

        return Counts(0, 0, 0, 0, 0)

    async def record_many(self, requests):  # type: ignore[no-untyped-def]
        raise ConnectionError("redis went away")

    async def settle_many(self, settlements, now_ms=0):  # type: ignore[no-untyped-def]
        self.settled.extend(settlements)


def test_a_request_redis_could_not_count_is_settled_here_and_its_usage_copied(clock) -> None:
    store = _FailingRecords()
    limiter = GovernanceLimiter(store, clock=clock)  # type: ignore[arg-type]
    limits = Limits(user_requests_per_minute=10_000)

    async def scenario() -> None:
        await limiter.admit("acme", "u1", limits, 0)  # asked Redis: counts for the user
        fast = await limiter.admit("acme", "u1", limits, 0)
        assert limiter.admitted_without_waiting == 1
        await asyncio.sleep(0.05)  # the background count fails: counted here instead
        assert not limiter.redis_up
        assert limiter.local.in_flight("acme", "u1") == 1
        await limiter.settle(done(fast, input_tokens=2, output_tokens=3))
        assert limiter.local.in_flight("acme", "u1") == 0
        assert (await limiter.usage("acme"))["total_tokens"] == 5
        # ...and its usage waits for Redis, without a lease to release there.
        [copy] = list(limiter._pending)
        assert (copy.lease, copy.input_tokens, copy.output_tokens) == ("", 2, 3)

    run(scenario())


def test_exhausted_names_tenants_and_users_whose_budget_is_used_up(limiter, clock) -> None:
    """What the fast path is pushed: requests Envoy served alone reserve nothing, so only
    settled usage counts; a new day clears it."""
    async def scenario() -> None:
        await limiter.settle(done(None, user="u1", input_tokens=60, output_tokens=40))
        await limiter.settle(done(None, user="u2", input_tokens=99))
        await limiter.settle(done(None, client_id="globex", user="g", input_tokens=500))
        budgets = {"acme": Limits(user_tokens_per_day=100),
                   "globex": Limits(user_tokens_per_day=1000, tenant_tokens_per_day=500),
                   "idle": Limits(tenant_tokens_per_day=1)}
        assert await limiter.exhausted(budgets) == {"acme": frozenset({"u1"}),
                                                    "globex": True}
        clock.now = NOON + 12 * 3600
        assert await limiter.exhausted(budgets) == {}

    run(scenario())


def test_listeners_are_told_each_request_as_charged(clock: Clock) -> None:
    limiter = GovernanceLimiter(clock=clock)
    told: list[Metered] = []
    limiter.listeners.append(told.append)
    limiter.settle_nowait(done(None, input_tokens=7, output_tokens=5))
    # No usage reported, cut short: charged the estimate, which listeners see too.
    limiter.settle_nowait(done(None, user="u2", flags="DC", request_bytes=9, events=3,
                               status=200))
    assert told == [
        Metered("acme", "u1", "2026-12-04", 7, 5, 200, int(NOON * 1000)),
        Metered("acme", "u2", "2026-12-04", 3, 3, 200, int(NOON * 1000)),
    ]


class _SwallowingStore:
    """Stands in for a RedisStore whose client loses a cancellation while it pings (as
    redis-py's timeouts can): it turns it into an error, or returns as if nothing
    happened."""

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome
        self.pinging = asyncio.Event()

    async def ping(self) -> bool:
        self.pinging.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            if self.outcome == "error":
                raise ConnectionError("redis connection lost") from None
            return True
        return True

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("outcome", ["error", "returns"])
def test_close_ends_the_redis_loops_even_when_the_client_loses_the_cancel(
        outcome: str) -> None:
    async def scenario() -> None:
        store = _SwallowingStore(outcome)
        limiter = GovernanceLimiter(store, probe_interval_s=0.01)  # type: ignore[arg-type]
        limiter.redis_up = False  # the prober pings until Redis answers
        await limiter.start()
        await asyncio.wait_for(store.pinging.wait(), 2)
        await asyncio.wait_for(limiter.close(), 2)  # without the fix: forever

    run(scenario())
