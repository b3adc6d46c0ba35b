"""Vault login beyond a static token, against a real OpenBao server: AppRole and
Kubernetes auth, token renewal before expiry, a fresh login at the max TTL, and the
whole relay (`authz serve`) reading tenant keys with each method.

The one stand-in is the Kubernetes API that OpenBao asks to review service-account
tokens (tests/support/kubernetes.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import hvac
import hvac.exceptions
import openai
import pytest

from authz.errors import VaultUnavailable
from authz.tenants.vault import VaultTenantStore
from authz.tenants.vault_login import AppRoleLogin, KubernetesLogin, RenewingToken
from tests.support.fake_openai import FakeOpenAI
from tests.support.kubernetes import FakeKubernetesAPI, ServiceAccount
from tests.support.relay import RelayStack
from tests.support.tls import TestPKI
from tests.support.vault import BaoDevServer

pytestmark = pytest.mark.integration

APPROLE_MOUNT = "approle-relay"
K8S_MOUNT = "kubernetes-relay"
POLICY = "relay-tenant-reader"
TENANT = "vault-auth-tenant"
TENANT_KEY = "sk-vaultauth-0123456789abcdef"
READER_POLICY = (
    'path "secret/data/openai/clients/*" { capabilities = ["read"] }\n'
)


def _enable(client: hvac.Client, method: str, mount: str) -> None:
    if f"{mount}/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method(method, path=mount)


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)  # poll interval


@pytest.fixture(scope="module")
def bao(vault: BaoDevServer) -> BaoDevServer:
    root = vault.client()
    _enable(root, "approle", APPROLE_MOUNT)
    _enable(root, "kubernetes", K8S_MOUNT)
    root.sys.create_or_update_policy(name=POLICY, policy=READER_POLICY)
    vault.put_tenant(TENANT, TENANT_KEY)
    return vault


@dataclass
class AppRole:
    role: str
    role_id: str
    role_id_file: Path
    secret_id_file: Path

    def login(self) -> AppRoleLogin:
        return AppRoleLogin(role_id_file=str(self.role_id_file),
                            secret_id_file=str(self.secret_id_file), mount=APPROLE_MOUNT)


@pytest.fixture
def make_approle(bao: BaoDevServer, tmp_path: Path) -> Callable[..., AppRole]:
    def make(**role_params: str) -> AppRole:
        root = bao.client()
        role = f"relay-{uuid.uuid4().hex[:8]}"
        params = {"token_policies": POLICY, "token_ttl": "1h", "token_max_ttl": "4h",
                  **role_params}
        root.write(f"auth/{APPROLE_MOUNT}/role/{role}", **params)
        role_id = root.read(f"auth/{APPROLE_MOUNT}/role/{role}/role-id")["data"]["role_id"]
        secret_id = root.write(f"auth/{APPROLE_MOUNT}/role/{role}/secret-id")["data"][
            "secret_id"]
        (tmp_path / f"{role}.role-id").write_text(role_id + "\n")
        (tmp_path / f"{role}.secret-id").write_text(secret_id + "\n")
        return AppRole(role, role_id, tmp_path / f"{role}.role-id",
                       tmp_path / f"{role}.secret-id")

    return make


@pytest.fixture(scope="module")
def kube_api(pki: TestPKI, bao: BaoDevServer) -> Iterator[FakeKubernetesAPI]:
    with FakeKubernetesAPI(pki) as api:
        bao.client().write(f"auth/{K8S_MOUNT}/config", kubernetes_host=api.url,
                           kubernetes_ca_cert=api.ca_pem, disable_local_ca_jwt=True)
        yield api


@pytest.fixture
def providers() -> Iterator[list[RenewingToken]]:
    made: list[RenewingToken] = []
    yield made
    for provider in made:
        provider.close()


def test_approle_login_reads_a_tenant_key(bao, make_approle, providers):
    approle = make_approle()
    provider = RenewingToken(bao.addr, approle.login())
    providers.append(provider)
    store = VaultTenantStore(bao.addr, provider)
    key = store.read(TENANT)
    assert key is not None
    assert key.api_key == TENANT_KEY
    assert provider.logins == 1
    # The login token has the reader policy only: it cannot write.
    with pytest.raises(VaultUnavailable):
        store.write(TENANT, key)


def test_approle_token_is_renewed_before_expiry_then_replaced_at_max_ttl(
        bao, make_approle, providers):
    approle = make_approle(token_ttl="3s", token_max_ttl="7s")
    provider = RenewingToken(bao.addr, approle.login(), min_retry_s=0.2)
    providers.append(provider)
    store = VaultTenantStore(bao.addr, provider)
    tokens = {provider.token()}  # the first login
    store.start_token_renewal()
    deadline = time.monotonic() + 20
    # Read continuously across several TTLs: every read must succeed.
    while provider.renewals < 1 or provider.logins < 2:
        assert time.monotonic() < deadline, (provider.logins, provider.renewals)
        key = store.read(TENANT)
        assert key is not None
        assert key.api_key == TENANT_KEY
        tokens.add(provider.token())
        time.sleep(0.1)  # read pacing
    tokens.add(provider.token())
    assert provider.errors == 0
    assert len(tokens) >= 2  # a fresh login replaced the token near its max TTL
    # Each token was renewed while still valid: Vault reports a positive TTL for it now.
    info = bao.client().auth.token.lookup(provider.token())["data"]
    assert 0 < info["ttl"] <= 7


def test_rotated_secret_id_is_read_at_the_next_login(bao, make_approle, providers):
    approle = make_approle()
    provider = RenewingToken(bao.addr, approle.login(), min_relogin_interval_s=0)
    providers.append(provider)
    first = provider.token()
    root = bao.client()
    new_secret = root.write(f"auth/{APPROLE_MOUNT}/role/{approle.role}/secret-id")["data"][
        "secret_id"]
    old_secret = approle.secret_id_file.read_text().strip()
    root.write(f"auth/{APPROLE_MOUNT}/role/{approle.role}/secret-id/destroy",
               secret_id=old_secret)
    approle.secret_id_file.write_text(new_secret)
    assert provider.refresh()
    assert provider.token() != first


def test_revoked_token_is_replaced_on_the_next_read(bao, make_approle, providers):
    approle = make_approle()
    provider = RenewingToken(bao.addr, approle.login(), min_relogin_interval_s=0)
    providers.append(provider)
    store = VaultTenantStore(bao.addr, provider)
    assert store.read(TENANT) is not None
    revoked = provider.token()
    bao.client().auth.token.revoke(revoked)
    key = store.read(TENANT)  # 403 with the revoked token, one login, one retry
    assert key is not None
    assert key.api_key == TENANT_KEY
    assert provider.token() != revoked
    assert provider.logins == 2


def test_bad_secret_id_fails_closed_without_leaking_it(bao, make_approle, providers, caplog):
    approle = make_approle()
    approle.secret_id_file.write_text("not-the-secret-id-4c1d")
    provider = RenewingToken(bao.addr, approle.login())
    providers.append(provider)
    store = VaultTenantStore(bao.addr, provider)
    with pytest.raises(VaultUnavailable) as raised:
        store.read(TENANT)
    assert "not-the-secret-id" not in str(raised.value)
    assert "not-the-secret-id" not in caplog.text
    assert not store.ping()


def _k8s_role(bao: BaoDevServer, account: ServiceAccount, **params: str) -> str:
    role = f"relay-{uuid.uuid4().hex[:8]}"
    bao.client().write(
        f"auth/{K8S_MOUNT}/role/{role}",
        bound_service_account_names=account.name,
        bound_service_account_namespaces=account.namespace,
        **{"audience": "vault", "token_policies": POLICY, "token_ttl": "1h", **params},
    )
    return role


def test_kubernetes_login_with_the_service_account_token(
        bao, kube_api, providers, tmp_path):
    account = ServiceAccount("relay", "openai-relay")
    role = _k8s_role(bao, account)
    token_file = tmp_path / "token"
    token_file.write_text(kube_api.issue(account))
    provider = RenewingToken(bao.addr, KubernetesLogin(role, str(token_file), mount=K8S_MOUNT))
    providers.append(provider)
    key = VaultTenantStore(bao.addr, provider).read(TENANT)
    assert key is not None
    assert key.api_key == TENANT_KEY
    review = kube_api.reviews[-1]
    assert review["spec"]["token"] == token_file.read_text()
    assert review["spec"]["audiences"] == ["vault"]


def test_kubernetes_token_is_reread_from_its_file_and_renewed(
        bao, kube_api, providers, tmp_path):
    account = ServiceAccount("relay", "openai-relay")
    role = _k8s_role(bao, account, token_ttl="2s", token_max_ttl="5s")
    token_file = tmp_path / "token"
    first_jwt = kube_api.issue(account)
    token_file.write_text(first_jwt)
    provider = RenewingToken(bao.addr, KubernetesLogin(role, str(token_file), mount=K8S_MOUNT),
                             min_retry_s=0.2)
    providers.append(provider)
    provider.start()
    _wait_until(lambda: provider.logins >= 1, 10, "the first login")
    # The kubelet rotates the projected token; the old one stops being valid.
    token_file.write_text(kube_api.issue(account))
    kube_api.revoke(first_jwt)
    _wait_until(lambda: provider.renewals >= 1 and provider.logins >= 2, 20,
                "a renewal, then a login with the rotated token")
    assert provider.errors == 0
    assert VaultTenantStore(bao.addr, provider).read(TENANT) is not None


def test_kubernetes_login_for_another_service_account_is_refused(
        bao, kube_api, providers, tmp_path):
    role = _k8s_role(bao, ServiceAccount("relay", "openai-relay"))
    token_file = tmp_path / "token"
    jwt = kube_api.issue(ServiceAccount("relay", "someone-else"))
    token_file.write_text(jwt)
    provider = RenewingToken(bao.addr, KubernetesLogin(role, str(token_file), mount=K8S_MOUNT))
    providers.append(provider)
    with pytest.raises(VaultUnavailable) as raised:
        provider.token()
    assert jwt not in str(raised.value)
    assert "kubernetes login failed" in str(raised.value)


# --------------------------------------------------------------------------- the relay


@pytest.fixture
def relay_sdk(
    token_for: Callable[..., str],
) -> Iterator[Callable[[RelayStack, str], openai.OpenAI]]:
    clients: list[httpx.Client] = []

    def make(stack: RelayStack, client_id: str) -> openai.OpenAI:
        http_client = httpx.Client(timeout=30)
        clients.append(http_client)
        return openai.OpenAI(base_url=stack.api_base, api_key=token_for(client_id),
                             http_client=http_client, max_retries=0)

    yield make
    for client in clients:
        client.close()


def _call(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content


def test_authz_serve_logs_in_with_approle(make_relay, make_approle, relay_sdk,
                                          upstream: FakeOpenAI):
    approle = make_approle()
    stack = make_relay({
        "VAULT_TOKEN": "",  # no static token: the only way in is the AppRole login
        "AUTHZ_VAULT_AUTH": "approle",
        "AUTHZ_VAULT_AUTH_MOUNT": APPROLE_MOUNT,
        "AUTHZ_VAULT_ROLE_ID": approle.role_id,
        "AUTHZ_VAULT_SECRET_ID_FILE": str(approle.secret_id_file),
    })
    _call(relay_sdk(stack, TENANT))
    assert upstream.requests[-1].header("authorization") == f"Bearer {TENANT_KEY}"
    authz_log = stack.logs()["authz"]
    assert '"vault login"' in authz_log
    assert "approle" in authz_log
    assert approle.secret_id_file.read_text().strip() not in authz_log


def test_authz_serve_logs_in_with_kubernetes_auth(make_relay, bao, kube_api, relay_sdk,
                                                  upstream: FakeOpenAI, tmp_path):
    account = ServiceAccount("relay", "openai-relay")
    role = _k8s_role(bao, account)
    token_file = tmp_path / "sa-token"
    token_file.write_text(kube_api.issue(account))
    stack = make_relay({
        "VAULT_TOKEN": "",
        "AUTHZ_VAULT_AUTH": "kubernetes",
        "AUTHZ_VAULT_AUTH_MOUNT": K8S_MOUNT,
        "AUTHZ_VAULT_K8S_ROLE": role,
        "AUTHZ_VAULT_K8S_TOKEN_FILE": str(token_file),
    })
    _call(relay_sdk(stack, TENANT))
    assert upstream.requests[-1].header("authorization") == f"Bearer {TENANT_KEY}"


def test_authz_serve_refuses_to_start_with_incomplete_login_settings(make_relay):
    with pytest.raises(RuntimeError, match="AUTHZ_VAULT_K8S_ROLE"):
        make_relay({"AUTHZ_VAULT_AUTH": "kubernetes"})


def test_static_token_still_works(bao, providers):
    store = VaultTenantStore(bao.addr, bao.token)
    key = store.read(TENANT)
    assert key is not None
    assert key.api_key == TENANT_KEY
    with pytest.raises(hvac.exceptions.Forbidden):
        hvac.Client(url=bao.addr, token="not-a-token").auth.token.lookup_self()


def test_a_policy_403_is_not_an_expired_token_no_login_storm(make_relay, make_approle,
                                                              upstream: FakeOpenAI):
    """The AppRole's policy grants tenant keys only (the old shipped policy). rk_-shaped
    bearers make authz read paths it may not: that is a policy to fix, not a token to
    replace, so no new login (and no pile of live tokens), and 401, not 500."""
    approle = make_approle()
    stack = make_relay({
        "VAULT_TOKEN": "",
        "AUTHZ_VAULT_AUTH": "approle",
        "AUTHZ_VAULT_AUTH_MOUNT": APPROLE_MOUNT,
        "AUTHZ_VAULT_ROLE_ID": approle.role_id,
        "AUTHZ_VAULT_SECRET_ID_FILE": str(approle.secret_id_file),
    })
    with httpx.Client(timeout=20) as client:
        codes = [client.get(stack.api_base + "/models",
                            headers={"authorization": f"Bearer rk_{'B' * 50}{i}"}).status_code
                 for i in range(8)]
    assert codes == [401] * 8
    assert upstream.requests == []
    authz_log = stack.logs()["authz"]
    assert authz_log.count('"message": "vault login"') == 1
