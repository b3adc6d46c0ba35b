"""Background tasks that stop: whether the current task is being cancelled (for loops
that catch a store's errors), and cancelling a set of tasks and waiting for them.

redis-py can turn the CancelledError of a call it was in into an error of its own, or
swallow it (its timeouts uncancel the task). A loop that catches `Exception` around such
a call must ask this afterwards and stop, or a cancelled task goes on and whoever awaits
it at shutdown waits forever (seen in the usage relay's tests: about one run in five).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable


def cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def stop_if_cancelling() -> None:
    """Raise CancelledError when this task is being cancelled: after a store call that
    may have lost the cancel (returned, or raised an error of its own instead)."""
    if cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel every task, then wait for each to end (at shutdown: how one ended, by the
    cancel or by an error, no longer matters)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
