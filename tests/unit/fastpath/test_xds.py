"""authz.fastpath.xds: the ADS stream and the control loop, driven in process (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from cryptography.hazmat.primitives.asymmetric import rsa
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from authz.errors import VaultUnavailable
from authz.fastpath.blocks import LUA_FILTER
from authz.fastpath.resources import FastIssuer, FastTenant, firebase_issuer
from authz.fastpath.xds import (
    EXTENSION_CONFIG_TYPE,
    LEASE_S,
    RESOURCE_TYPE,
    AdsServer,
    FastPathControl,
)
from authz.governance.policy import parse_policy

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()

# A resource Envoy did not subscribe to: never sent to it.
OTHER_FILTER = "relay.other"


def issuers() -> list[FastIssuer]:
    return [firebase_issuer("demo-relay", {"k": KEY}, ("clientId",))]


def config(name: str, text: str) -> extension_pb2.TypedExtensionConfig:
    resource = extension_pb2.TypedExtensionConfig(name=name)
    resource.typed_config.type_url = "type.googleapis.com/x"
    resource.typed_config.value = text.encode()
    return resource


def extension_of(response: discovery_pb2.DiscoveryResponse,
                 index: int = 0) -> extension_pb2.TypedExtensionConfig:
    """The extension config in a response's resource, unwrapped from its TTL envelope."""
    wrapper = discovery_pb2.Resource()
    assert response.resources[index].type_url == RESOURCE_TYPE
    response.resources[index].Unpack(wrapper)
    extension = extension_pb2.TypedExtensionConfig()
    wrapper.resource.Unpack(extension)
    assert wrapper.name == extension.name
    return extension


def request(names: list[str], nonce: str = "", version: str = "",
            error: bool = False) -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(type_url=EXTENSION_CONFIG_TYPE, resource_names=names,
                                         response_nonce=nonce, version_info=version)
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message="bad"))
    return req


