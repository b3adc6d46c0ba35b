"""The usage feed: every metered request, handed to whoever watches (the Admin API's
WatchUsage), as the limiter meters it.

Publishing never blocks and never grows without bound: each watcher holds at most its
own `max_pending` events. A watcher that falls further behind is marked overflowed,
gets what it holds, and is then ended (it has missed events; the totals stay in the
ledger). Events are not kept for watchers that are not there: a watcher sees what is
metered while it watches. Everything runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from authz.governance.model import Metered

#: The most events one watcher may hold (and its default).
MAX_PENDING = 10_000
#: The most watchers at once: each may hold MAX_PENDING events (a few MB).
MAX_WATCHERS = 32


class TooManyWatchers(Exception):
    def __init__(self) -> None:
        super().__init__(f"{MAX_WATCHERS} usage watchers already: try again later")


class WatchOverflow(Exception):
    """The watcher fell more than its max_pending events behind and missed some."""

    def __init__(self, max_pending: int) -> None:
        super().__init__(f"more than {max_pending} usage events behind: events were missed")
        self.max_pending = max_pending


class Watcher:
    """One watcher's queue: the events of its tenant (or all), oldest first."""

    def __init__(self, client_id: str | None, max_pending: int) -> None:
        self.client_id = client_id
        self.max_pending = max_pending
        self.overflowed = False
        self._events: deque[Metered] = deque()
        self._wake = asyncio.Event()

    def offer(self, event: Metered) -> None:
        if self.overflowed or (self.client_id is not None and event.client_id != self.client_id):
            return
        if len(self._events) >= self.max_pending:
            self.overflowed = True
        else:
            self._events.append(event)
        self._wake.set()

    async def next(self) -> Metered:
        """The oldest event held, waiting for one; WatchOverflow once those held before
        an overflow are delivered."""
        while not self._events:
            if self.overflowed:
                raise WatchOverflow(self.max_pending)
            self._wake.clear()
            await self._wake.wait()
        return self._events.popleft()


class UsageFeed:
    def __init__(self) -> None:
        self._watchers: set[Watcher] = set()
        self._watched = asyncio.Event()  # set while anyone watches

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    async def watched(self) -> None:
        """Returns once someone watches (at once if someone does)."""
        await self._watched.wait()

    def publish(self, event: Metered) -> None:
        for watcher in self._watchers:
            watcher.offer(event)

    @contextmanager
    def watch(self, client_id: str | None = None,
              max_pending: int = MAX_PENDING) -> Iterator[Watcher]:
        """A watcher for the block's duration (removed however the block ends)."""
        if not 0 < max_pending <= MAX_PENDING:
            raise ValueError(f"max_pending must be 1..{MAX_PENDING}")
        if len(self._watchers) >= MAX_WATCHERS:
            raise TooManyWatchers
        watcher = Watcher(client_id, max_pending)
        self._watchers.add(watcher)
        self._watched.set()
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)
            if not self._watchers:
                self._watched.clear()
