"""The Admin gRPC API (protos/openai_relay/admin/v1/admin.proto) of a real `authz serve`
behind a real Envoy, through the generated client stubs: usage as /admin/usage reports
it, every metered request streamed as it is metered, cache invalidation, the fast
path's state, and `authz usage watch`. Runs in both modes (RELAY_TEST_FAST_PATH)."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import httpx2 as httpx
import openai
import pytest

from authz.api.openai_relay.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.integration.conftest import FAST_PATH
from tests.integration.test_governance_limits import CHAT, sdk
from tests.integration.test_usage import usage, wait_for_requests
from tests.support.authz_cli import seconds_until
from tests.support.fake_openai import FakeOpenAI
from tests.support.redis import RedisServer
from tests.support.relay import RelayStack
from tests.support.vault import BaoDevServer

pytestmark = pytest.mark.integration


@pytest.fixture
def admin(relay: RelayStack) -> Iterator[admin_pb2_grpc.AdminStub]:
    with grpc.insecure_channel(f"127.0.0.1:{relay.authz_port}") as channel:
        yield admin_pb2_grpc.AdminStub(channel)


class Watch:
    """A WatchUsage stream read by a thread into a queue."""

    def __init__(self, stub: admin_pb2_grpc.AdminStub, client_id: str = "") -> None:
        self.events: queue.Queue[admin_pb2.UsageEvent] = queue.Queue()
        self.ended: grpc.StatusCode | None = None
        self._stream = stub.WatchUsage(admin_pb2.WatchUsageRequest(client_id=client_id))
        self._stream.initial_metadata()  # the watch is in place on the service
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                self.events.put(event)
        except grpc.RpcError as exc:
            self.ended = exc.code()

    def next(self, timeout: float) -> admin_pb2.UsageEvent:
        return self.events.get(timeout=timeout)

    def close(self) -> None:
        """Cancel it; it must not have ended before (the service ends a watch only when
        the watcher falls behind)."""
        assert self.ended is None, self.ended
        self._stream.cancel()
        self._thread.join(timeout=5)
        assert self.ended == grpc.StatusCode.CANCELLED


def chat(relay: RelayStack, token: str) -> openai.types.chat.ChatCompletion:
    with httpx.Client(timeout=30) as http:
        return sdk(relay, http, token).chat.completions.create(**CHAT)


def test_watch_streams_each_metered_request_of_its_tenant_within_1s(
        relay: RelayStack, admin: admin_pb2_grpc.AdminStub,
        token_for: Callable[..., str]) -> None:
    everything, acme = Watch(admin), Watch(admin, "acme")
    try:
        completion = chat(relay, token_for("acme", "watch-1"))
        ended = time.time()
        event = acme.next(timeout=1.0)
        assert time.time() - ended < 1.0
        assert completion.usage is not None
        assert (event.client_id, event.user, event.input_tokens, event.output_tokens,
                event.status) == ("acme", "watch-1", completion.usage.prompt_tokens,
                                  completion.usage.completion_tokens, 200)
        assert event.day == usage(relay, "acme")["day"]
        assert abs(event.metered_at_ms / 1000 - ended) < 1.0
        globex = chat(relay, token_for("globex", "watch-2"))
        assert globex.usage is not None
        seen = [everything.next(timeout=1.0), everything.next(timeout=1.0)]
        assert [(e.client_id, e.user) for e in seen] == [("acme", "watch-1"),
                                                         ("globex", "watch-2")]
        # The tenant's watch saw nothing of the other tenant.
        with pytest.raises(queue.Empty):
            acme.next(timeout=0.3)
        # A refused request is not forwarded, not metered, not streamed.
        with pytest.raises(openai.AuthenticationError):
            chat(relay, "not-a-token")
        with pytest.raises(queue.Empty):
            everything.next(timeout=0.5)
    finally:
        everything.close()
        acme.close()


def test_get_usage_is_the_admin_usage_report(
        relay: RelayStack, admin: admin_pb2_grpc.AdminStub,
        token_for: Callable[..., str]) -> None:
    before = usage(relay, "acme")["requests"]
    chat(relay, token_for("acme", "usage-grpc"))
    report = wait_for_requests(relay, "acme", before + 1, within_s=1.0)
    got = admin.GetUsage(admin_pb2.GetUsageRequest(client_id="acme"), timeout=5)
    assert got.client_id == "acme"
    assert got.day == report["day"]
    numbers = ("requests", "input_tokens", "output_tokens", "total_tokens")
    assert {k: getattr(got.tenant, k) for k in numbers} == {k: report[k] for k in numbers}
    assert {user: {k: getattr(t, k) for k in numbers} for user, t in got.users.items()} == \
        report["users"]
    one = admin.GetUsage(admin_pb2.GetUsageRequest(client_id="acme", user="usage-grpc"),
                         timeout=5)
    assert list(one.users) == ["usage-grpc"]
    assert one.users["usage-grpc"].requests == 1
    with pytest.raises(grpc.RpcError) as bad:
        admin.GetUsage(admin_pb2.GetUsageRequest(client_id="no such/tenant"), timeout=5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_fast_path_status_says_what_envoy_was_sent(
        relay: RelayStack, admin: admin_pb2_grpc.AdminStub) -> None:
    status = admin.GetFastPathStatus(admin_pb2.GetFastPathStatusRequest(), timeout=5)
    shown = subprocess.run(
        [sys.executable, "-m", "authz", "fastpath", "status", "--json", "--grpc",
         f"127.0.0.1:{relay.authz_port}"], capture_output=True, text=True, timeout=60,
        check=False)
    printed = json.loads(shown.stdout)
    assert printed["enabled"] is status.enabled
    if not FAST_PATH:
        assert status == admin_pb2.FastPathStatus(enabled=False)
        assert shown.returncode == 1  # off: nothing is decided in Envoy
        return
    assert shown.returncode == 0, shown.stderr
    assert printed["tenants"] == status.tenants
    assert printed["issuer_keys"] == dict(status.issuer_keys)
    assert printed["envoy_streams"] == 1
    assert status.enabled
    assert status.version >= 1
    assert status.pushes >= 1
    assert status.envoy_streams == 1  # the one Envoy of this stack
    assert status.tenants >= 2
    assert status.issuer_keys["firebase"] >= 1
    assert status.config_bytes > 10_000
    assert not status.vault_failing
    assert status.updated_at_ms / 1000 <= time.time()


def test_invalidate_applies_a_rotated_key_at_once(
        make_relay: Callable[..., RelayStack], vault: BaoDevServer, upstream: FakeOpenAI,
        token_for: Callable[..., str]) -> None:
    """A raw Vault write (no `authz tenant`, so no change-log entry) of a new key, then
    InvalidateCache: the next requests carry the new key (within 2 s with the fast
    path, which pushes Envoy a new config)."""
    vault.put_tenant("admin-rotate", "sk-admin-old")
    try:
        relay = make_relay()
        token = token_for("admin-rotate", "rotator")

        def key_sent() -> str:
            upstream.clear()
            chat(relay, token)
            (request,) = upstream.requests
            return dict(request.headers)["authorization"]

        assert key_sent() == "Bearer sk-admin-old"
        vault.put_tenant("admin-rotate", "sk-admin-new")
        if not FAST_PATH:
            assert key_sent() == "Bearer sk-admin-old"  # the key cache's 300 s
        with grpc.insecure_channel(f"127.0.0.1:{relay.authz_port}") as channel:
            stub = admin_pb2_grpc.AdminStub(channel)
            version = stub.GetFastPathStatus(admin_pb2.GetFastPathStatusRequest()).version
            stub.InvalidateCache(admin_pb2.InvalidateCacheRequest(client_id="admin-rotate"),
                                 timeout=5)
            if not FAST_PATH:
                assert key_sent() == "Bearer sk-admin-new"  # the very next request
            else:
                seconds_until(lambda: key_sent() == "Bearer sk-admin-new", timeout=2.0)
                assert stub.GetFastPathStatus(admin_pb2.GetFastPathStatusRequest()).version \
                    > version
    finally:
        vault.delete_tenant("admin-rotate")


def test_usage_watch_command_prints_one_json_line_per_request(
        relay: RelayStack, token_for: Callable[..., str]) -> None:
    addr = f"127.0.0.1:{relay.authz_port}"
    watch = subprocess.Popen(
        [sys.executable, "-m", "authz", "usage", "watch", "globex", "--json", "--count", "2",
         "--grpc", addr], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stderr is not None
        started = watch.stderr.readline()  # printed once the watch is in place
        assert started == f"authz usage: watching globex on {addr}\n"
        for _ in range(2):
            chat(relay, token_for("acme", "cli-other"))  # another tenant: not shown
            chat(relay, token_for("globex", "cli-watch"))
        out, err = watch.communicate(timeout=10)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert line["client_id"] == "globex"
        assert line["user"] == "cli-watch"
        assert line["status"] == 200
        assert line["input_tokens"] > 0
    refused = subprocess.run(
        [sys.executable, "-m", "authz", "usage", "watch", "bad id", "--grpc", addr],
        capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode == 2
    assert "bad id" in refused.stderr
    nobody = subprocess.run(
        [sys.executable, "-m", "authz", "usage", "watch", "--grpc", "127.0.0.1:1",
         "--count", "1"], capture_output=True, text=True, timeout=60, check=False)
    assert nobody.returncode == 3
    assert "cannot watch usage on 127.0.0.1:1" in nobody.stderr


def test_with_redis_a_watch_on_one_replica_sees_every_replicas_requests(
        make_relay: Callable[..., RelayStack], token_for: Callable[..., str],
        redis_server: RedisServer) -> None:
    env = {"AUTHZ_REDIS_URL": redis_server.url}
    first, second = make_relay(env), make_relay(env)
    with grpc.insecure_channel(f"127.0.0.1:{second.authz_port}") as channel:
        watch = Watch(admin_pb2_grpc.AdminStub(channel), "acme")
        try:
            # The first replica publishes once its probe (every second) has seen a
            # subscriber: requests through it until one of them reaches the watch.
            deadline = time.monotonic() + 10
            while True:
                chat(first, token_for("acme", "warm-up"))
                try:
                    watch.next(timeout=0.5)
                    break
                except queue.Empty:
                    assert time.monotonic() < deadline, "no event of the first replica"
            checked = ["via-first", "via-second", "via-first-again"]
            for relay, user in zip((first, second, first), checked, strict=True):
                chat(relay, token_for("acme", user))
            # Until each has come, then a quiet while (a request is metered within 1 s
            # of its end, its batch published within 50 ms): any copy would show.
            seen: list[str] = []
            deadline = time.monotonic() + 5
            while not set(checked) <= set(seen) and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    seen.append(watch.next(timeout=0.2).user)
            quiet_until = time.monotonic() + 1.5
            while time.monotonic() < quiet_until:
                with contextlib.suppress(queue.Empty):
                    seen.append(watch.next(timeout=0.2).user)
            # Each request once: the second replica's own are not echoed back to it (the
            # warm-up's requests may still trickle in: not counted).
            assert sorted(u for u in seen if u != "warm-up") == sorted(checked)
        finally:
            watch.close()
