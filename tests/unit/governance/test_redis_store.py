"""The commands RedisStore writes are what the scripts expect (no sockets: the store
connects on first use only)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from authz.governance.counters import AdmitRequest, Settlement
from authz.governance.model import Limits
from authz.governance.redis_store import _ADMIT, _SETTLE, USAGE_TTL_S, RedisStore
from authz.governance.resp import encode


def test_an_admission_is_encoded_as_the_whole_command_would_be() -> None:
    store = RedisStore("redis://127.0.0.1:1")
    limits = Limits(user_requests_per_minute=5, user_tokens_per_day=100)
    for lease, record in (("r1", False), ("r2", True), ("r3", False)):  # cold, then cached
        request = AdmitRequest("acme", "u:1|x", lease, limits, 12, 1_700_000_000_123,
                               "2026-12-04", 1_700_003_600_123)
        assert store._admit_payload(request, record=record) == encode((
            "EVALSHA", store._shas[_ADMIT], 6, "gov:{acme}:inflight", "gov:{acme}:held",
            "gov:{acme}:rpm:u:u:1|x", "gov:{acme}:rpm", "gov:{acme}:usage:2026-12-04",
            "gov:{acme}:users:2026-12-04", 1_700_000_000_123, "u:1|x", lease, 12,
            1_700_003_600_123, 5, -1, -1, 100, -1, 1 if record else 0))
    # Other limits for the same user: encoded anew, not taken from the cache.
    other = AdmitRequest("acme", "u:1|x", "r4", Limits(user_concurrent_requests=2), 0, 1,
                         "2026-12-04", 2)
    assert store._admit_payload(other, record=False).endswith(encode((-1, -1, 2, -1, -1, 0))[4:])


def test_settlements_are_encoded_as_the_whole_command_would_be() -> None:
    store = RedisStore("redis://127.0.0.1:1")
    sent: list[list[bytes]] = []

    async def request_many(payloads: list[bytes]) -> list[object]:
        sent.append(payloads)
        return [1] * len(payloads)

    store.settler.request_many = request_many  # type: ignore[method-assign]
    settlements = [Settlement("acme", "u1", "r9", 40, 10, 20, "2026-12-04"),
                   Settlement("acme", "u1", "", 0, 3, 4, "2026-12-04")]
    asyncio.run(store.settle_many(settlements, now_ms=77))
    assert sent == [[encode((
        "EVALSHA", store._shas[_SETTLE], 5, "gov:{acme}:inflight", "gov:{acme}:held",
        "gov:{acme}:usage:2026-12-04", "gov:{acme}:users:2026-12-04",
        "gov:{acme}:ranks:2026-12-04", 77, member, "u1",
        i, o, USAGE_TTL_S)) for member, i, o in (("r9|40|u1", 10, 20), ("", 3, 4))]]


def test_a_relay_without_redis_does_not_load_redis_py() -> None:
    """redis-py (and what it pulls in) costs ~8 MB of resident memory per process."""
    code = ("import sys, authz.service, authz.cli.main; "
            "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"
