"""The limiter over a real redis-server: the same behaviours as in process, replicas
sharing one Redis, and Redis killed and restarted under load."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

import pytest
import redis as redis_client

from authz.edge.metrics import Metrics
from authz.errors import RateLimitExceeded, TokenBudgetExhausted
from authz.governance.limiter import GovernanceLimiter
from authz.governance.model import Admission, CompletedRequest, Limits
from authz.governance.redis_store import RedisStore
from tests.support.redis import RedisServer

pytestmark = pytest.mark.integration

NOON = dt.datetime(2026, 12, 4, 12, tzinfo=dt.UTC).timestamp()


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def done(admission: Admission | None, user: str = "u1", client_id: str = "acme", *,
         input_tokens: int | None = None, output_tokens: int | None = None,
         flags: str = "", request_bytes: int = 0) -> CompletedRequest:
    return CompletedRequest(
        client_id=client_id, user=user, lease=admission.lease if admission else "",
        reserved_tokens=admission.reserved_tokens if admission else 0, status=200,
        response_flags=flags, request_body_bytes=request_bytes, response_body_bytes=0,
        input_tokens=input_tokens, output_tokens=output_tokens, events=0)


def make(redis_server: RedisServer, clock: Clock | None = None, *,  # type: ignore[no-untyped-def]
         timeout_s: float = 0.25, **kwargs) -> GovernanceLimiter:
    return GovernanceLimiter(RedisStore(redis_server.url, timeout_s=timeout_s),
                             clock=clock or Clock(), flush_interval_s=0.01, **kwargs)


async def settled(limiter: GovernanceLimiter, deadline_s: float = 2.0) -> None:
    """Wait until the flusher has applied every queued settlement."""
    deadline = time.monotonic() + deadline_s
    while limiter._pending or limiter._held or limiter._records:
        assert time.monotonic() < deadline, "settlements not flushed"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.02)  # the batch in flight


def test_rate_and_concurrency_limits_in_redis(redis_server: RedisServer) -> None:
    clock = Clock()

    async def scenario() -> None:
        limiter = make(redis_server, clock)
        await limiter.start()
        try:
            rpm = Limits(user_requests_per_minute=2)
            await limiter.admit("acme", "u1", rpm, 0)
            clock.now += 15
            await limiter.admit("acme", "u1", rpm, 0)
            with pytest.raises(RateLimitExceeded) as refused:
                await limiter.admit("acme", "u1", rpm, 0)
            assert (refused.value.limit_name, refused.value.retry_after_s) == (
                "user_requests_per_minute", 45)
            clock.now += 45.001
            await limiter.admit("acme", "u1", rpm, 0)

            conc = Limits(user_concurrent_requests=1, user_requests_per_minute=2)
            held = await limiter.admit("acme", "c1", conc, 0)
            for _ in range(3):  # refused by concurrency: the rpm window is not charged
                with pytest.raises(RateLimitExceeded) as refused:
                    await limiter.admit("acme", "c1", conc, 0)
                assert refused.value.limit_name == "user_concurrent_requests"
                assert refused.value.retry_after_s == 1
            await limiter.settle(done(held, "c1", flags="DC"))
            await settled(limiter)
            again = await limiter.admit("acme", "c1", conc, 0)
            await limiter.settle(done(again, "c1"))
        finally:
            await limiter.close()

    asyncio.run(scenario())


def test_lost_lease_expires_in_redis(redis_server: RedisServer) -> None:
    clock = Clock()

    async def scenario() -> None:
        limiter = make(redis_server, clock, lease_ttl_s=60)
        try:
            limits = Limits(user_concurrent_requests=1, tenant_tokens_per_day=100)
            await limiter.admit("acme", "u1", limits, 100)  # never settled
            with pytest.raises(RateLimitExceeded):
                await limiter.admit("acme", "u1", limits, 0)
            with pytest.raises(TokenBudgetExhausted):  # 100 reserved
                await limiter.admit("acme", "u2", limits, 1)
            clock.now += 60
            await limiter.admit("acme", "u1", limits, 0)
            await limiter.admit("acme", "u2", limits, 1)
        finally:
            await limiter.close()

    asyncio.run(scenario())


def test_budget_usage_and_day_reset_in_redis(redis_server: RedisServer) -> None:
    clock = Clock()

    async def scenario() -> None:
        limiter = make(redis_server, clock)
        await limiter.start()
        try:
            budget = Limits(user_tokens_per_day=100, tenant_tokens_per_day=1000)
            a = await limiter.admit("acme", "b1", budget, 60)
            b = await limiter.admit("acme", "b1", budget, 40)
            with pytest.raises(TokenBudgetExhausted):  # 100 reserved
                await limiter.admit("acme", "b1", budget, 1)
            await limiter.settle(done(a, "b1", input_tokens=10, output_tokens=20))
            await limiter.settle(done(b, "b1", input_tokens=5, output_tokens=5))
            await settled(limiter)
            c = await limiter.admit("acme", "b1", budget, 0)  # 40 used
            await limiter.settle(done(c, "b1", input_tokens=30, output_tokens=30))
            await settled(limiter)
            with pytest.raises(TokenBudgetExhausted) as exhausted:  # 100 used
                await limiter.admit("acme", "b1", budget, 0)
            assert exhausted.value.limit_name == "user_tokens_per_day"
            assert exhausted.value.retry_after_s == 12 * 3600
            # No limits: usage still recorded, per user.
            await limiter.settle(done(None, "free", "globex", input_tokens=3, output_tokens=4))
            await settled(limiter)
            assert await limiter.usage("acme") == {
                "client_id": "acme", "day": "2026-12-04", "requests": 3,
                "input_tokens": 45, "output_tokens": 55, "total_tokens": 100,
                "users": {"b1": {"requests": 3, "input_tokens": 45, "output_tokens": 55,
                                 "total_tokens": 100}}}
            assert (await limiter.usage("globex"))["total_tokens"] == 7
            # A second replica reads the same ledger, and so does its fast path: the
            # users (and tenants) past a budget, from the ranks.
            other = make(redis_server, clock)
            assert (await other.usage("acme", "b1"))["requests"] == 3
            budgets = {"acme": budget, "globex": Limits(tenant_tokens_per_day=7),
                       "initech": Limits(user_tokens_per_day=1)}
            expected = {"acme": frozenset({"b1"}), "globex": True}
            assert await other.exhausted(budgets) == expected
            assert await limiter.exhausted(budgets) == expected
            await other.close()
            clock.now = NOON + 12 * 3600
            await limiter.admit("acme", "b1", budget, 0)
            assert (await limiter.usage("acme"))["requests"] == 0
            assert await limiter.exhausted(budgets) == {}
        finally:
            await limiter.close()

    asyncio.run(scenario())


def test_two_replicas_share_limits_under_concurrent_load(redis_server: RedisServer) -> None:
    """Two limiters on one Redis, hammering the same user and tenant at once: at most
    N + 10% + 2 admitted for a limit of N (atomic scripts make it exactly N)."""
    n = 50

    async def scenario() -> int:
        replicas = [make(redis_server, clock=time.time) for _ in range(2)]
        for replica in replicas:
            await replica.start()
        admitted = 0

        async def one(replica: GovernanceLimiter, user: str) -> None:
            nonlocal admitted
            try:
                await replica.admit("acme", user, Limits(tenant_requests_per_minute=n,
                                                         user_requests_per_minute=10_000), 0)
                admitted += 1
            except RateLimitExceeded:
                pass

        await asyncio.gather(*(one(replicas[i % 2], f"u{i % 7}") for i in range(300)))
        for replica in replicas:
            assert replica.redis_up
            await replica.close()
        return admitted

    admitted = asyncio.run(scenario())
    assert n <= admitted <= n + n // 10 + 2


def test_redis_killed_and_restarted_under_load(redis_server: RedisServer,
                                               caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    limits = Limits(user_requests_per_minute=1_000_000, user_concurrent_requests=1_000,
                    tenant_tokens_per_day=10**12)

    async def scenario() -> None:
        limiter = GovernanceLimiter(RedisStore(redis_server.url, timeout_s=0.2),
                                    events=metrics, probe_interval_s=0.1,
                                    flush_interval_s=0.01)
        await limiter.start()
        errors: list[BaseException] = []

        async def load(seconds: float) -> int:
            count = 0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and count < 5000:
                try:
                    admission = await limiter.admit("acme", "u1", limits, 10)
                    await limiter.settle(done(admission, input_tokens=1, output_tokens=1))
                    count += 1
                except Exception as exc:  # a 429 or anything else is a failure here
                    errors.append(exc)
                await asyncio.sleep(0)
            return count

        try:
            assert await load(0.3) > 0
            assert limiter.redis_up
            redis_server.kill()
            assert await load(0.5) > 0  # keeps admitting on local counting
            assert not limiter.redis_up
            assert metrics.redis_up._value.get() == 0
            redis_server.start()
            deadline = time.monotonic() + 5
            while not limiter.redis_up:
                assert time.monotonic() < deadline, "redis not picked up again"
                await load(0.1)
            before = (await limiter.usage("acme"))["requests"]
            assert await load(0.3) > 0
            await settled(limiter)
            after = (await limiter.usage("acme"))["requests"]
            assert after > before  # counting resumed in Redis
            assert errors == []
        finally:
            await limiter.close()

    with caplog.at_level(logging.WARNING, logger="authz.governance.limiter"):
        asyncio.run(scenario())
    down = [r for r in caplog.records if "redis unreachable" in r.getMessage()]
    assert len(down) == 1  # one line for the outage, not one per request
    assert metrics.redis_fallbacks._value.get() >= 1


def test_far_from_the_limit_two_replicas_admit_without_waiting_within_the_bound(
        redis_server: RedisServer) -> None:
    """With a large limit the replicas admit from Redis's recent counts without a round
    trip each; every admission is still counted in Redis, and the limit holds within
    N + 10% + 2 under concurrent load."""
    n = 2000
    # The bound holds while Redis answers: a replica that falls back to counting alone
    # (by design, when Redis is slower than its timeout) would count its own half only.
    # A loaded machine can stall Redis past the shipped 0.25 s, so the timeout here is
    # generous, and a fallback fails the test as such, not as a missed bound.
    metrics = Metrics()

    async def scenario() -> tuple[int, int, int]:
        replicas = [make(redis_server, clock=time.time, timeout_s=2.0, events=metrics)
                    for _ in range(2)]
        for replica in replicas:
            await replica.start()
        admitted = 0
        limits = Limits(tenant_requests_per_minute=n, user_requests_per_minute=10**6,
                        user_concurrent_requests=10**6, tenant_tokens_per_day=10**12)

        async def one(replica: GovernanceLimiter, user: str) -> None:
            nonlocal admitted
            try:
                admission = await replica.admit("wide", user, limits, 10)
                admitted += 1
                await replica.settle(done(admission, user, "wide", input_tokens=1,
                                          output_tokens=1))
            except RateLimitExceeded:
                pass

        for _ in range(6):  # waves, so that each replica has recent counts to go on
            await asyncio.gather(*(one(replicas[i % 2], f"u{i % 5}") for i in range(600)))
        for replica in replicas:
            await settled(replica)
        without_waiting = sum(r.admitted_without_waiting for r in replicas)
        counted = (await replicas[0].usage("wide"))["requests"]
        for replica in replicas:
            assert replica.redis_up
            await replica.close()
        return admitted, without_waiting, counted

    admitted, without_waiting, counted = asyncio.run(scenario())
    fallbacks = metrics.redis_fallbacks._value.get()
    assert fallbacks == 0, "Redis did not answer within 2 s: the bound was not tested"
    assert n <= admitted <= n + n // 10 + 2
    # The path under test was taken: each replica used at least its share once (1/40 of
    # the tenant's limit may be admitted before Redis has counted it).
    assert without_waiting >= 2 * (n // 40)
    assert counted == admitted  # every admission reached Redis's ledger


def test_a_request_settled_before_redis_counted_it_releases_its_slot(
        redis_server: RedisServer) -> None:
    clock = Clock()
    limits = Limits(user_concurrent_requests=1000)

    async def scenario() -> None:
        limiter = make(redis_server, clock)
        await limiter.start()
        try:
            first = await limiter.admit("acme", "early", limits, 0)  # asks Redis
            await limiter.settle(done(first, "early"))
            fast = await limiter.admit("acme", "early", limits, 0)
            assert limiter.admitted_without_waiting == 1
            # Ended before the background write counted it: held, then released.
            await limiter.settle(done(fast, "early"))
            await settled(limiter)
            client = redis_client.Redis.from_url(redis_server.url)
            try:
                assert int(client.hget("gov:{acme}:held", "n:early") or 0) == 0
                assert client.zcard("gov:{acme}:inflight") == 0
            finally:
                client.close()
        finally:
            await limiter.close()

    asyncio.run(scenario())


def test_usage_counted_during_an_outage_reaches_redis_when_it_is_back(
        redis_server: RedisServer) -> None:
    limits = Limits(user_requests_per_minute=1000)

    async def scenario() -> dict[str, object]:
        limiter = GovernanceLimiter(RedisStore(redis_server.url, timeout_s=0.2),
                                    probe_interval_s=0.05, flush_interval_s=0.01)
        await limiter.start()
        try:
            redis_server.kill()
            for _ in range(5):
                admission = await limiter.admit("outage", "u1", limits, 0)
                assert admission.lease.startswith("l")  # counted on this replica
                await limiter.settle(done(admission, "u1", "outage", input_tokens=2,
                                          output_tokens=3))
            assert not limiter.redis_up
            assert (await limiter.usage("outage"))["requests"] == 5  # the local view
            redis_server.start()
            deadline = time.monotonic() + 5
            while not limiter.redis_up:
                assert time.monotonic() < deadline, "redis not picked up again"
                await asyncio.sleep(0.02)
            await settled(limiter)
            return await limiter.usage("outage")  # now from Redis
        finally:
            await limiter.close()

    usage = asyncio.run(scenario())
    assert usage["requests"] == 5
    assert usage["total_tokens"] == 25
    assert usage["users"] == {"u1": {"requests": 5, "input_tokens": 10, "output_tokens": 15,
                                     "total_tokens": 25}}
