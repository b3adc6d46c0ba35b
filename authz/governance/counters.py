"""What a counter store does for the limiter, and the in-process store.

A store answers three questions atomically per request, with the caller's clock:

    admit   check every limit of one request and, only when all pass, count it
            (rate windows, a concurrency lease, a token reservation); a refusal
            counts and reserves nothing
    settle  release a lease and its reservation; add the request's tokens to the
            day's usage of its tenant and user
    usage   the day's usage of one tenant, per user

LocalStore keeps all of it in this process (one replica; `AUTHZ_REDIS_URL` unset, and
every replica's fallback while Redis is down). RedisStore (redis_store.py) keeps the
same data in Redis so every replica shares it. Both are driven only from the event
loop thread, so LocalStore needs no lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from authz.governance.model import Limits

WINDOW_MS = 60_000
#: Limit names, in the order they are checked (per-user before per-tenant).
CHECK_ORDER = ("user_requests_per_minute", "tenant_requests_per_minute",
               "user_concurrent_requests", "user_tokens_per_day", "tenant_tokens_per_day")


# Built once or twice per request: plain slotted classes (a frozen dataclass sets every
# field through object.__setattr__, several times slower).
@dataclass(slots=True)
class AdmitRequest:
    client_id: str
    user: str
    lease: str
    limits: Limits
    reserve: int
    now_ms: int
    day: str
    #: When a lease not settled by then is dropped (a lost access-log entry).
    lease_expiry_ms: int


@dataclass(slots=True)
class Refusal:
    limit: str
    #: For a rate window: ms until its oldest counted request leaves the window.
    retry_ms: int


@dataclass(slots=True)
class Counts:
    """What the shared store holds for one user of one tenant right after a request
    was counted: each limit's measure (0 for a limit not set)."""

    user_requests: int  # in the user's sliding minute
    tenant_requests: int  # in the tenant's sliding minute
    user_in_flight: int
    user_tokens: int  # used today + reserved by requests in flight
    tenant_tokens: int


@dataclass(slots=True)
class Settlement:
    client_id: str
    user: str
    #: Empty: admitted without limits, nothing to release.
    lease: str
    reserved: int
    input_tokens: int
    output_tokens: int
    day: str


@dataclass
class UserUsage:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0

    def add(self, input_tokens: int, output_tokens: int) -> None:
        self.requests += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.total_tokens += input_tokens + output_tokens

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "total_tokens": self.total_tokens}


@dataclass
class TenantUsage(UserUsage):
    users: dict[str, UserUsage] = field(default_factory=dict)

    def report(self, client_id: str, day: str, user: str | None = None) -> dict[str, object]:
        """The /admin/usage body (the contract's fields exactly)."""
        users = self.users if user is None else (
            {user: self.users[user]} if user in self.users else {})
        return {"client_id": client_id, "day": day, **self.as_dict(),
                "users": {name: u.as_dict() for name, u in sorted(users.items())}}


class CounterStore(Protocol):
    async def admit(self, request: AdmitRequest) -> Refusal | None: ...

    async def settle_many(self, settlements: Sequence[Settlement]) -> None: ...

    async def usage(self, client_id: str, day: str) -> TenantUsage: ...


def lease_member(lease: str, reserved: int, user: str) -> str:
    """How a lease is stored: enough to release it without any other record (the user
    goes last: it may hold any character)."""
    return f"{lease}|{reserved}|{user}"


@dataclass(slots=True)
class _Lease:
    client_id: str
    user: str
    reserved: int
    expiry_ms: int


