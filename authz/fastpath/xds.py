"""The fast path's control plane: an ADS server (grpc.aio, on the authz service's own
port) that serves Envoy the two extension configs, and the loop that keeps them current.

State of the world, one version for all resources. Envoy subscribes to each filter's
config by name (ECDS); every change (new Firebase keys, a tenant put, rotated or removed
in Vault, `authz cache invalidate`) bumps the version and is pushed to every stream.
Vault is polled every `poll_s` (1 s), so a rotation reaches Envoy within about 1 s plus
a Vault read; an invalidation triggers a poll at once.

The Lua config carries a lease (a wall-clock deadline): renewed with a push every
`renew_s`, it runs `lease_s` to `lease_s + renew_s` ahead. If this service dies or is
cut off, Envoy stops deciding alone when the lease runs out, and ext_authz fails closed
as with the fast path off: a tenant removed meanwhile is not served for longer.

Nothing secret is logged: the Lua config holds tenant keys, so neither it nor Envoy's
rejection message (which can quote it) is ever written out.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import grpc
from envoy.config.core.v3 import extension_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from authz.errors import VaultUnavailable
from authz.fastpath.resources import FastIssuer, FastTenant, build_resources
from authz.fastpath.tenants import TenantSource

log = logging.getLogger(__name__)

EXTENSION_CONFIG_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves the current extension configs to every connected Envoy."""

    def __init__(self) -> None:
        self._resources: dict[str, bytes] = {}
        self._version = 0
        self._streams: set[asyncio.Event] = set()
        self._nonces = itertools.count(1)
        self._closed = False
        self.pushes = 0

    @property
    def version(self) -> int:
        return self._version

    def update(self, resources: Mapping[str, extension_pb2.TypedExtensionConfig]) -> bool:
        """Set the resources; True (and a push to every stream) when anything changed."""
        serialized = {name: config.SerializeToString(deterministic=True)
                      for name, config in resources.items()}
        if serialized == self._resources:
            return False
        self._resources = serialized
        self._version += 1
        for wake in self._streams:
            wake.set()
        return True

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
                if raw is not None:
                    response.resources.add(type_url=EXTENSION_CONFIG_TYPE, value=raw)
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


class FastPathControl:
    """Builds the resources from Firebase's keys and Vault's tenants, and pushes them."""

    def __init__(
        self,
        ads: AdsServer,
        tenants: TenantSource,
        issuers: Callable[[], Sequence[FastIssuer]],
        *,
        clock_skew_s: float,
        poll_s: float = 1.0,
        lease_s: float = 10.0,
        renew_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ads = ads
        self._tenants = tenants
        self._issuers = issuers
        self._skew = clock_skew_s
        self._poll_s = poll_s
        self._lease_s = lease_s
        self._renew_s = renew_s
        self._clock = clock
        self._last_tenants: list[FastTenant] = []
        self._last_content: tuple[object, ...] = ()
        self._vault_failing = False
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        """Re-read now (after `authz cache invalidate`)."""
        self._poke.set()

    async def refresh(self) -> None:
        try:
            self._last_tenants = await asyncio.to_thread(self._tenants.read_all)
            if self._vault_failing:
                log.info("fast path: vault readable again")
            self._vault_failing = False
        except VaultUnavailable as exc:
            # Keep serving the last tenants read (as the key cache serves stale keys).
            if not self._vault_failing:
                log.warning("fast path: vault unreadable, keeping the last tenant set",
                            extra={"cause": exc.log_detail})
            self._vault_failing = True
        issuers = self._issuers()
        # Rounded up to whole renew periods: one push per period, not one per poll.
        lease_until = int(math.ceil((self._clock() + self._lease_s) / self._renew_s)
                          * self._renew_s)
        changed = self.ads.update(build_resources(
            issuers, self._last_tenants, self._skew, lease_until))
        content = (tuple(self._last_tenants),
                   tuple((i.name, tuple(sorted(i.keys))) for i in issuers))
        if changed and content != self._last_content:
            log.info("fast path config updated", extra={
                "version": self.ads.version, "tenants": len(self._last_tenants),
                "issuers": {i.name: len(i.keys) for i in issuers},
                "lease_until": lease_until})
        self._last_content = content

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("fast path refresh failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._poll_s)
            self._poke.clear()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def add_to_server(ads: AdsServer, server: grpc.aio.Server) -> None:
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)


__all__ = ["AdsServer", "FastPathControl", "add_to_server"]
