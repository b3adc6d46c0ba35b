"""Vault login tokens: when they are renewed, when a new login replaces them, and how
failures are retried. No sockets: a fake login method, a fake hvac client, a fake clock.
(tests/integration/test_vault_auth.py does the same against a real OpenBao server.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest

from authz.errors import ConfigError, VaultUnavailable
from authz.settings import Settings
from authz.tenants.vault_login import (
    AppRoleLogin,
    GivenToken,
    KubernetesLogin,
    RenewingToken,
    StaticToken,
    token_provider,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeVault:
    """Scripted answers: each login/renewal pops the next outcome (dict or exception)."""

    logins: list[dict[str, Any] | Exception] = field(default_factory=list)
    renewals: list[dict[str, Any] | Exception] = field(default_factory=list)
    renewed_tokens: list[str | None] = field(default_factory=list)
    revoked: list[str | None] = field(default_factory=list)
    count: int = 0


class FakeMethod:
    name = "fake"
    mount = "fake"
    owns_token = True

    def __init__(self, vault: FakeVault) -> None:
        self.vault = vault

    def login(self, client: Any) -> dict[str, Any]:
        assert client.token is None  # a login never carries the previous token
        outcome = self.vault.logins.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class FakeClient:
    def __init__(self, vault: FakeVault) -> None:
        self.token: str | None = None
        outer = self

        class Token:
            def renew_self(self) -> dict[str, Any]:
                vault.renewed_tokens.append(outer.token)
                outcome = vault.renewals.pop(0)
                if isinstance(outcome, Exception):
                    raise outcome
                return {"auth": outcome}

            def revoke_self(self) -> None:
                vault.revoked.append(outer.token)

        class Auth:
            token = Token()

        self.auth = Auth()


def auth(token: str, ttl: int, renewable: bool = True) -> dict[str, Any]:
    return {"client_token": token, "lease_duration": ttl, "renewable": renewable}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(clock: Clock) -> Callable[[FakeVault], RenewingToken]:
    def build(vault: FakeVault) -> RenewingToken:
        return RenewingToken("http://vault.invalid", FakeMethod(vault), clock=clock,
                             min_retry_s=1, max_retry_s=30, min_relogin_interval_s=5,
                             client_factory=lambda: FakeClient(vault))  # type: ignore[arg-type,return-value]

    return build


def test_first_token_logs_in_once_and_schedules_renewal_at_two_thirds(make, clock):
    vault = FakeVault(logins=[auth("t1", 30)])
    provider = make(vault)
    assert provider.token() == "t1"
    assert provider.token() == "t1"
    assert provider.logins == 1
    assert provider.seconds_until_refresh() == pytest.approx(20)
    clock.now += 15
    assert provider.seconds_until_refresh() == pytest.approx(5)


def test_renewal_keeps_the_token_and_moves_the_schedule(make, clock):
    vault = FakeVault(logins=[auth("t1", 30)], renewals=[auth("t1", 30)])
    provider = make(vault)
    provider.token()
    clock.now += 20
    provider._renew_or_login()
    assert vault.renewed_tokens == ["t1"]
    assert provider.renewals == 1
    assert provider.logins == 1
    assert provider.token() == "t1"
    assert provider.seconds_until_refresh() == pytest.approx(20)


def test_short_renewal_near_max_ttl_is_followed_by_a_fresh_login(make, clock):
    vault = FakeVault(logins=[auth("t1", 30), auth("t2", 30)], renewals=[auth("t1", 8)])
    provider = make(vault)
    provider.token()
    clock.now += 20
    provider._renew_or_login()
    assert provider.logins == 2
    assert provider.token() == "t2"


def test_failed_renewal_falls_back_to_a_login(make, clock):
    vault = FakeVault(logins=[auth("t1", 30), auth("t2", 30)],
                      renewals=[hvac.exceptions.Forbidden("permission denied")])
    provider = make(vault)
    provider.token()
    clock.now += 20
    provider._renew_or_login()
    assert provider.token() == "t2"
    assert provider.errors == 0


def test_non_renewable_token_is_replaced_by_a_login(make, clock):
    vault = FakeVault(logins=[auth("t1", 30, renewable=False), auth("t2", 30)])
    provider = make(vault)
    provider.token()
    clock.now += 20
    provider._renew_or_login()
    assert vault.renewed_tokens == []
    assert provider.token() == "t2"


def test_login_failure_keeps_the_valid_token_and_retries_before_it_expires(make, clock):
    down = hvac.exceptions.VaultDown("sealed")
    vault = FakeVault(logins=[auth("t1", 30, renewable=False), down, down, auth("t2", 30)])
    provider = make(vault)
    provider.token()
    clock.now += 20  # 10 s left
    with pytest.raises(VaultUnavailable):
        provider._renew_or_login()
    assert provider.token() == "t1"  # still valid: still served
    assert provider.seconds_until_refresh() == pytest.approx(1)
    clock.now += 1
    with pytest.raises(VaultUnavailable):
        provider._renew_or_login()
    assert provider.seconds_until_refresh() == pytest.approx(2)  # backoff doubles
    clock.now += 2
    provider._renew_or_login()
    assert provider.token() == "t2"
    assert provider.seconds_until_refresh() == pytest.approx(20)  # failures forgotten


def test_expired_token_with_vault_down_fails_closed(make, clock):
    vault = FakeVault(logins=[auth("t1", 30, renewable=False),
                              hvac.exceptions.VaultDown("sealed")])
    provider = make(vault)
    provider.token()
    clock.now += 31
    with pytest.raises(VaultUnavailable, match="vault fake login failed: VaultDown"):
        provider.token()


def test_backoff_is_capped(make, clock):
    vault = FakeVault(logins=[ConnectionError("refused")] * 10)
    provider = make(vault)
    for _ in range(10):
        with pytest.raises(VaultUnavailable):
            provider.token()
    assert provider.seconds_until_refresh() == pytest.approx(30)


def test_refresh_is_rate_limited(make, clock):
    vault = FakeVault(logins=[auth("t1", 300), auth("t2", 300)])
    provider = make(vault)
    provider.token()
    assert provider.refresh()  # obtained just now: no second login
    assert provider.logins == 1
    clock.now += 6
    assert provider.refresh()
    assert provider.token() == "t2"


def test_token_without_ttl_is_never_renewed(make, clock):
    vault = FakeVault(logins=[auth("t1", 0, renewable=False)])
    provider = make(vault)
    provider.token()
    clock.now += 10**6
    assert provider.token() == "t1"
    assert provider.seconds_until_refresh() == float("inf")


def test_close_revokes_the_token(make):
    vault = FakeVault(logins=[auth("t1", 30)])
    provider = make(vault)
    provider.token()
    provider.close()
    assert vault.revoked == ["t1"]


def test_secrets_stay_out_of_reprs():
    assert "s.secret" not in repr(StaticToken("s.secret"))
    assert "role-xyz" not in repr(AppRoleLogin(role_id="role-xyz"))


def test_login_methods_read_their_files_at_each_login(tmp_path: Path):
    calls: list[dict[str, Any]] = []

    class Approle:
        def login(self, **kwargs: Any) -> dict[str, Any]:
            calls.append(kwargs)
            return {"auth": auth("t", 10)}

    class Kubernetes:
        def login(self, **kwargs: Any) -> dict[str, Any]:
            calls.append(kwargs)
            return {"auth": auth("t", 10)}

    class Client:
        class auth:
            approle = Approle()
            kubernetes = Kubernetes()

    secret = tmp_path / "secret-id"
    secret.write_text("first\n")
    method = AppRoleLogin(role_id="rid", secret_id_file=str(secret), mount="ar")
    method.login(Client())  # type: ignore[arg-type]
    secret.write_text("second")
    method.login(Client())  # type: ignore[arg-type]
    assert [c["secret_id"] for c in calls] == ["first", "second"]
    assert calls[0]["mount_point"] == "ar"
    assert calls[0]["use_token"] is False

    jwt = tmp_path / "token"
    jwt.write_text("header.claims.sig")
    KubernetesLogin("relay", str(jwt)).login(Client())  # type: ignore[arg-type]
    assert calls[-1] == {"role": "relay", "jwt": "header.claims.sig",
                         "mount_point": "kubernetes", "use_token": False}
    jwt.write_text("")
    with pytest.raises(ValueError, match="empty"):
        KubernetesLogin("relay", str(jwt)).login(Client())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- settings

BASE = {"AUTHZ_FIREBASE_PROJECT_ID": "demo-relay"}


def test_default_is_the_static_token():
    settings = Settings.from_env({**BASE, "VAULT_TOKEN": "s.abc"})
    assert settings.vault_auth == "token"
    provider = token_provider(settings.vault_login)
    # The same lifecycle as a login token: renewed if it has a TTL, never revoked.
    assert isinstance(provider, RenewingToken)
    assert isinstance(provider.method, GivenToken)
    assert not provider.method.owns_token


def test_approle_settings(tmp_path: Path):
    secret = tmp_path / "secret-id"
    secret.write_text("x")
    settings = Settings.from_env({**BASE, "AUTHZ_VAULT_AUTH": "AppRole",
                                  "AUTHZ_VAULT_ROLE_ID": "rid",
                                  "AUTHZ_VAULT_SECRET_ID_FILE": str(secret)})
    provider = token_provider(settings.vault_login)
    assert isinstance(provider, RenewingToken)
    assert provider.method == AppRoleLogin(role_id="rid", secret_id_file=str(secret))
    assert "rid" not in repr(settings)


def test_kubernetes_settings(tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("jwt")
    settings = Settings.from_env({**BASE, "AUTHZ_VAULT_AUTH": "kubernetes",
                                  "AUTHZ_VAULT_K8S_ROLE": "relay",
                                  "AUTHZ_VAULT_K8S_TOKEN_FILE": str(token),
                                  "AUTHZ_VAULT_AUTH_MOUNT": "k8s/prod"})
    provider = token_provider(settings.vault_login)
    assert isinstance(provider, RenewingToken)
    assert provider.method == KubernetesLogin("relay", str(token), mount="k8s/prod")


@pytest.mark.parametrize(("env", "message"), [
    ({"AUTHZ_VAULT_AUTH": "ldap"}, "AUTHZ_VAULT_AUTH"),
    ({"AUTHZ_VAULT_AUTH": "approle"}, "AUTHZ_VAULT_ROLE_ID"),
    ({"AUTHZ_VAULT_AUTH": "approle", "AUTHZ_VAULT_ROLE_ID": "a",
      "AUTHZ_VAULT_ROLE_ID_FILE": "/etc/hostname"}, "exactly one"),
    ({"AUTHZ_VAULT_AUTH": "approle", "AUTHZ_VAULT_ROLE_ID": "a",
      "AUTHZ_VAULT_SECRET_ID_FILE": "/nonexistent/secret-id"}, "AUTHZ_VAULT_SECRET_ID_FILE"),
    ({"AUTHZ_VAULT_AUTH": "kubernetes"}, "AUTHZ_VAULT_K8S_ROLE"),
    ({"AUTHZ_VAULT_AUTH": "kubernetes", "AUTHZ_VAULT_K8S_ROLE": "r",
      "AUTHZ_VAULT_K8S_TOKEN_FILE": "/nonexistent/token"}, "AUTHZ_VAULT_K8S_TOKEN_FILE"),
    ({"AUTHZ_VAULT_AUTH_MOUNT": "../sys"}, "AUTHZ_VAULT_AUTH_MOUNT"),
])
def test_bad_login_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({**BASE, **env})


def test_stopping_token_renewal_never_blocks_the_event_loop():
    """Joining the renewal thread and revoking the token block; shutdown must not stall
    the loop that is still finishing in-flight checks (issue 11, item 9)."""
    import asyncio
    import threading

    from authz.tenants.vault import VaultTenantStore

    class SlowToClose(StaticToken):
        def __init__(self) -> None:
            super().__init__("s.token")
            self.loop_ran = threading.Event()

        def close(self) -> None:
            # Returns at once if the loop keeps running while we block here.
            assert self.loop_ran.wait(2), "the event loop was blocked during close()"

    async def scenario() -> None:
        provider = SlowToClose()
        store = VaultTenantStore("http://vault.invalid", provider)
        asyncio.get_running_loop().call_later(0.01, provider.loop_ran.set)
        await store.stop_token_renewal()

    asyncio.run(scenario())