class Envoy:
    """One ADS stream: requests go in through a queue, responses are collected."""

    def __init__(self, ads: AdsServer) -> None:
        self.requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        self.responses: asyncio.Queue[discovery_pb2.DiscoveryResponse] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._run(ads))

    async def _incoming(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (item := await self.requests.get()) is not None:
            yield item

    async def _run(self, ads: AdsServer) -> None:
        async for response in ads.StreamAggregatedResources(self._incoming(), None):
            await self.responses.put(response)

    async def next(self) -> discovery_pb2.DiscoveryResponse:
        return await asyncio.wait_for(self.responses.get(), 2)


def test_subscribe_ack_push_nack_and_close():
    async def scenario() -> None:
        ads = AdsServer()
        ads.update({OTHER_FILTER: config(OTHER_FILTER, "a"), LUA_FILTER: config(LUA_FILTER, "b")})
        envoy = Envoy(ads)
        await envoy.requests.put(request([LUA_FILTER]))
        first = await envoy.next()
        assert (first.version_info, first.type_url) == ("1", EXTENSION_CONFIG_TYPE)
        [resource] = first.resources
        wrapper = discovery_pb2.Resource.FromString(resource.value)
        # The lease: Envoy drops the config unless it is sent again within the TTL.
        assert (wrapper.ttl.seconds, wrapper.version) == (LEASE_S, "1")
        assert extension_of(first).name == LUA_FILTER
        # An ACK sends nothing back; the same resources again are no change at all.
        await envoy.requests.put(request([LUA_FILTER], first.nonce, "1"))
        assert not ads.update({OTHER_FILTER: config(OTHER_FILTER, "a"),
                               LUA_FILTER: config(LUA_FILTER, "b")})
        assert ads.update({OTHER_FILTER: config(OTHER_FILTER, "a"),
                           LUA_FILTER: config(LUA_FILTER, "c")})
        second = await envoy.next()
        assert second.version_info == "2"
        assert second.nonce != first.nonce
        # A NACK is not answered with the same version again.
        await envoy.requests.put(request([LUA_FILTER], second.nonce, "1", error=True))
        await asyncio.sleep(0.05)
        assert envoy.responses.empty()
        ads.close()
        await asyncio.wait_for(envoy.task, 2)

    asyncio.run(scenario())


class FakeTenants:
    def __init__(self) -> None:
        self.tenants = [FastTenant("acme", "sk-1")]
        self.failing = False

    def refresh(self, named: frozenset[str] = frozenset(), everything: bool = False
                ) -> list[FastTenant]:
        if self.failing:
            raise VaultUnavailable("vault read failed: ConnectionError")
        return list(self.tenants)


def test_control_pushes_changes_and_keeps_the_last_tenants_when_vault_fails():
    async def scenario() -> None:
        ads, tenants = AdsServer(), FakeTenants()
        control = FastPathControl(ads, tenants, issuers,  # type: ignore[arg-type]
                                  clock_skew_s=30)
        await control.refresh()
        assert ads.version == 1
        await control.refresh()
        assert ads.version == 1  # nothing changed, nothing pushed
        tenants.tenants = [FastTenant("acme", "sk-2")]
        await control.refresh()
        assert ads.version == 2
        tenants.failing = True
        await control.refresh()
        assert ads.version == 2  # Vault down: the last tenant set stays

    asyncio.run(scenario())


def test_a_poke_refreshes_at_once():
    async def scenario() -> None:
        ads, tenants = AdsServer(), FakeTenants()
        control = FastPathControl(ads, tenants, issuers,  # type: ignore[arg-type]
                                  clock_skew_s=30, poll_s=3600)
        control.start()
        try:
            for _ in range(100):
                if ads.version == 1:
                    break
                await asyncio.sleep(0.01)
            tenants.tenants = []
            control.poke()
            for _ in range(100):
                if ads.version == 2:
                    break
                await asyncio.sleep(0.01)
            assert ads.version == 2
        finally:
            await control.stop()

    asyncio.run(scenario())


def test_cache_invalidate_pushes_a_new_config_even_when_vault_holds_the_same():
    """The service drops its verified identities on `authz cache invalidate`; Envoy's
    token cache goes with its Lua filter, which Envoy builds anew only for a config whose
    content differs. So every invalidation, of a tenant or all, is a new config."""
    async def scenario() -> None:
        ads, tenants = AdsServer(), FakeTenants()
        control = FastPathControl(ads, tenants, issuers,  # type: ignore[arg-type]
                                  clock_skew_s=30)
        await control.refresh()
        first = ads._response(EXTENSION_CONFIG_TYPE, [LUA_FILTER])
        for client_id, version in (("acme", 2), (None, 3), ("not-a-tenant", 4)):
            control.poke(client_id)
            await control.refresh()
            assert ads.version == version
        await control.refresh()
        assert ads.version == 4  # nothing invalidated since: nothing pushed
        last = ads._response(EXTENSION_CONFIG_TYPE, [LUA_FILTER])
        assert extension_of(last) != extension_of(first)

    asyncio.run(scenario())


def test_a_renewal_sends_the_same_config_again_under_a_new_version():
    """Envoy refreshes the TTL and, the config's hash unchanged, rebuilds nothing (its Lua
    filter keeps its token cache); nothing is renewed before there is a config."""
    async def scenario() -> None:
        ads = AdsServer()
        ads.renew()
        assert ads.version == 0
        ads.update({LUA_FILTER: config(LUA_FILTER, "b")})
        envoy = Envoy(ads)
        await envoy.requests.put(request([LUA_FILTER]))
        first = await envoy.next()
        await envoy.requests.put(request([LUA_FILTER], first.nonce, "1"))
        ads.renew()
        second = await envoy.next()
        assert (first.version_info, second.version_info) == ("1", "2")
        assert extension_of(second) == extension_of(first)
        ads.close()
        await asyncio.wait_for(envoy.task, 2)

    asyncio.run(scenario())


def test_the_control_plane_renews_every_period():
    async def scenario() -> None:
        ads = AdsServer()
        control = FastPathControl(ads, FakeTenants(), issuers,  # type: ignore[arg-type]
                                  clock_skew_s=30, poll_s=3600, renew_s=0.05)
        control.start()
        try:
            for _ in range(200):
                if ads.version >= 3:
                    break
                await asyncio.sleep(0.01)
            assert ads.version >= 3  # one build, then renewals of the same config
        finally:
            await control.stop()

    asyncio.run(scenario())


def test_used_up_budgets_are_pushed_and_an_unreadable_state_sends_budgets_to_ext_authz():
    async def scenario() -> None:
        ads, tenants = AdsServer(), FakeTenants()
        budget = parse_policy({"limits": {"user_tokens_per_day": 10}})
        tenants.tenants = [FastTenant("acme", "sk-1", policy=budget), FastTenant("free", "sk-2")]
        asked: list[dict[str, object]] = []
        state: dict[str, object] = {}

        async def exhausted(budgets):  # type: ignore[no-untyped-def]
            asked.append(dict(budgets))
            if state.get("fail"):
                raise ConnectionError("redis")
            return dict(state)

        control = FastPathControl(ads, tenants, issuers,  # type: ignore[arg-type]
                                  clock_skew_s=30, exhausted=exhausted)

        def lua() -> str:
            config = lua_pb2.Lua()
            extension_of(ads._response(EXTENSION_CONFIG_TYPE, [LUA_FILTER])
                         ).typed_config.Unpack(config)
            return str(config.default_source_code.inline_string)

        await control.refresh()
        assert asked == [{"acme": budget.limits}]  # only tenants with a budget are asked
        assert '["acme"] = {' not in lua().split("local EXHAUSTED = {", 1)[1].split("}")[0]
        state["acme"] = frozenset({"u1"})
        await control.refresh()
        assert ads.version == 2
        assert '["acme"] = {["u1"] = true},' in lua()
        # Between polls, only a budgeted tenant that was metered is read again.
        state["acme"] = frozenset({"u1", "u2"})
        control.settled("free")
        await control.refresh_budgets()
        assert len(asked) == 2  # "free" has no budget: nothing read, nothing pushed
        control.settled("acme")
        await control.refresh_budgets()
        assert asked[-1] == {"acme": budget.limits}
        assert ads.version == 3
        assert '["acme"] = {["u1"] = true, ["u2"] = true},' in lua()
        state["fail"] = True
        await control.refresh()
        assert '["acme"] = true,' in lua()  # the whole tenant to ext_authz

    asyncio.run(scenario())
