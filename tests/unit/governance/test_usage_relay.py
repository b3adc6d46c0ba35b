"""The usage relay's batch format and the feed's `watched` signal (no sockets; the relay
over a real Redis: tests/integration/test_usage_relay.py)."""

from __future__ import annotations

import asyncio

import pytest

from authz.governance.model import Metered
from authz.governance.usage_feed import UsageFeed
from authz.governance.usage_relay import _encode, decode

EVENTS = [Metered("acme", "u1", "2026-12-05", 3, 4, 200, 1_770_000_000_000),
          Metered("globex", "ü\t\"quoted\"", "2026-12-05", 0, 0, 503, 1_770_000_000_001)]


def test_a_batch_round_trips() -> None:
    assert decode(_encode("r1", EVENTS)) == ("r1", EVENTS)
    assert decode(_encode("r1", EVENTS).encode()) == ("r1", EVENTS)


@pytest.mark.parametrize("message", [
    b"", b"null", b"[]", b'{"replica": "r1"}', b'{"events": []}',
    b'{"replica": "r1", "events": [["acme", "u1", "d", 1, 2, 200]]}',
    b'{"replica": "r1", "events": [["acme", "u1", "d", "x", 2, 200, 5]]}',
    b'{"replica": "r1", "events": 7}', b"\xff\xfe",
])
def test_anything_else_on_the_channel_is_not_a_batch(message: bytes) -> None:
    with pytest.raises(ValueError, match="not a usage batch"):
        decode(message)


def test_watched_returns_while_anyone_watches() -> None:
    async def scenario() -> None:
        feed = UsageFeed()
        waiting = asyncio.ensure_future(feed.watched())
        await asyncio.sleep(0)
        assert not waiting.done()
        with feed.watch():
            await asyncio.wait_for(waiting, 1)
            with feed.watch():
                pass
            await asyncio.wait_for(feed.watched(), 1)  # one watcher is still there
        again = asyncio.ensure_future(feed.watched())
        await asyncio.sleep(0)
        assert not again.done()
        again.cancel()

    asyncio.run(scenario())
