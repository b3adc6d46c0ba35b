"""Counters in Redis, shared by every replica (`AUTHZ_REDIS_URL`).

One admitted governed request costs one round trip at most: a Lua script (EVALSHA)
checks every limit of the request and, only when all pass, counts it, atomically, so two
replicas can never both take the last slot (sent on a pipelining connection of its own,
resp.py). Settlements are another script, pipelined in batches (one round trip per
batch). Keys of one tenant share a hash tag `{client_id}` (a cluster keeps them on one
shard); usage keys carry the UTC day and expire.

    gov:{c}:inflight          zset  lease|reserved|user -> lease expiry (ms)
    gov:{c}:held              hash  n:<user> open requests, r:<user> / r reserved tokens
    gov:{c}:rpm:u:<user>      zset  lease -> admitted at (ms), sliding minute
    gov:{c}:rpm               zset  the tenant's sliding minute
    gov:{c}:usage:<day>       hash  requests, input_tokens, output_tokens, total_tokens
    gov:{c}:users:<day>       hash  <user>\\n<field> -> the same per user
    gov:{c}:ranks:<day>       zset  <user> -> total tokens (the fast path reads the users
                                    past a budget from it without reading every user)
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from authz.governance.counters import (
    AdmitRequest,
    Counts,
    Refusal,
    Settlement,
    TenantUsage,
    UserUsage,
    lease_member,
)
from authz.governance.model import Limits
from authz.governance.resp import RespConnection, RespError, bulk

#: Usage of a day is kept this long (today's and yesterday's are readable).
USAGE_TTL_S = 2 * 24 * 3600
_FIELDS = ("requests", "input_tokens", "output_tokens", "total_tokens")
_USAGE_TTL = bulk(USAGE_TTL_S)
_MAX_CACHED_PARTS = 100_000

# Releases leases past their expiry (their access-log entry was lost); shared by both
# scripts. KEYS[1] inflight zset, KEYS[2] held hash; ARGV[1] now (ms).
_EXPIRE = """
local function release(member)
  local s1 = string.find(member, '|', 1, true)
  local s2 = string.find(member, '|', s1 + 1, true)
  local tokens = tonumber(string.sub(member, s1 + 1, s2 - 1))
  local user = string.sub(member, s2 + 1)
  redis.call('HINCRBY', KEYS[2], 'n:' .. user, -1)
  if tokens ~= 0 then
    redis.call('HINCRBY', KEYS[2], 'r:' .. user, -tokens)
    redis.call('HINCRBY', KEYS[2], 'r', -tokens)
  end
end
local function expire_leases()
  local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
  for _, member in ipairs(expired) do
    redis.call('ZREM', KEYS[1], member)
    release(member)
  end
end
"""

# KEYS: 1 inflight, 2 held, 3 user window, 4 tenant window, 5 usage, 6 users usage.
# ARGV: 1 now_ms, 2 user, 3 lease, 4 reserve, 5 lease expiry ms, then the limits
# (-1 = none): 6 user rpm, 7 tenant rpm, 8 user concurrency, 9 user tpd, 10 tenant tpd;
# 11 '1' to record the request without checking (the limiter admitted it already, far
# from every limit), else '0'.
# Returns {limit name, retry ms} when refused (nothing counted); when counted, '' and
# the counts after it: user window, tenant window, user open requests, user tokens
# (used + reserved), tenant tokens (used + reserved).
_ADMIT = _EXPIRE + """
local now = tonumber(ARGV[1])
local user = ARGV[2]
local urpm, trpm = tonumber(ARGV[6]), tonumber(ARGV[7])
local uconc, utpd, ttpd = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local check = ARGV[11] ~= '1'
if check then
  -- (A recorded request skips this: every settlement runs it too.)
  expire_leases()
end
local function window_full(key, limit, name)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - 60000)
  if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local retry = 60000
    if oldest[2] then retry = tonumber(oldest[2]) + 60000 - now end
    return {name, retry}
  end
  return nil
