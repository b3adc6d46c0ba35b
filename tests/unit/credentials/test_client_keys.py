"""Relay-issued client keys: format, keyed hash, and the verifier over a fake index with a
fake clock (no socket, no Vault)."""

import asyncio
import secrets
import threading

import pytest

from authz.credentials.client_keys import (
    KEY_LENGTH,
    ClientKeyRecord,
    ClientKeyVerifier,
    has_valid_tag,
    key_hash,
    new_client_key,
)
from authz.edge.logs import redact
from authz.errors import AuthenticationFailed, VaultUnavailable

PEPPER = secrets.token_bytes(32)


class FakeIndex:
    """What VaultClientKeyStore offers the relay, in memory, counting reads."""

    def __init__(self, pepper: bytes | None = PEPPER) -> None:
        self.pepper = pepper
        self.records: dict[str, ClientKeyRecord] = {}
        self.reads = 0
        self.pepper_reads = 0
        self.down = False
        self.lock = threading.Lock()

    def issue(self, client_id: str, **kw) -> str:
        assert self.pepper is not None
        key = new_client_key(self.pepper)
        self.records[key_hash(self.pepper, key)] = ClientKeyRecord(client_id, "ck_1", **kw)
        return key

    def read_pepper(self) -> bytes | None:
        self.pepper_reads += 1
        return self.pepper

    def read_index(self, hash_hex: str) -> ClientKeyRecord | None:
        with self.lock:
            self.reads += 1
        if self.down:
            raise VaultUnavailable("down")
        return self.records.get(hash_hex)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def verifier(index: FakeIndex, clock: Clock, **kw) -> ClientKeyVerifier:
    return ClientKeyVerifier(index, cache_ttl_s=30, negative_ttl_s=5, stale_if_error_s=60,
                             clock=clock, **kw)


def test_key_format_and_hash():
    key = new_client_key(PEPPER)
    assert key.startswith("rk_")
    assert len(key) == KEY_LENGTH
    assert has_valid_tag(PEPPER, key)
    assert not has_valid_tag(secrets.token_bytes(32), key)
    assert not has_valid_tag(PEPPER, key[:-1] + ("A" if key[-1] != "A" else "B"))
    digest = key_hash(PEPPER, key)
    assert len(digest) == 64
    assert key not in digest
    assert digest != key_hash(secrets.token_bytes(32), key)  # keyed: pepper matters
    assert len({new_client_key(PEPPER) for _ in range(100)}) == 100
    assert key not in redact(f"calling with {key}")


def test_issue_use_and_cache():
    index, clock = FakeIndex(), Clock()
    key = index.issue("acme")
    v = verifier(index, clock)

    async def run():
        identity = await v.verify(key)
        assert (identity.client_id, identity.token_type) == ("acme", "client_key")
        assert identity.subject == "client-key:ck_1"
        assert identity.expires_at == clock.now + 30  # the identity cache may keep it 30 s
        await v.verify(key)
        assert index.reads == 1

    asyncio.run(run())


def test_revocation_takes_effect_within_the_ttl():
    index, clock = FakeIndex(), Clock()
    key = index.issue("acme")
    v = verifier(index, clock)

    async def run():
        await v.verify(key)
        h = key_hash(PEPPER, key)
        index.records[h] = ClientKeyRecord("acme", "ck_1", revoked=True)
        clock.now += 29
        await v.verify(key)  # still cached: revocation is not instant
        clock.now += 2
        # Past the TTL: served once while a background read refreshes...
        identity = await v.verify(key)
        assert identity.expires_at == clock.now  # ...but marked not reusable
        await v.records.settle()  # the background read lands
        assert index.reads == 2
        with pytest.raises(AuthenticationFailed, match="revoked"):
            await v.verify(key)

    asyncio.run(run())


def test_expiry_unknown_keys_and_forged_tags():
    index, clock = FakeIndex(), Clock()
    expiring = index.issue("acme", expires_at=clock.now + 10)
    v = verifier(index, clock)

    async def run():
        identity = await v.verify(expiring)
        assert identity.expires_at == clock.now + 10  # never cached past its expiry
        clock.now += 11
        with pytest.raises(AuthenticationFailed, match="expired"):
            await v.verify(expiring)
        unknown = new_client_key(PEPPER)  # well-formed, tagged, but never issued
        with pytest.raises(AuthenticationFailed, match="unknown"):
            await v.verify(unknown)
        reads = index.reads
        forged = new_client_key(secrets.token_bytes(32))  # tag made with another pepper
        for bad in (forged, "rk_short", "rk_" + "!" * 51, expiring + "x"):
            with pytest.raises(AuthenticationFailed):
                await v.verify(bad)
        assert index.reads == reads  # made-up keys never reach Vault

    asyncio.run(run())


def test_no_pepper_means_no_key_was_ever_issued():
    index, clock = FakeIndex(pepper=None), Clock()
    v = verifier(index, clock)

    async def run():
        for _ in range(3):
            with pytest.raises(AuthenticationFailed, match="no client key"):
                await v.verify(new_client_key(PEPPER))
        assert index.pepper_reads == 1  # re-checked only every few seconds
        index.pepper = PEPPER
        key = index.issue("acme")
        clock.now += 6
        assert (await v.verify(key)).client_id == "acme"

    asyncio.run(run())


def test_vault_down_fails_closed_unless_a_recent_answer_is_cached():
    index, clock = FakeIndex(), Clock()
    key, other = index.issue("acme"), index.issue("globex")
    v = verifier(index, clock)

    async def run():
        await v.verify(key)
        index.down = True
        with pytest.raises(VaultUnavailable):
            await v.verify(other)  # nothing cached: 500, never a guess
        clock.now += 40  # past the TTL, within stale-if-error
        assert (await v.verify(key)).client_id == "acme"
        clock.now += 60
        await v.records.settle()
        with pytest.raises(VaultUnavailable):
            await v.verify(key)

    asyncio.run(run())


def test_an_index_entry_with_an_unsafe_client_id_is_refused():
    index, clock = FakeIndex(), Clock()
    key = index.issue("../other")
    with pytest.raises(AuthenticationFailed):
        asyncio.run(verifier(index, clock).verify(key))
