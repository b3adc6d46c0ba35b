import asyncio
import threading

import pytest

from authz.errors import ApiKeyNotFound, VaultUnavailable
from authz.tenants.key_cache import KeyCache
from authz.tenants.vault import TenantKey


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeVault:
    """A tenant key source that counts reads and can be made slow or failing."""

    def __init__(self, keys: dict[str, TenantKey]) -> None:
        self.keys = keys
        self.reads: list[str] = []
        self.fail = False
        self.gate: threading.Event | None = None

    def read(self, client_id: str) -> TenantKey | None:
        self.reads.append(client_id)
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail:
            raise VaultUnavailable("vault down")
        return self.keys.get(client_id)


def make(source: FakeVault, clock: FakeClock, **kw) -> KeyCache:
    return KeyCache(source, ttl_s=60, stale_if_error_s=600, negative_ttl_s=5, clock=clock, **kw)


A = TenantKey("sk-a-key", organization="org-a")
B = TenantKey("sk-b-key")


def test_a_burst_for_a_new_tenant_costs_one_read():
    async def scenario():
        vault = FakeVault({"a": A})
        vault.gate = threading.Event()
        cache = make(vault, FakeClock())
        tasks = [asyncio.ensure_future(cache.get("a")) for _ in range(200)]
        await asyncio.sleep(0.05)
        vault.gate.set()
        results = await asyncio.gather(*tasks)
        assert all(r is A for r in results)
        assert vault.reads == ["a"]
        assert cache.stats.misses == 200

    asyncio.run(scenario())


def test_fresh_hits_do_not_read_and_expiry_refreshes_in_background():
    async def scenario():
        vault, clock = FakeVault({"a": A}), FakeClock()
        cache = make(vault, clock)
        assert await cache.get("a") is A
        clock.now += 59
        assert await cache.get("a") is A
        assert vault.reads == ["a"]
        rotated = TenantKey("sk-a-rotated")
        vault.keys["a"] = rotated
        clock.now += 2  # past TTL: the stale key is served once while Vault is re-read
        assert await cache.get("a") is A
        await asyncio.sleep(0.05)
        assert await cache.get("a") is rotated
        assert vault.reads == ["a", "a"]
        assert cache.stats.stale_served == 1

    asyncio.run(scenario())


def test_vault_down_serves_cached_keys_until_stale_if_error_runs_out():
    async def scenario():
        vault, clock = FakeVault({"a": A}), FakeClock()
        cache = make(vault, clock)
        await cache.get("a")
        vault.fail = True
        clock.now += 300
        assert await cache.get("a") is A
        await asyncio.sleep(0.05)
        assert await cache.get("a") is A
        with pytest.raises(VaultUnavailable):
            await cache.get("b")  # uncached tenant: an internal error, not "not found"
        clock.now += 400  # beyond TTL + stale-if-error
        with pytest.raises(VaultUnavailable):
            await cache.get("a")
        vault.fail = False
        assert await cache.get("a") is A  # Vault back: recovery, no restart

    asyncio.run(scenario())


def test_missing_tenant_is_remembered_briefly():
    async def scenario():
        vault, clock = FakeVault({}), FakeClock()
        cache = make(vault, clock)
        for _ in range(3):
            with pytest.raises(ApiKeyNotFound):
                await cache.get("ghost")
        assert vault.reads == ["ghost"]
        vault.keys["ghost"] = B
        clock.now += 6
        assert await cache.get("ghost") is B

    asyncio.run(scenario())


def test_invalidate_forces_a_reread():
    async def scenario():
        vault, clock = FakeVault({"a": A}), FakeClock()
        cache = make(vault, clock)
        await cache.get("a")
        vault.keys["a"] = B
        cache.invalidate("a")
        assert await cache.get("a") is B

    asyncio.run(scenario())


def test_a_hung_vault_read_times_out_as_unavailable():
    async def scenario():
        vault, clock = FakeVault({"a": A}), FakeClock()
        vault.gate = threading.Event()
        cache = make(vault, clock, read_timeout_s=0.1)
        with pytest.raises(VaultUnavailable):
            await cache.get("a")
        vault.gate.set()

    asyncio.run(scenario())


def test_tenant_key_repr_hides_the_key():
    assert "sk-a-key" not in repr(A)