end
local function user_tokens()
  return tonumber(redis.call('HGET', KEYS[6], user .. '\\ntotal_tokens') or '0')
    + tonumber(redis.call('HGET', KEYS[2], 'r:' .. user) or '0')
end
local function tenant_tokens()
  return tonumber(redis.call('HGET', KEYS[5], 'total_tokens') or '0')
    + tonumber(redis.call('HGET', KEYS[2], 'r') or '0')
end
-- A window's refusal, or nil; a recorded request only trims the window.
local function window(key, limit, name)
  if limit < 0 then return nil end
  if check then return window_full(key, limit, name) end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - 60000)
  return nil
end
local refused = window(KEYS[3], urpm, 'user_requests_per_minute')
  or window(KEYS[4], trpm, 'tenant_requests_per_minute')
if refused then return refused end
if check and uconc >= 0 then
  if tonumber(redis.call('HGET', KEYS[2], 'n:' .. user) or '0') >= uconc then
    return {'user_concurrent_requests', 0}
  end
end
if check and utpd >= 0 and user_tokens() >= utpd then
  return {'user_tokens_per_day', 0}
end
if check and ttpd >= 0 and tenant_tokens() >= ttpd then
  return {'tenant_tokens_per_day', 0}
end
local lease = ARGV[3]
if urpm >= 0 then
  redis.call('ZADD', KEYS[3], now, lease)
  redis.call('PEXPIRE', KEYS[3], 61000)
end
if trpm >= 0 then
  redis.call('ZADD', KEYS[4], now, lease)
  redis.call('PEXPIRE', KEYS[4], 61000)
end
local reserve = tonumber(ARGV[4])
local expiry = tonumber(ARGV[5])
redis.call('ZADD', KEYS[1], expiry, lease .. '|' .. reserve .. '|' .. user)
redis.call('HINCRBY', KEYS[2], 'n:' .. user, 1)
if reserve ~= 0 then
  redis.call('HINCRBY', KEYS[2], 'r:' .. user, reserve)
  redis.call('HINCRBY', KEYS[2], 'r', reserve)
end
local keep = expiry - now + 60000
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
-- Every measure, whether this request's limits name it or not (a window this request
-- did not trim may still hold entries older than a minute: the count errs high).
return {'', redis.call('ZCARD', KEYS[3]), redis.call('ZCARD', KEYS[4]),
        tonumber(redis.call('HGET', KEYS[2], 'n:' .. user) or '0'),
        user_tokens(), tenant_tokens()}
"""

# KEYS: 1 inflight, 2 held, 3 usage, 4 users usage, 5 user ranks. ARGV: 1 now_ms,
# 2 lease member ('' = none), 3 user, 4 input, 5 output, 6 usage ttl (s).
_SETTLE = _EXPIRE + """
expire_leases()
if ARGV[2] ~= '' and redis.call('ZREM', KEYS[1], ARGV[2]) == 1 then
  release(ARGV[2])
