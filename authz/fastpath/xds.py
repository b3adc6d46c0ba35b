"""The fast path's control plane: an ADS server (grpc.aio, on the authz service's own
port) that serves Envoy the Lua filter's config, and the loop that keeps it current.

State of the world, one version for all resources. Envoy subscribes to each filter's
config by name (ECDS); every change (new Firebase keys, a tenant put, rotated or removed
in Vault, `authz cache invalidate`, which also empties Envoy's token cache) bumps the
version and is pushed to every stream.
Vault is polled every `poll_s` (1 s): the tenants' change log, and the tenants written
since (tenants.py), so a rotation reaches Envoy within about 1 s plus a Vault read
whatever the number of tenants; an invalidation triggers a poll at once, for the tenant
it names. The budget state (which tenants and users with a token budget have used it up
today, from the limiter) is read at each poll and shortly after each metered request of
a budgeted tenant, so Envoy stops serving them alone within a fraction of a second of
the usage that used the budget up.

A lease: the config is sent with an xDS TTL (`lease_s`) and sent again, unchanged, every
`renew_s`. Envoy refreshes the TTL and, the config being the same, keeps its Lua filter
as it is (its token cache included). If this service dies or is cut off, the TTL runs
out, Envoy removes the config and falls back to the filter's default, which decides
nothing: every request goes to ext_authz, which fails closed as with the fast path off.
A tenant removed meanwhile is not served for longer than `lease_s`.

Nothing secret is logged: the Lua config holds tenant keys, so neither it nor Envoy's
rejection message (which can quote it) is ever written out.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import extension_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, duration_pb2

from authz.errors import VaultUnavailable
from authz.fastpath.governance_lua import Exhausted
from authz.fastpath.resources import FastIssuer, FastTenant, build_resources
from authz.fastpath.tenants import TenantSource
from authz.governance.cancelling import cancel_and_wait
from authz.governance.model import Limits

log = logging.getLogger(__name__)

EXTENSION_CONFIG_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
RESOURCE_TYPE = "type.googleapis.com/envoy.service.discovery.v3.Resource"
#: Envoy decides alone for at most this long after the last renewal it received.
LEASE_S = 15.0
#: Renewals within one lease: a lost or late one does not end it.
RENEW_S = 5.0


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves the current extension configs to every connected Envoy."""

    def __init__(self, ttl_s: float = LEASE_S) -> None:
        #: Each resource's xDS TTL: Envoy drops a config not sent again within it.
        self._ttl = duration_pb2.Duration(seconds=int(ttl_s), nanos=round(ttl_s % 1 * 1e9))
        self._resources: dict[str, bytes] = {}
        self._version = 0
        self._streams: set[asyncio.Event] = set()
        self._nonces = itertools.count(1)
        self._closed = False
        self.pushes = 0

    @property
    def version(self) -> int:
        return self._version

    @property
    def streams(self) -> int:
        """Envoy streams open now."""
        return len(self._streams)

    @property
    def config_bytes(self) -> int:
        """Bytes of the serialized resources served now."""
        return sum(len(raw) for raw in self._resources.values())

    def update(self, resources: Mapping[str, extension_pb2.TypedExtensionConfig]) -> bool:
        """Set the resources; True (and a push to every stream) when anything changed."""
        serialized = {name: config.SerializeToString(deterministic=True)
                      for name, config in resources.items()}
        if serialized == self._resources:
            return False
        self._resources = serialized
        self._push()
        return True

    def renew(self) -> None:
        """Send the same resources again under a new version: Envoy refreshes their TTL
        and, their content unchanged, rebuilds nothing."""
        if self._resources:
            self._push()

    def _push(self) -> None:
        """A new version, sent to every stream."""
        self._version += 1
        for wake in self._streams:
            wake.set()

    def close(self) -> None:
        """End every stream (at shutdown: a server drain waits for open streams, and
        these never end on their own). Envoy keeps the configs it has."""
        self._closed = True
        for wake in self._streams:
            wake.set()

    def _response(self, type_url: str, names: Sequence[str]) -> discovery_pb2.DiscoveryResponse:
        response = discovery_pb2.DiscoveryResponse(
            version_info=str(self._version), type_url=type_url, nonce=str(next(self._nonces)))
        if type_url == EXTENSION_CONFIG_TYPE:
            for name in names or sorted(self._resources):
                raw = self._resources.get(name)
                if raw is None:
                    continue
                wrapped = discovery_pb2.Resource(
                    name=name, version=response.version_info, ttl=self._ttl,
                    resource=any_pb2.Any(type_url=EXTENSION_CONFIG_TYPE, value=raw))
                response.resources.add(type_url=RESOURCE_TYPE,
                                       value=wrapped.SerializeToString(deterministic=True))
        return response

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        if self._closed:
            return
        wake = asyncio.Event()
        subscriptions: dict[str, list[str]] = {}
        sent: dict[str, int] = {}

        async def read() -> None:
            async for request in request_iterator:
                if request.HasField("error_detail"):
                    # The detail can quote the Lua source (tenant keys): never logged.
                    log.error("envoy rejected the fast path config; it keeps the last "
                              "one it accepted", extra={"version": self._version,
                                                         "type_url": request.type_url})
                    continue
                subscriptions[request.type_url] = list(request.resource_names)
                if not request.response_nonce:
                    sent.pop(request.type_url, None)  # a new subscription: answer it
                wake.set()

        reader = asyncio.ensure_future(read())
        reader.add_done_callback(lambda _: wake.set())
        self._streams.add(wake)
        try:
            while True:
                await wake.wait()
                wake.clear()
                if reader.done() or self._closed:
                    break
                for type_url, names in list(subscriptions.items()):
                    if sent.get(type_url) == self._version or not self._resources:
                        continue
                    sent[type_url] = self._version
                    self.pushes += 1
                    yield self._response(type_url, names)
        finally:
            self._streams.discard(wake)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


