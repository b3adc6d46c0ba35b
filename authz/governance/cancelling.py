"""Whether the current task is being cancelled, for loops that catch a store's errors.

redis-py can turn the CancelledError of a call it was in into an error of its own, or
swallow it (its timeouts uncancel the task). A loop that catches `Exception` around such
a call must ask this afterwards and stop, or a cancelled task goes on and whoever awaits
it at shutdown waits forever (seen in the usage relay's tests: about one run in five).
"""

from __future__ import annotations

import asyncio


def cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
