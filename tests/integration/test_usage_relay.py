"""Usage events across replicas through a real redis-server (authz/governance/usage_relay.py):
two replicas' feeds and relays in one process, Redis killed and restarted between them."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from authz.governance.model import Metered
from authz.governance.usage_feed import UsageFeed, Watcher
from authz.governance.usage_relay import RedisUsageRelay
from tests.support.redis import RedisServer

pytestmark = pytest.mark.integration


def event(user: str) -> Metered:
    return Metered("acme", user, "2026-12-05", 3, 4, 200, 1_770_000_000_000)


class Replica:
    """What `authz serve` wires: the limiter tells the feed and the relay of each event."""

    def __init__(self, redis_server: RedisServer) -> None:
        self.feed = UsageFeed()
        self.relay = RedisUsageRelay(redis_server.url, self.feed, flush_s=0.01, probe_s=0.05,
                                     timeout_s=0.25)

    def metered(self, user: str) -> None:
        self.feed.publish(event(user))
        self.relay.publish(event(user))


async def until(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def received(watcher: Watcher, count: int, timeout_s: float = 5.0) -> list[str]:
    return [(await asyncio.wait_for(watcher.next(), timeout_s)).user for _ in range(count)]


def test_events_cross_replicas_once_and_survive_a_redis_restart(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        first, second = Replica(redis_server), Replica(redis_server)
        for replica in (first, second):
            await replica.relay.start()
        try:
            # Nobody watches: nothing is published.
            first.metered("unwatched")
            await asyncio.sleep(0.2)  # several probe periods: a publish would have happened
            assert first.relay.published == 0
            with second.feed.watch("acme") as watcher:
                await until(lambda: first.relay._others_watch)
                first.metered("a1")
                second.metered("b1")  # its own: delivered directly, not echoed back
                first.metered("a2")
                assert sorted(await received(watcher, 3)) == ["a1", "a2", "b1"]
                await asyncio.sleep(0.2)
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(watcher.next(), 0.2)
                # Redis dies: the local feed goes on; publishing fails quietly.
                redis_server.kill()
                await until(lambda: not first.relay._others_watch)
                second.metered("b2")
                assert await received(watcher, 1) == ["b2"]
                # Back: the subscriber reconnects and the others publish again.
                redis_server.start()
                await until(lambda: first.relay._others_watch, timeout_s=10)
                first.metered("a3")
                assert await received(watcher, 1) == ["a3"]
            # The watch is gone: the subscription ends and publishing stops.
            await until(lambda: not first.relay._others_watch)
            published = first.relay.published
            first.metered("after")
            await asyncio.sleep(0.2)
            assert first.relay.published == published
        finally:
            for replica in (first, second):
                await replica.relay.close()

    with caplog.at_level(logging.INFO, logger="authz.governance.usage_relay"):
        asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert "usage events across replicas paused: redis failed" in messages
    assert "usage events across replicas resumed" in messages
