"""Invalidation wins over reads already in flight (issue 11, item 3), and failures a
cache is told to remember are not retried on every request (item 2).

A real concurrent scenario: the source read runs in a worker thread and is held on a
threading.Event while the event loop invalidates, rotates the value and issues new gets.
"""

import asyncio
import threading

import pytest

from authz.errors import VaultUnavailable
from authz.ttl_cache import AsyncTtlCache


class Source:
    """A value per key that a test can change, with reads that can be held open."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.reads = 0
        self.started = threading.Event()
        self.gate = threading.Event()
        self.fail: Exception | None = None

    def read(self, key: str) -> str:
        self.reads += 1
        value = self.value  # what Vault held when the read began
        self.started.set()
        assert self.gate.wait(5), "the test never released the read"
        if self.fail is not None:
            raise self.fail
        return value


def cache(source: Source, **kw) -> AsyncTtlCache[str, str]:
    options = {"ttl_s": 300.0, "negative_ttl_s": 5.0, "stale_if_error_s": 3600.0, **kw}
    return AsyncTtlCache(source.read, name="test", timeout_error=lambda: VaultUnavailable("t"),
                         **options)


async def started(source: Source) -> None:
    """Wait (bounded) until a source read has begun."""
    for _ in range(2000):
        if source.started.is_set():
            return
        await asyncio.sleep(0.001)
    source.gate.set()  # let the held read finish so the test fails instead of hanging
    raise AssertionError("no source read started")


@pytest.mark.parametrize("scope", ["key", "all"])
def test_a_read_in_flight_when_invalidated_does_not_resurrect_the_old_value(scope):
    async def scenario():
        source = Source("old-key")
        c = cache(source)
        before = asyncio.ensure_future(c.get("acme"))
        await started(source)
        # The operator rotates the key in Vault, then invalidates, while the read that
        # began under the old key is still out.
        source.value = "new-key"
        c.invalidate("acme" if scope == "key" else None)
        source.started.clear()
        after = asyncio.ensure_future(c.get("acme"))
        await started(source)  # a request after the invalidation starts its own read...
        source.gate.set()
        old, new = await asyncio.gather(before, after)
        assert source.reads == 2  # ...rather than joining the one begun before it
        assert new.value == "new-key"
        # The caller that asked before the invalidation gets its answer, marked as not
        # reusable (nothing downstream may cache what it derives from it).
        assert old.value == "old-key"
        assert old.fresh_until <= c._clock()
        await c.settle()
        again = await c.get("acme")
        assert again.value == "new-key"
        assert source.reads == 2  # the overtaken read stored nothing
        c.close()

    asyncio.run(scenario())


def test_a_background_refresh_overtaken_by_invalidation_stores_nothing():
    async def scenario():
        now = [1000.0]
        source = Source("old-key")
        source.gate.set()
        c = cache(source, ttl_s=10.0, clock=lambda: now[0])
        assert (await c.get("acme")).value == "old-key"
        source.gate.clear()
        source.started.clear()
        now[0] += 11  # past the TTL: served stale while a background read refreshes
        assert (await c.get("acme")).value == "old-key"
        await started(source)
        source.value = "new-key"
        c.invalidate()
        source.gate.set()
        await c.settle()
        assert (await c.get("acme")).value == "new-key"
        c.close()

    asyncio.run(scenario())


def test_invalidate_where_drops_matching_values_and_overtakes_reads():
    async def scenario():
        source = Source("acme:1")
        source.gate.set()
        c = cache(source)
        await c.get("h1")
        source.value = "globex:1"
        await c.get("h2")
        c.invalidate_where(lambda v: v.startswith("acme:"))
        assert source.reads == 2
        assert (await c.get("h2")).value == "globex:1"
        assert source.reads == 2
        assert (await c.get("h1")).value == "globex:1"
        assert source.reads == 3
        c.close()

    asyncio.run(scenario())


def test_a_remembered_failure_is_not_retried_until_its_ttl_ends():
    async def scenario():
        now = [1000.0]
        source = Source("v")
        source.gate.set()
        source.fail = VaultUnavailable("vault said 403")
        c = cache(source, error_ttl_s=5.0, clock=lambda: now[0])
        for _ in range(20):
            with pytest.raises(VaultUnavailable):
                await c.get("pepper")
        assert source.reads == 1
        assert c.stats.errors_remembered == 19
        now[0] += 5
        source.fail = None
        assert (await c.get("pepper")).value == "v"
        assert source.reads == 2
        c.close()

    asyncio.run(scenario())


def test_failures_are_not_remembered_unless_asked():
    async def scenario():
        source = Source("v")
        source.gate.set()
        source.fail = VaultUnavailable("down")
        c = cache(source)
        for _ in range(3):
            with pytest.raises(VaultUnavailable):
                await c.get("k")
        assert source.reads == 3
        c.close()

    asyncio.run(scenario())
