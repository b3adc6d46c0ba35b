"""The Admin gRPC API (protos/openai_relay/admin/v1/admin.proto) on AUTHZ_GRPC_ADDR.

Protobuf stays here: each method validates its request, calls the service's own
functions (the same ones behind the HTTP admin port) and turns the answer into the
reply. Every method answers loopback peers only (and peers on a Unix socket), as the
HTTP port's state-changing endpoints do: the gRPC address is loopback in every
deployment, so a peer from elsewhere means a misconfiguration, not an operator.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from authz.api.openai_relay.admin.v1 import admin_pb2, admin_pb2_grpc
from authz.config.env import is_loopback_ip
from authz.governance.model import Metered
from authz.governance.usage_feed import (
    MAX_PENDING,
    TooManyWatchers,
    UsageFeed,
    WatchOverflow,
)
from authz.tenants.client_id import is_valid_client_id

if TYPE_CHECKING:  # the fast path's modules load only when it is on
    from authz.fastpath.xds import FastPathState

    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)

# Today's usage report of one tenant (optionally one user): the /admin/usage body.
UsageReport = Callable[[str, str | None], Awaitable[dict[str, Any]]]
# Forget what is cached about one tenant, or all when None.
Invalidate = Callable[[str | None], None]

#: The longest `user` a usage query takes (as GET /admin/usage).
MAX_USER = 512


def is_local_peer(peer: str) -> bool:
    """Whether a gRPC peer string ("ipv4:127.0.0.1:5000", "ipv6:%5B::1%5D:5000" (a URI:
    gRPC escapes the brackets), "unix:/path") is on this machine."""
    scheme, _, rest = peer.partition(":")
    rest = urllib.parse.unquote(rest)
    if scheme in ("unix", "unix-abstract"):
        return True
    if scheme == "ipv4":
        host = rest.rpartition(":")[0]
    elif scheme == "ipv6":
        host = rest.rpartition(":")[0].strip("[]").split("%")[0]
    else:
        return False
    return is_loopback_ip(host)


def _tokens(numbers: dict[str, Any]) -> admin_pb2.Tokens:
    return admin_pb2.Tokens(requests=numbers["requests"],
                            input_tokens=numbers["input_tokens"],
                            output_tokens=numbers["output_tokens"],
                            total_tokens=numbers["total_tokens"])


def usage_message(report: dict[str, Any]) -> admin_pb2.Usage:
    """The /admin/usage report as an Admin Usage message."""
    return admin_pb2.Usage(
        client_id=report["client_id"], day=report["day"], tenant=_tokens(report),
        users={user: _tokens(numbers) for user, numbers in report["users"].items()})


def usage_event(event: Metered) -> admin_pb2.UsageEvent:
    return admin_pb2.UsageEvent(
        client_id=event.client_id, user=event.user, day=event.day,
        input_tokens=event.input_tokens, output_tokens=event.output_tokens,
        status=max(0, event.status), metered_at_ms=event.at_ms)


def fast_path_message(state: FastPathState | None) -> admin_pb2.FastPathStatus:
    if state is None:
        return admin_pb2.FastPathStatus(enabled=False)
    return admin_pb2.FastPathStatus(
        enabled=True, version=state.version, pushes=state.pushes,
        envoy_streams=state.envoy_streams, tenants=state.tenants,
        budgets_used_up=state.budgets_used_up, issuer_keys=dict(state.issuer_keys),
        config_bytes=state.config_bytes, updated_at_ms=state.updated_at_ms,
        vault_failing=state.vault_failing)


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, *, usage: UsageReport, invalidate: Invalidate, feed: UsageFeed,
                 fast_path: Callable[[], FastPathState] | None = None) -> None:
        self._usage = usage
        self._invalidate = invalidate
        self._feed = feed
        self._fast_path = fast_path

    async def _local_only(self, context: Context) -> None:
        if not is_local_peer(context.peer()):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "the admin API answers loopback peers only")

    async def _client_id(self, context: Context, client_id: str, *,
                         required: bool) -> str | None:
        if not client_id and not required:
            return None
        if not is_valid_client_id(client_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "client_id is required and must be valid" if required
                                else "client_id must be valid")
        return client_id

    async def GetUsage(self, request: admin_pb2.GetUsageRequest,
                       context: Context) -> admin_pb2.Usage:
        await self._local_only(context)
        client_id = await self._client_id(context, request.client_id, required=True)
        assert client_id is not None
        if len(request.user) > MAX_USER:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid user")
        try:
            report = await self._usage(client_id, request.user or None)
        except Exception:
            log.exception("usage report failed", extra={"client_id": client_id})
            await context.abort(grpc.StatusCode.UNAVAILABLE, "usage unavailable")
        return usage_message(report)

    async def WatchUsage(self, request: admin_pb2.WatchUsageRequest,
                         context: Context) -> AsyncIterator[admin_pb2.UsageEvent]:
        await self._local_only(context)
        client_id = await self._client_id(context, request.client_id, required=False)
        if request.max_pending > MAX_PENDING:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"max_pending is at most {MAX_PENDING}")
        try:
            with self._feed.watch(client_id, request.max_pending or MAX_PENDING) as watcher:
                # The response headers tell the client the watch is in place: events from
                # here on are its.
                await context.send_initial_metadata(())
                while True:
                    try:
                        event = await watcher.next()
                    except WatchOverflow as exc:
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                    yield usage_event(event)
        except TooManyWatchers as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    async def InvalidateCache(self, request: admin_pb2.InvalidateCacheRequest,
                              context: Context) -> admin_pb2.InvalidateCacheResponse:
        await self._local_only(context)
        client_id = await self._client_id(context, request.client_id, required=False)
        self._invalidate(client_id)
        log.info("cache invalidated", extra={"client_id": client_id or "*", "via": "grpc"})
        return admin_pb2.InvalidateCacheResponse()

    async def GetFastPathStatus(self, request: admin_pb2.GetFastPathStatusRequest,
                                context: Context) -> admin_pb2.FastPathStatus:
        await self._local_only(context)
        return fast_path_message(self._fast_path() if self._fast_path else None)


def add_to_server(servicer: AdminServicer, server: grpc.aio.Server) -> None:
    admin_pb2_grpc.add_AdminServicer_to_server(servicer, server)
