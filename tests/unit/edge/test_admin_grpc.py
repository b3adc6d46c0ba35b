"""The Admin gRPC servicer and the usage feed, called directly (no sockets): the
integration side is tests/integration/test_admin_api.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc
import pytest

from authz.api.openai_relay.admin.v1 import admin_pb2
from authz.edge.admin_grpc import AdminServicer, is_local_peer
from authz.fastpath.xds import FastPathState
from authz.governance.model import Metered
from authz.governance.usage_feed import (
    MAX_PENDING,
    MAX_WATCHERS,
    UsageFeed,
    WatchOverflow,
)

T = TypeVar("T")
LOCAL = "ipv4:127.0.0.1:40000"


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class Context:
    """What the servicer uses of grpc.aio.ServicerContext."""

    def __init__(self, peer: str = LOCAL) -> None:
        self._peer = peer
        self.headers_sent = asyncio.Event()

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    async def send_initial_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.headers_sent.set()


REPORT: dict[str, Any] = {
    "client_id": "acme", "day": "2026-12-05", "requests": 3, "input_tokens": 30,
    "output_tokens": 12, "total_tokens": 42,
    "users": {"u1": {"requests": 2, "input_tokens": 20, "output_tokens": 8,
                     "total_tokens": 28},
              "u2": {"requests": 1, "input_tokens": 10, "output_tokens": 4,
                     "total_tokens": 14}},
}


def event(client_id: str = "acme", user: str = "u1", tokens: int = 1) -> Metered:
    return Metered(client_id, user, "2026-12-05", tokens, tokens, 200, 1_770_000_000_000)


class Fixture:
    def __init__(self, fast_path: FastPathState | None = None) -> None:
        self.asked: list[tuple[str, str | None]] = []
        self.invalidated: list[str | None] = []
        self.feed = UsageFeed()

        async def usage(client_id: str, user: str | None) -> dict[str, Any]:
            self.asked.append((client_id, user))
            return REPORT

        self.servicer = AdminServicer(
            usage=usage, invalidate=self.invalidated.append, feed=self.feed,
            fast_path=(lambda: fast_path) if fast_path is not None else None)


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable
    return asyncio.run(main())


def aborted(awaitable: Awaitable[Any]) -> Aborted:
    with pytest.raises(Aborted) as caught:
        run(awaitable)
    return caught.value


@pytest.mark.parametrize(("peer", "local"), [
    ("ipv4:127.0.0.1:5000", True),
    ("ipv4:127.8.9.1:5000", True),
    ("ipv6:[::1]:5000", True),
    ("ipv6:%5B::1%5D:5000", True),  # how gRPC writes it
    ("ipv6:%5B2001:db8::1%5D:5000", False),
    ("unix:/run/relay/authz.sock", True),
    ("unix-abstract:authz", True),
    ("ipv4:10.0.0.7:5000", False),
    ("ipv4:0.0.0.0:5000", False),
    ("ipv6:[2001:db8::1]:5000", False),
    ("ipv6:[::ffff:10.0.0.1]:5000", False),
    ("ipv4:localhost:5000", False),
    ("", False),
    ("tcp:127.0.0.1:5000", False),
])
def test_local_peers(peer: str, local: bool) -> None:
    assert is_local_peer(peer) is local


def test_get_usage_is_the_admin_usage_report() -> None:
    fixture = Fixture()
    usage = run(fixture.servicer.GetUsage(
        admin_pb2.GetUsageRequest(client_id="acme", user="u1"), Context()))
    assert fixture.asked == [("acme", "u1")]
    assert usage == admin_pb2.Usage(
        client_id="acme", day="2026-12-05",
        tenant=admin_pb2.Tokens(requests=3, input_tokens=30, output_tokens=12,
                                total_tokens=42),
        users={"u1": admin_pb2.Tokens(requests=2, input_tokens=20, output_tokens=8,
                                      total_tokens=28),
               "u2": admin_pb2.Tokens(requests=1, input_tokens=10, output_tokens=4,
                                      total_tokens=14)})
    run(fixture.servicer.GetUsage(admin_pb2.GetUsageRequest(client_id="acme"), Context()))
    assert fixture.asked[-1] == ("acme", None)


@pytest.mark.parametrize("request_", [
    admin_pb2.GetUsageRequest(),
    admin_pb2.GetUsageRequest(client_id="../acme"),
    admin_pb2.GetUsageRequest(client_id="acme", user="u" * 513),
])
def test_get_usage_refuses_bad_arguments(request_: admin_pb2.GetUsageRequest) -> None:
    fixture = Fixture()
    assert aborted(fixture.servicer.GetUsage(request_, Context())).code == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert fixture.asked == []


def test_a_usage_store_failure_is_unavailable() -> None:
    async def broken(client_id: str, user: str | None) -> dict[str, Any]:
        raise ConnectionError("redis went away")

    servicer = AdminServicer(usage=broken, invalidate=lambda _: None, feed=UsageFeed())
    failure = aborted(servicer.GetUsage(admin_pb2.GetUsageRequest(client_id="acme"),
                                        Context()))
    assert (failure.code, str(failure)) == (grpc.StatusCode.UNAVAILABLE, "usage unavailable")


def test_every_method_answers_local_peers_only() -> None:
    fixture = Fixture()
    servicer, remote = fixture.servicer, Context("ipv4:10.1.2.3:5000")

    async def first(stream: AsyncIterator[Any]) -> Any:
        return await stream.__anext__()

    calls: list[Awaitable[Any]] = [
        servicer.GetUsage(admin_pb2.GetUsageRequest(client_id="acme"), remote),
        first(servicer.WatchUsage(admin_pb2.WatchUsageRequest(), remote)),
        servicer.InvalidateCache(admin_pb2.InvalidateCacheRequest(client_id="acme"), remote),
        servicer.GetFastPathStatus(admin_pb2.GetFastPathStatusRequest(), remote),
    ]
    for call in calls:
        assert aborted(call).code == grpc.StatusCode.PERMISSION_DENIED
    assert (fixture.asked, fixture.invalidated, fixture.feed.watchers) == ([], [], 0)


def test_invalidate_one_tenant_or_all() -> None:
    fixture = Fixture()
    servicer = fixture.servicer
    run(servicer.InvalidateCache(admin_pb2.InvalidateCacheRequest(client_id="acme"),
                                 Context()))
    run(servicer.InvalidateCache(admin_pb2.InvalidateCacheRequest(), Context()))
    assert fixture.invalidated == ["acme", None]
    bad = aborted(servicer.InvalidateCache(
        admin_pb2.InvalidateCacheRequest(client_id="a b"), Context()))
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fixture.invalidated == ["acme", None]


def test_watch_streams_the_tenants_events_in_order() -> None:
    fixture = Fixture()

    async def scenario() -> list[admin_pb2.UsageEvent]:
        context = Context()
        stream = fixture.servicer.WatchUsage(
            admin_pb2.WatchUsageRequest(client_id="acme"), context)
        first = asyncio.ensure_future(stream.__anext__())
        # What tells the client its watch is in place: headers, once the watcher is.
        await context.headers_sent.wait()
        assert fixture.feed.watchers == 1
        fixture.feed.publish(event(user="u1", tokens=5))
        fixture.feed.publish(event(client_id="globex", user="g1"))
        fixture.feed.publish(event(user="u2", tokens=7))
        got = [await first, await stream.__anext__()]
        await stream.aclose()
        return got

    got = run(scenario())
    assert [(e.client_id, e.user, e.input_tokens, e.output_tokens, e.status, e.day,
             e.metered_at_ms) for e in got] == [
        ("acme", "u1", 5, 5, 200, "2026-12-05", 1_770_000_000_000),
        ("acme", "u2", 7, 7, 200, "2026-12-05", 1_770_000_000_000)]
    assert fixture.feed.watchers == 0  # closing the stream removes the watcher


def test_a_watcher_that_falls_behind_gets_what_it_held_then_resource_exhausted() -> None:
    fixture = Fixture()

    async def scenario() -> tuple[list[int], Aborted]:
        context = Context()
        stream = fixture.servicer.WatchUsage(
            admin_pb2.WatchUsageRequest(max_pending=2), context)
        first = asyncio.ensure_future(stream.__anext__())
        await context.headers_sent.wait()
        for tokens in (1, 2, 3, 4):
            fixture.feed.publish(event(tokens=tokens))
        got = [(await first).input_tokens, (await stream.__anext__()).input_tokens]
        with pytest.raises(Aborted) as caught:
            await stream.__anext__()
        return got, caught.value

    got, ended = run(scenario())
    # Event 1 was handed over at once; 2 and 3 were held; 4 overflowed.
    assert got == [1, 2]
    assert ended.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert fixture.feed.watchers == 0


def test_feed_bounds_and_filters() -> None:
    feed = UsageFeed()
    for bad in (0, MAX_PENDING + 1):
        with pytest.raises(ValueError, match="max_pending"), feed.watch(max_pending=bad):
            pass

    async def scenario() -> list[str]:
        with feed.watch("globex", max_pending=1) as watcher:
            feed.publish(event(client_id="acme"))
            feed.publish(event(client_id="globex", user="g1"))
            feed.publish(event(client_id="acme"))  # not its tenant: not an overflow
            first = await watcher.next()
            feed.publish(event(client_id="globex", user="g2"))
            feed.publish(event(client_id="globex", user="g3"))  # overflow
            second = await watcher.next()
            with pytest.raises(WatchOverflow):
                await watcher.next()
            feed.publish(event(client_id="globex", user="g4"))  # ignored once overflowed
            return [first.user, second.user]

    assert run(scenario()) == ["g1", "g2"]
    assert feed.watchers == 0


def test_watch_refuses_more_than_the_most_pending() -> None:
    fixture = Fixture()

    async def first() -> Any:
        return await fixture.servicer.WatchUsage(
            admin_pb2.WatchUsageRequest(max_pending=MAX_PENDING + 1), Context()).__anext__()

    assert aborted(first()).code == grpc.StatusCode.INVALID_ARGUMENT


def test_fast_path_status_off_and_on() -> None:
    off = run(Fixture().servicer.GetFastPathStatus(admin_pb2.GetFastPathStatusRequest(),
                                                   Context()))
    assert off == admin_pb2.FastPathStatus(enabled=False)
    state = FastPathState(version=7, pushes=9, envoy_streams=1, tenants=120,
                          budgets_used_up=2, issuer_keys={"firebase": 2, "oidc0": 1},
                          config_bytes=81_234, updated_at_ms=1_770_000_000_000,
                          vault_failing=True)
    on = run(Fixture(state).servicer.GetFastPathStatus(admin_pb2.GetFastPathStatusRequest(),
                                                       Context()))
    assert on == admin_pb2.FastPathStatus(
        enabled=True, version=7, pushes=9, envoy_streams=1, tenants=120, budgets_used_up=2,
        issuer_keys={"firebase": 2, "oidc0": 1}, config_bytes=81_234,
        updated_at_ms=1_770_000_000_000, vault_failing=True)


def test_watchers_are_bounded() -> None:
    fixture = Fixture()

    async def scenario() -> Aborted:
        streams = []
        for _ in range(MAX_WATCHERS):
            context = Context()
            stream = fixture.servicer.WatchUsage(admin_pb2.WatchUsageRequest(), context)
            streams.append((stream, asyncio.ensure_future(stream.__anext__())))
            await context.headers_sent.wait()
        assert fixture.feed.watchers == MAX_WATCHERS
        with pytest.raises(Aborted) as caught:
            await fixture.servicer.WatchUsage(admin_pb2.WatchUsageRequest(),
                                              Context()).__anext__()
        # One ends: there is room for the next.
        stream, pending = streams.pop()
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
        await stream.aclose()
        assert fixture.feed.watchers == MAX_WATCHERS - 1
        context = Context()
        extra = fixture.servicer.WatchUsage(admin_pb2.WatchUsageRequest(), context)
        streams.append((extra, asyncio.ensure_future(extra.__anext__())))
        await context.headers_sent.wait()
        for stream, pending in streams:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
            await stream.aclose()
        assert fixture.feed.watchers == 0
        return caught.value

    refused = run(scenario())
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(refused) == f"{MAX_WATCHERS} usage watchers already: try again later"
