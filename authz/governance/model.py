"""The governance vocabulary shared by the pipeline, the limiter and the meter.

Plain frozen dataclasses and one Protocol; no I/O. The flow of one request:

    check (ext_authz)   policy allows endpoint and model → Limiter.admit() → Admission
                        (a lease id and the tokens reserved, carried in Envoy's dynamic
                        metadata under envoy.filters.http.ext_authz)
    stream end (ALS)    Envoy's gRPC access log entry → CompletedRequest → Limiter.settle()
                        (frees the concurrency slot, swaps the reservation for the
                        upstream's reported usage, or an estimate when it reported none)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

#: Envoy dynamic-metadata keys the ext_authz Allow sets (namespace
#: envoy.filters.http.ext_authz) and the access-log entry carries back at stream end.
META_CLIENT_ID = "client_id"
META_TOKEN_TYPE = "token_type"
META_USER = "user"
META_LEASE = "lease"
META_RESERVED = "reserved_tokens"
#: "1" when the relay added `stream_options.include_usage` to a streamed chat completion
#: whose client did not ask for usage: the Lua filter then inserts it into the body and
#: strips the usage-only chunk (and the `"usage":null` fields) from what the client gets.
META_INJECT_USAGE = "inject_usage"
#: Namespace and keys the Lua metering filter sets from the upstream's response.
USAGE_NAMESPACE = "relay.usage"
USAGE_INPUT = "input_tokens"
USAGE_OUTPUT = "output_tokens"
USAGE_EVENTS = "events"
#: Set (to 1) by the Lua filter when it did insert `stream_options.include_usage` into
#: the request body (so it strips the stream, and usage is expected at its end).
USAGE_INJECTED = "injected"


@dataclass(frozen=True)
class Limits:
    """Each limit is optional; None means unlimited."""

    user_requests_per_minute: int | None = None
    tenant_requests_per_minute: int | None = None
    user_concurrent_requests: int | None = None
    user_tokens_per_day: int | None = None
    tenant_tokens_per_day: int | None = None

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    @property
    def has_budget(self) -> bool:
        """A token budget for the day is set (per user or per tenant)."""
        return self.user_tokens_per_day is not None or self.tenant_tokens_per_day is not None

    @property
    def counts_requests(self) -> bool:
        """A limit that counts each request as it is admitted is set (per-minute rates,
        concurrency): one that needs the limiter at admission."""
        return (self.user_requests_per_minute is not None
                or self.tenant_requests_per_minute is not None
                or self.user_concurrent_requests is not None)

    def tightened_by(self, other: Limits) -> Limits:
        """Both apply: the smaller of each pair (a client key's own policy narrows
        its tenant's)."""
        values: dict[str, int | None] = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            values[f.name] = theirs if mine is None else mine if theirs is None else min(
                mine, theirs)
        return Limits(**values)


# Admission and CompletedRequest are made once per request: slotted, not frozen (a
# frozen dataclass sets each field through object.__setattr__, several times slower).
@dataclass(slots=True)
class Admission:
    """A request let through by the limiter: it holds a concurrency slot and a token
    reservation until its CompletedRequest is settled (or the lease expires)."""

    lease: str
    reserved_tokens: int


@dataclass(slots=True)
class CompletedRequest:
    """One forwarded request, as Envoy's access log reports it at stream end (however
    it ended: done, client gone, upstream reset, idle timeout)."""

    client_id: str
    user: str
    #: Empty when the request was admitted without limits (nothing to release).
    lease: str
    reserved_tokens: int
    status: int
    #: Envoy's response flags, e.g. "DC" (client went away), "UR", "SI"; "" when none.
    response_flags: str
    request_body_bytes: int
    response_body_bytes: int
    #: The upstream's own usage, when the response carried one.
    input_tokens: int | None
    output_tokens: int | None
    #: SSE data events seen, for the estimate when no usage arrived.
    events: int


@dataclass(frozen=True, slots=True)
class Metered:
    """One request as the limiter charged it: what usage watchers are told."""

    client_id: str
    user: str
    #: The UTC day the tokens count on, YYYY-MM-DD.
    day: str
    input_tokens: int
    output_tokens: int
    status: int
    at_ms: int


class Limiter(Protocol):
    async def admit(self, client_id: str, user: str, limits: Limits,
                    estimate_tokens: int) -> Admission:
        """Admit one request or raise RateLimitExceeded / TokenBudgetExhausted
        (authz.errors), in the contract's order. Never raises for a store outage."""
        ...

    async def settle(self, completed: CompletedRequest) -> None:
        """Release the request's slot and reservation; record its tokens."""
        ...