@dataclass(frozen=True, slots=True)
class FastPathState:
    """What the control plane last pushed (the Admin API's GetFastPathStatus)."""

    version: int
    pushes: int
    envoy_streams: int
    tenants: int
    budgets_used_up: int
    issuer_keys: Mapping[str, int]
    config_bytes: int
    #: When the content last changed, Unix milliseconds (0: not yet).
    updated_at_ms: int
    vault_failing: bool


class FastPathControl:
    """Builds the resources from Firebase's keys and Vault's tenants, and pushes them."""

    def __init__(
        self,
        ads: AdsServer,
        tenants: TenantSource,
        issuers: Callable[[], Sequence[FastIssuer]],
        *,
        clock_skew_s: float,
        exhausted: Callable[[Mapping[str, Limits]], Awaitable[Exhausted]] | None = None,
        poll_s: float = 1.0,
        renew_s: float = RENEW_S,
        budget_delay_s: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ads = ads
        self._tenants = tenants
        self._issuers = issuers
        self._skew = clock_skew_s
        self._poll_s = poll_s
        self._renew_s = renew_s
        self._exhausted_of = exhausted
        self._last_tenants: list[FastTenant] = []
        self._last_exhausted: Exhausted = {}
        self._last_content: tuple[object, ...] = ()
        self._vault_failing = False
        self._poke = asyncio.Event()
        self._named: set[str] = set()
        self._everything = False
        self._invalidations = 0  # `authz cache invalidate`s so far (resources.py)
        self._budgets: dict[str, Limits] = {}  # the served tenants with a token budget
        self._settled: set[str] = set()  # those metered since the last budget read
        self._budget_poke = asyncio.Event()
        self._budget_delay_s = budget_delay_s
        self._tasks: list[asyncio.Task[None]] = []
        self._clock = clock
        self._issuer_keys: dict[str, int] = {}
        self._updated_at_ms = 0

    def status(self) -> FastPathState:
        return FastPathState(
            version=self.ads.version, pushes=self.ads.pushes,
            envoy_streams=self.ads.streams, tenants=len(self._last_tenants),
            budgets_used_up=len(self._last_exhausted),
            issuer_keys=dict(self._issuer_keys), config_bytes=self.ads.config_bytes,
            updated_at_ms=self._updated_at_ms, vault_failing=self._vault_failing)

    def poke(self, client_id: str | None = None) -> None:
        """`authz cache invalidate`: re-read now that tenant, or all of them, and push a
        config Envoy must build anew, so that its token cache starts empty (the service
        drops its verified identities). One count for a tenant or all: any new config
        empties the whole cache."""
        self._invalidations += 1
        if client_id is None:
            self._everything = True
        else:
            self._named.add(client_id)
        self._poke.set()

    def settled(self, client_id: str) -> None:
        """A request of `client_id` was metered (the limiter calls this for every one):
        for a tenant with a token budget, the budget state is read again shortly, so a
        budget used up reaches Envoy in well under the poll period."""
        if client_id in self._budgets:
            self._settled.add(client_id)
            self._budget_poke.set()

    async def refresh(self) -> None:
        named, everything = frozenset(self._named), self._everything
        self._named.clear()
        self._everything = False
        try:
            self._last_tenants = await asyncio.to_thread(self._tenants.refresh, named,
                                                         everything)
            if self._vault_failing:
                log.info("fast path: vault readable again")
            self._vault_failing = False
        except VaultUnavailable as exc:
            self._named |= named  # asked again at the next poll
            self._everything |= everything
            # Keep serving the last tenants read (as the key cache serves stale keys).
            if not self._vault_failing:
                log.warning("fast path: vault unreadable, keeping the last tenant set",
                            extra={"cause": exc.log_detail})
            self._vault_failing = True
        await self._refresh_exhausted()
        self._publish()

    async def refresh_budgets(self) -> None:
        """Read the budget state of the tenants metered since the last read alone, and
        push only if it changed."""
        budgets = {c: self._budgets[c] for c in self._settled if c in self._budgets}
        self._settled.clear()
        if not budgets or self._exhausted_of is None:
            return
        fresh = await self._read_exhausted(budgets)
        merged = {c: v for c, v in self._last_exhausted.items() if c not in budgets}
        merged.update(fresh)
        if merged != self._last_exhausted:
            self._last_exhausted = merged
            self._publish()

    def _publish(self) -> None:
        issuers = self._issuers()
        changed = self.ads.update(build_resources(
            issuers, self._last_tenants, self._skew, self._last_exhausted,
            self._invalidations))
        content = (tuple(self._last_tenants), tuple(sorted(self._last_exhausted.items())),
                   tuple((i.name, tuple(sorted(i.keys))) for i in issuers),
                   self._invalidations)
        if changed:
            self._updated_at_ms = int(self._clock() * 1000)
            self._issuer_keys = {i.name: len(i.keys) for i in issuers}
        if changed and content != self._last_content:
            log.info("fast path config updated", extra={
                "version": self.ads.version, "tenants": len(self._last_tenants),
                "issuers": self._issuer_keys,
                "budgets_used_up": len(self._last_exhausted)})
        self._last_content = content

    async def _refresh_exhausted(self) -> None:
        """The tenants and users of served tenants whose token budget is used up."""
        if self._exhausted_of is None:
            return
        self._budgets = {t.client_id: t.policy.limits for t in self._last_tenants
                         if t.policy is not None and t.policy.limits.has_budget}
        self._last_exhausted = await self._read_exhausted(self._budgets)

    async def _read_exhausted(self, budgets: Mapping[str, Limits]) -> Exhausted:
        if not budgets or self._exhausted_of is None:
            return {}
        try:
            return await self._exhausted_of(budgets)
        except Exception:
            # Never serve past a budget on stale counts: budgeted tenants go to ext_authz.
            log.exception("fast path: budget state unreadable; budgeted tenants go to "
                          "ext_authz")
            return dict.fromkeys(budgets, True)

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("fast path refresh failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._poll_s)
            self._poke.clear()

    async def run_budgets(self) -> None:
        while True:
            await self._budget_poke.wait()
            # Gathers the settlements of a burst into one read, and lets the limiter
            # write them to Redis first (it flushes every 50 ms).
            await asyncio.sleep(self._budget_delay_s)
            self._budget_poke.clear()
            try:
                await self.refresh_budgets()
            except Exception:
                log.exception("fast path budget refresh failed")

    async def run_renewals(self) -> None:
        """The lease: the config sent again every renew_s, within its TTL."""
        while True:
            await asyncio.sleep(self._renew_s)
            self.ads.renew()

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self.run()),
                           asyncio.ensure_future(self.run_budgets()),
                           asyncio.ensure_future(self.run_renewals())]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []


def add_to_server(ads: AdsServer, server: grpc.aio.Server) -> None:
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)


__all__ = ["AdsServer", "FastPathControl", "FastPathState", "add_to_server"]