class LocalStore:
    """Counters in this process. Days other than the current and the previous one are
    dropped as the day turns, so memory stays bounded by one day's tenants and users."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str | None], deque[int]] = {}
        # Live leases in admission order. Every lease gets the same TTL, so this is also
        # expiry order: the expired ones are at the front, and a settled one is simply
        # deleted (nothing of it stays behind until its expiry).
        self._leases: dict[str, _Lease] = {}
        self._next_sweep_ms = 0
        self._in_flight: dict[tuple[str, str], int] = {}
        self._reserved: dict[tuple[str, str | None], int] = {}
        self._usage: dict[tuple[str, str], TenantUsage] = {}
        self._days: list[str] = []

    # -- admit ---------------------------------------------------------------------
    async def admit(self, request: AdmitRequest) -> Refusal | None:
        return self.admit_now(request)

    def admit_now(self, request: AdmitRequest) -> Refusal | None:
        now_ms = request.now_ms
        if now_ms >= self._next_sweep_ms:
            self._expire(now_ms)
        limits, c, u = request.limits, request.client_id, request.user
        user_key = (c, u)
        # Written out rather than looped over: this runs on every governed check.
        user_window = tenant_window = None
        if (limit := limits.user_requests_per_minute) is not None:
            user_window = self._window(user_key, now_ms)
            if len(user_window) >= limit:
                return Refusal("user_requests_per_minute", self._retry_ms(user_window, now_ms))
        if (limit := limits.tenant_requests_per_minute) is not None:
            tenant_window = self._window((c, None), now_ms)
            if len(tenant_window) >= limit:
                return Refusal("tenant_requests_per_minute",
                               self._retry_ms(tenant_window, now_ms))
        if ((limit := limits.user_concurrent_requests) is not None
                and self._in_flight.get(user_key, 0) >= limit):
            return Refusal("user_concurrent_requests", 0)
        if limits.has_budget:
            refusal = self._over_budget(request)
            if refusal is not None:
                return refusal
        # Every limit passed: only now is anything counted.
        if user_window is not None:
            user_window.append(now_ms)
        if tenant_window is not None:
            tenant_window.append(now_ms)
        self._hold(request)
        return None

    def record_now(self, request: AdmitRequest) -> None:
        """Count a request admitted elsewhere (a Redis admission that could not be
        written), without checking any limit."""
        limits, c, u = request.limits, request.client_id, request.user
        if limits.user_requests_per_minute is not None:
            self._window((c, u), request.now_ms).append(request.now_ms)
        if limits.tenant_requests_per_minute is not None:
            self._window((c, None), request.now_ms).append(request.now_ms)
        self._hold(request)

    def _hold(self, request: AdmitRequest) -> None:
        """The lease, its concurrency slot and its reservation."""
        c, u = request.client_id, request.user
        user_key = (c, u)
        self._leases[request.lease] = _Lease(c, u, request.reserve, request.lease_expiry_ms)
        self._in_flight[user_key] = self._in_flight.get(user_key, 0) + 1
        if request.reserve:
            self._reserve(user_key, request.reserve)
            self._reserve((c, None), request.reserve)

    @staticmethod
    def _retry_ms(window: deque[int], now_ms: int) -> int:
        return window[0] + WINDOW_MS - now_ms if window else WINDOW_MS

    def _over_budget(self, request: AdmitRequest) -> Refusal | None:
        limits, c, u = request.limits, request.client_id, request.user
        usage = self._usage.get((request.day, c))
        if limits.user_tokens_per_day is not None:
            used = usage.users[u].total_tokens if usage and u in usage.users else 0
            if used + self._reserved.get((c, u), 0) >= limits.user_tokens_per_day:
                return Refusal("user_tokens_per_day", 0)
        if limits.tenant_tokens_per_day is not None:
            used = usage.total_tokens if usage else 0
            if used + self._reserved.get((c, None), 0) >= limits.tenant_tokens_per_day:
                return Refusal("tenant_tokens_per_day", 0)
        return None

    def _window(self, key: tuple[str, str | None], now_ms: int) -> deque[int]:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = deque()
        while window and window[0] <= now_ms - WINDOW_MS:
            window.popleft()
        return window

    def _reserve(self, key: tuple[str, str | None], tokens: int) -> None:
        held = self._reserved.get(key, 0) + tokens
        if held:
            self._reserved[key] = held
        else:
            self._reserved.pop(key, None)

    def _release(self, lease: str) -> None:
        held = self._leases.pop(lease, None)
        if held is None:
            return  # settled already, or expired
        key = (held.client_id, held.user)
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)
        if held.reserved:
            self._reserve(key, -held.reserved)
            self._reserve((held.client_id, None), -held.reserved)

    def _expire(self, now_ms: int) -> None:
        """Release leases past their expiry and forget emptied windows, at most once a
        second (a lease's TTL is an hour: a second late is nothing)."""
        self._next_sweep_ms = now_ms + 1000
        # A clock stepped back may leave a younger lease with an earlier expiry behind an
        # older one: it is released when the older one is, late by the step at most.
        expired = []
        for lease, held in self._leases.items():
            if held.expiry_ms > now_ms:
                break
            expired.append(lease)
        for lease in expired:
            self._release(lease)
        if len(self._windows) > 10_000:  # forget users whose windows emptied
            for key in [k for k, w in self._windows.items()
                        if not w or w[-1] <= now_ms - WINDOW_MS]:
                del self._windows[key]

    # -- settle and usage ------------------------------------------------------------
    async def settle_many(self, settlements: Sequence[Settlement]) -> None:
        for settlement in settlements:
            self.settle_now(settlement)

    def settle_now(self, s: Settlement) -> None:
        if s.lease:
            self._release(s.lease)
        if s.day not in self._days:
            self._days.append(s.day)
            self._days.sort()
            for old in self._days[:-2]:
                for key in [k for k in self._usage if k[0] == old]:
                    del self._usage[key]
            del self._days[:-2]
        usage = self._usage.get((s.day, s.client_id))
        if usage is None:
            usage = self._usage[(s.day, s.client_id)] = TenantUsage()
        usage.add(s.input_tokens, s.output_tokens)
        user = usage.users.get(s.user)
        if user is None:
            user = usage.users[s.user] = UserUsage()
        user.add(s.input_tokens, s.output_tokens)

    async def usage(self, client_id: str, day: str) -> TenantUsage:
        return self.usage_now(client_id, day)

    def usage_now(self, client_id: str, day: str) -> TenantUsage:
        return self._usage.get((day, client_id)) or TenantUsage()

    def used_up(self, day: str, budgets: Mapping[str, Limits]
                ) -> dict[str, tuple[int, frozenset[str]]]:
        """Per tenant: its total tokens on `day`, and the users whose own total has
        reached their budget (as RedisStore.used_up)."""
        found = {}
        for client_id, limits in budgets.items():
            usage = self._usage.get((day, client_id)) or TenantUsage()
            budget = limits.user_tokens_per_day
            users = frozenset() if budget is None else frozenset(
                user for user, used in usage.users.items() if used.total_tokens >= budget)
            found[client_id] = (usage.total_tokens, users)
        return found

    def in_flight(self, client_id: str, user: str) -> int:
        return self._in_flight.get((client_id, user), 0)

    def leases_held(self) -> int:
        """Leases admitted and neither settled nor expired."""
        return len(self._leases)
