"""check_revoked: disabled, deleted and revoked users are refused, from a status cached per
user (a fake firebase-admin lookup and a fake clock, no socket)."""

import asyncio

import pytest

from authz.credentials.firebase_emulator import FirebaseEmulatorVerifier
from authz.credentials.firebase_users import (
    RevocationCheckingVerifier,
    UserStatus,
    UserStatusUnavailable,
)
from authz.errors import AuthenticationFailed
from tests.support.firebase import FirebaseKeys

PROJECT = "demo-relay"


class Users:
    def __init__(self) -> None:
        self.status: dict[tuple[str, str | None], UserStatus | None] = {}
        self.calls: list[tuple[str, str | None]] = []
        self.down = False

    def __call__(self, key: tuple[str, str | None]) -> UserStatus | None:
        self.calls.append(key)
        if self.down:
            raise UserStatusUnavailable("down")
        return self.status.get(key)


class Clock:
    now = 2_000_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def keys() -> FirebaseKeys:
    return FirebaseKeys(PROJECT)


def make(users: Users, clock: Clock) -> RevocationCheckingVerifier:
    # The emulator verifier gives claims without certs; the wrapper is the same for both.
    inner = FirebaseEmulatorVerifier(PROJECT, clock=clock)
    return RevocationCheckingVerifier(inner, users, cache_ttl_s=60, negative_ttl_s=5,
                                      stale_if_error_s=0, clock=clock)


def token(keys: FirebaseKeys, clock: Clock, uid: str = "u1", **kw) -> str:
    return keys.mint(None, uid, "acme", variant="none", now=clock.now, **kw)


def test_active_user_passes_with_one_lookup_per_ttl(keys):
    users, clock = Users(), Clock()
    users.status[("u1", None)] = UserStatus(disabled=False, valid_since=None)
    v = make(users, clock)

    async def run():
        identity = await v.verify(token(keys, clock))
        assert identity.client_id == "acme"
        assert identity.expires_at == clock.now + 60  # re-checked at least every TTL
        for _ in range(5):
            await v.verify(token(keys, clock))
        assert users.calls == [("u1", None)]

    asyncio.run(run())


def test_disabled_deleted_and_revoked_users_are_refused(keys):
    users, clock = Users(), Clock()
    users.status[("off", None)] = UserStatus(disabled=True, valid_since=None)
    users.status[("rev", None)] = UserStatus(disabled=False, valid_since=clock.now + 1)
    users.status[("ok", None)] = UserStatus(disabled=False, valid_since=clock.now - 10)
    v = make(users, clock)

    async def run():
        with pytest.raises(AuthenticationFailed, match="disabled"):
            await v.verify(token(keys, clock, "off"))
        with pytest.raises(AuthenticationFailed, match="no longer exists"):
            await v.verify(token(keys, clock, "gone"))
        with pytest.raises(AuthenticationFailed, match="revoked"):
            await v.verify(token(keys, clock, "rev"))
        assert (await v.verify(token(keys, clock, "ok"))).subject == "ok"  # signed in after

    asyncio.run(run())


def test_tenant_users_are_looked_up_in_their_tenant(keys):
    users, clock = Users(), Clock()
    users.status[("u1", "tenant-a")] = UserStatus(disabled=False, valid_since=None)
    v = make(users, clock)
    t = keys.mint(None, "u1", None, tenant="tenant-a", variant="none", now=clock.now)
    assert asyncio.run(v.verify(t)).client_id == "tenant-a"
    assert users.calls == [("u1", "tenant-a")]


def test_status_unavailable_fails_closed(keys):
    users, clock = Users(), Clock()
    users.down = True
    with pytest.raises(UserStatusUnavailable):
        asyncio.run(make(users, clock).verify(token(keys, clock)))