end
local input, output = tonumber(ARGV[4]), tonumber(ARGV[5])
local user = ARGV[3]
redis.call('HINCRBY', KEYS[3], 'requests', 1)
redis.call('HINCRBY', KEYS[3], 'input_tokens', input)
redis.call('HINCRBY', KEYS[3], 'output_tokens', output)
redis.call('HINCRBY', KEYS[3], 'total_tokens', input + output)
redis.call('HINCRBY', KEYS[4], user .. '\\nrequests', 1)
redis.call('HINCRBY', KEYS[4], user .. '\\ninput_tokens', input)
redis.call('HINCRBY', KEYS[4], user .. '\\noutput_tokens', output)
redis.call('HINCRBY', KEYS[4], user .. '\\ntotal_tokens', input + output)
redis.call('ZINCRBY', KEYS[5], input + output, user)
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('EXPIRE', KEYS[4], ARGV[6])
redis.call('EXPIRE', KEYS[5], ARGV[6])
return 1
"""


def _keys(client_id: str) -> tuple[str, str]:
    tag = "{" + client_id + "}"
    return f"gov:{tag}:inflight", f"gov:{tag}:held"


def _usage_keys(client_id: str, day: str) -> tuple[str, str]:
    tag = "{" + client_id + "}"
    return f"gov:{tag}:usage:{day}", f"gov:{tag}:users:{day}"


def _ranks_key(client_id: str, day: str) -> str:
    return "gov:{" + client_id + "}:ranks:" + day


def _limit(value: int | None) -> int:
    return -1 if value is None else value


def _admit_result(result: Any) -> Refusal | Counts:
    name = _text(result[0])
    if name:
        return Refusal(name, int(result[1]))
    return Counts(*(int(value) for value in result[1:6]))


def _no_script(result: Any) -> bool:
    return isinstance(result, RespError) and str(result).startswith("NOSCRIPT")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """Every call may raise redis/OS errors or time out: the limiter falls back."""

    def __init__(self, url: str, *, timeout_s: float = 0.25) -> None:
        # Short timeouts: a slow Redis must not hold checks (Envoy waits 2 s at most);
        # the limiter counts locally instead and a probe brings Redis back.
        # A blocking pool: a burst of checks waits (up to the timeout) for a connection
        # instead of failing with "too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            health_check_interval=0, max_connections=128, timeout=timeout_s,
        )
        self.client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self.timeout_s = timeout_s
        self._shas = {script: hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
                      for script in (_ADMIT, _SETTLE)}
        # The check path's own connection (see resp.py for why not redis-py there), and
        # one for settlement batches, so a batch never queues ahead of an admission.
        self.fast = RespConnection(url, timeout_s=timeout_s)
        self.settler = RespConnection(url, timeout_s=timeout_s * 4)
        # Encoded command parts per (tenant, user, day): see _admit_payload.
        self._admit_parts: dict[tuple[str, str, str],
                                tuple[Limits, bytes, bytes, bytes, bytes]] = {}
        self._settle_parts: dict[tuple[str, str, str], tuple[bytes, bytes]] = {}

    async def admit(self, r: AdmitRequest) -> Refusal | Counts:
        """Check and count one request: one EVALSHA on the check path's own pipelining
        connection (resp.py). The counts after it, or the refusal."""
        payload = self._admit_payload(r, record=False)
        try:
            result = await self.fast.request(payload)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # A restarted (empty) Redis: load the script once, run again (the refused
            # call did nothing).
            await self.fast.call("SCRIPT", "LOAD", _ADMIT)
            result = await self.fast.request(payload)
        return _admit_result(result)

    async def record_many(self, requests: Sequence[AdmitRequest]) -> list[Counts]:
        """Count requests the limiter already admitted (far from every limit), in one
        write on the same connection as admissions, so that they stay in order: the
        counts after each. Raises when any could not be counted."""
        payloads = [self._admit_payload(r, record=True) for r in requests]
        results = await self._run(self.fast, _ADMIT, payloads)
        counts = []
        for result in results:
            if isinstance(result, Exception):
                raise result
            counted = _admit_result(result)
            if not isinstance(counted, Counts):  # the script never refuses a record
                raise ConnectionError("redis refused to record an admitted request")
            counts.append(counted)
        return counts

    def _admit_payload(self, r: AdmitRequest, *, record: bool) -> bytes:
        """The EVALSHA of _ADMIT, encoded. What stays the same for a user on a day (the
        keys, the user, the limits) is encoded once: this runs for every request."""
        cached = self._admit_parts.get((r.client_id, r.user, r.day))
        if cached is None or cached[0] is not r.limits:
            if len(self._admit_parts) >= _MAX_CACHED_PARTS:
                self._admit_parts.clear()
            inflight, held = _keys(r.client_id)
            usage, users = _usage_keys(r.client_id, r.day)
            tag = "{" + r.client_id + "}"
            limits = r.limits
            head = b"*20\r\n" + b"".join(bulk(a) for a in (
                "EVALSHA", self._shas[_ADMIT], 6, inflight, held,
                f"gov:{tag}:rpm:u:{r.user}", f"gov:{tag}:rpm", usage, users))
            tail = b"".join(bulk(_limit(v)) for v in (
                limits.user_requests_per_minute, limits.tenant_requests_per_minute,
                limits.user_concurrent_requests, limits.user_tokens_per_day,
                limits.tenant_tokens_per_day))
            cached = (limits, head, bulk(r.user), tail + bulk(0), tail + bulk(1))
            self._admit_parts[(r.client_id, r.user, r.day)] = cached
        _, head, user, check_tail, record_tail = cached
        return b"".join((head, bulk(r.now_ms), user, bulk(r.lease), bulk(r.reserve),
                         bulk(r.lease_expiry_ms), record_tail if record else check_tail))

    async def _run(self, connection: RespConnection, script: str,
                   payloads: list[bytes]) -> list[Any]:
        """EVALSHA payloads in one write; on NOSCRIPT (a restarted Redis) load the script
        and run the refused ones again (a refused call did nothing)."""
        results = await connection.request_many(payloads)
        refused = [i for i, r in enumerate(results) if _no_script(r)]
        if refused:
            await connection.call("SCRIPT", "LOAD", script)
            again = await connection.request_many([payloads[i] for i in refused])
            if any(_no_script(r) for r in again):
                raise ConnectionError("redis refused the script twice")
            for i, result in zip(refused, again, strict=True):
                results[i] = result
        return results

    async def settle_many(self, settlements: Sequence[Settlement], now_ms: int = 0) -> None:
        if not settlements:
            return
        now = bulk(now_ms)
        payloads = []
        for s in settlements:
            head = self._settle_parts.get((s.client_id, s.user, s.day))
            if head is None:
                if len(self._settle_parts) >= _MAX_CACHED_PARTS:
                    self._settle_parts.clear()
                inflight, held = _keys(s.client_id)
                usage, users = _usage_keys(s.client_id, s.day)
                head = (b"*14\r\n" + b"".join(bulk(a) for a in (
                    "EVALSHA", self._shas[_SETTLE], 5, inflight, held, usage, users,
                    _ranks_key(s.client_id, s.day))),
                    bulk(s.user))
                self._settle_parts[(s.client_id, s.user, s.day)] = head
            member = lease_member(s.lease, s.reserved, s.user) if s.lease else ""
            payloads.append(b"".join((head[0], now, bulk(member), head[1], bulk(s.input_tokens),
                                      bulk(s.output_tokens), _USAGE_TTL)))
        results = await asyncio.wait_for(self._run(self.settler, _SETTLE, payloads),
                                         self.timeout_s * 4)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]

    async def usage(self, client_id: str, day: str) -> TenantUsage:
        usage_key, users_key = _usage_keys(client_id, day)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(usage_key)
        pipe.hgetall(users_key)
        tenant_raw, users_raw = await pipe.execute()
        report = TenantUsage()
        for name in _FIELDS:
            setattr(report, name, int(tenant_raw.get(name.encode(), 0)))
        for raw_field, raw_value in users_raw.items():
            user, _, name = _text(raw_field).rpartition("\n")
            if name in _FIELDS:
                setattr(report.users.setdefault(user, UserUsage()), name, int(raw_value))
        return report

    async def used_up(self, day: str, budgets: Mapping[str, Limits]
                      ) -> dict[str, tuple[int, frozenset[str]]]:
        """Per tenant: its total tokens today, and the users whose own total has reached
        their budget (read from the ranks, not from every user). One round trip."""
        pipe = self.client.pipeline(transaction=False)
        for client_id, limits in budgets.items():
            pipe.hget(_usage_keys(client_id, day)[0], "total_tokens")
            if limits.user_tokens_per_day is not None:
                pipe.zrangebyscore(_ranks_key(client_id, day), limits.user_tokens_per_day,
                                   "+inf")
        results = iter(await pipe.execute())
        found = {}
        for client_id, limits in budgets.items():
            total = int(next(results) or 0)
            users = (frozenset(_text(u) for u in next(results))
                     if limits.user_tokens_per_day is not None else frozenset())
            found[client_id] = (total, users)
        return found

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def close(self) -> None:
        self.fast.close()
        self.settler.close()
        await self.client.aclose(close_connection_pool=True)
