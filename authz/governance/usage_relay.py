"""Usage events across replicas (AUTHZ_REDIS_URL): what one replica meters reaches the
watchers of every other one, through Redis pub/sub.

Each replica hands its own events to its own watchers directly (usage_feed.py) and, while
some other replica has watchers, publishes them in batches (one PUBLISH every 50 ms at
most, whatever the request rate). A replica with watchers subscribes and hands the
batches of the others to its watchers; its own batches it skips (they were delivered).

Publishing costs nothing while nobody watches: a probe asks Redis every second how many
replicas subscribe, so a new watcher sees other replicas' requests within about a
second. Best effort, as pub/sub is: a batch published while Redis is down, or while a
subscriber reconnects, is lost (the ledger still counts every request: GetUsage). The
channel is named after the Redis database, so deployments sharing one Redis server on
different databases do not hear each other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from collections.abc import Iterable
from typing import Any

from redis import asyncio as aioredis

from authz.governance.cancelling import cancel_and_wait, stop_if_cancelling
from authz.governance.model import Metered
from authz.governance.usage_feed import UsageFeed

log = logging.getLogger(__name__)

#: How long events gather before they are published together.
FLUSH_S = 0.05
#: How often the number of subscribing replicas is read.
PROBE_S = 1.0
#: Events held for publishing at most; beyond, the oldest are dropped (Redis is slow).
MAX_BATCH = 10_000


def _encode(replica: str, events: Iterable[Metered]) -> str:
    return json.dumps({"replica": replica, "events": [
        [e.client_id, e.user, e.day, e.input_tokens, e.output_tokens, e.status, e.at_ms]
        for e in events]}, separators=(",", ":"))


def decode(message: bytes | str) -> tuple[str, list[Metered]]:
    """(replica, events) of a published batch; ValueError when it is not one."""
    try:
        body = json.loads(message)
        events = [Metered(str(c), str(u), str(d), int(i), int(o), int(s), int(t))
                  for c, u, d, i, o, s, t in body["events"]]
        return str(body["replica"]), events
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError("not a usage batch") from exc


class RedisUsageRelay:
    def __init__(self, url: str, feed: UsageFeed, *, flush_s: float = FLUSH_S,
                 probe_s: float = PROBE_S, timeout_s: float = 1.0) -> None:
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        db = self._client.connection_pool.connection_kwargs.get("db", 0)
        self.channel = f"relay:usage-events:{db}"
        self.replica = os.urandom(8).hex()
        self._feed = feed
        self._flush_s = flush_s
        self._probe_s = probe_s
        self._batch: deque[Metered] = deque(maxlen=MAX_BATCH)
        self._wake = asyncio.Event()
        self._others_watch = False
        self._subscribed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._failing = False
        self._closing = False
        self.published = 0

    def publish(self, event: Metered) -> None:
        """A request this replica metered (a limiter listener): queued for the others'
        watchers, if any."""
        if not self._others_watch:
            return
        self._batch.append(event)  # bounded: the oldest drop out (Redis is slow)
        self._wake.set()

    async def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._publisher()),
                           asyncio.ensure_future(self._prober()),
                           asyncio.ensure_future(self._subscriber())]

    async def close(self) -> None:
        self._closing = True  # loops end at their next turn even if a cancel was swallowed
        await cancel_and_wait(self._tasks)
        self._tasks = []
        await self._client.aclose()

    def _failed(self, what: str, exc: BaseException) -> None:
        if not self._failing:  # once per outage: the retries say nothing new
            log.warning("usage events across replicas paused: redis failed",
                        extra={"during": what, "cause": type(exc).__name__})
        self._failing = True

    def _ok(self) -> None:
        if self._failing:
            log.info("usage events across replicas resumed")
        self._failing = False

    async def _publisher(self) -> None:
        while not self._closing:
            await self._wake.wait()
            await asyncio.sleep(self._flush_s)  # gathers a burst into one message
            self._wake.clear()
            batch, self._batch = self._batch, deque(maxlen=MAX_BATCH)
            if not batch:
                continue
            try:
                await self._client.publish(self.channel, _encode(self.replica, batch))
                self.published += len(batch)
                self._ok()
            except Exception as exc:
                stop_if_cancelling()
                self._failed("publish", exc)  # that batch is lost (best effort)

    async def _prober(self) -> None:
        while not self._closing:
            try:
                counts = await self._client.pubsub_numsub(self.channel)
                subscribers = int(counts[0][1]) if counts else 0
                self._others_watch = subscribers > (1 if self._subscribed else 0)
                self._ok()
            except Exception as exc:
                stop_if_cancelling()
                self._others_watch = False
                self._failed("probe", exc)
            await asyncio.sleep(self._probe_s)

    async def _subscriber(self) -> None:
        while not self._closing:
            await self._feed.watched()
            try:
                await self._follow()
            except Exception as exc:
                stop_if_cancelling()
                self._failed("subscribe", exc)
                await asyncio.sleep(self._probe_s)
            finally:
                self._subscribed = False

    async def _follow(self) -> None:
        """Subscribed while this replica has watchers: the others' batches to them."""
        pubsub: Any = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            self._subscribed = True
            self._ok()
            while self._feed.watchers and not self._closing:
                message = await pubsub.get_message(timeout=self._probe_s)
                if message is None or message.get("type") != "message":
                    continue
                try:
                    replica, events = decode(message["data"])
                except ValueError:
                    continue
                if replica == self.replica:
                    continue
                for event in events:
                    self._feed.publish(event)
        finally:
            await pubsub.aclose()
