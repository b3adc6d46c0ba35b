"""Tenant secrets in Vault (or OpenBao) KV v2, through hvac.

One secret per tenant at <mount>/<path with {client_id}>, field `api_key` and optional
`organization` and `project`. hvac is synchronous: the service calls `read` from a worker
thread, never on the event loop. Every hvac or transport failure becomes
VaultUnavailable, whose message never holds the token or a secret value.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hvac
import hvac.exceptions
import requests

from authz.errors import TenantRecordInvalid, VaultForbidden, VaultUnavailable
from authz.governance.policy import Policy, parse_stored_policy, policy_to_json
from authz.tenants.change_log import log_path, note_change
from authz.tenants.client_id import validate_client_id
from authz.tenants.vault_login import StaticToken, TokenProvider

log = logging.getLogger(__name__)


# What may become a header value: visible ASCII, no space, no CR/LF/control character
# (a CR/LF in a header value would let a Vault record add headers of its own).
_HEADER_VALUE = re.compile(r"[\x21-\x7e]{1,1024}")
TENANT_FIELDS = ("api_key", "organization", "project")


def header_value_ok(value: str) -> bool:
    return _HEADER_VALUE.fullmatch(value) is not None


@dataclass(frozen=True)
class TenantKey:
    api_key: str = field(repr=False)
    organization: str | None = None
    project: str | None = None
    #: The tenant's own governance policy (the record's `policy`); None: the default.
    policy: Policy | None = None

    def invalid_field(self) -> str | None:
        """The first field that cannot be sent as a header value (its name, never its
        value), or None."""
        for name in TENANT_FIELDS:
            value = getattr(self, name)
            if value is not None and not header_value_ok(value):
                return name
        return None


def read_policy(data: dict[str, Any]) -> Policy | None:
    """The tenant record's `policy` (a JSON object or a string holding one); an invalid
    one fails closed: InternalError "tenant policy invalid"."""
    return parse_stored_policy(data.get("policy"), "tenant")


def mask(secret: str) -> str:
    """Enough of a key to recognise it, never enough to use it."""
    if len(secret) <= 12:
        return "…" + "*" * min(len(secret), 4)
    return f"{secret[:3]}…{secret[-4:]}"


_VAULT_ERRORS = (hvac.exceptions.VaultError, requests.RequestException)


class KvStore:
    """One KV v2 mount, reached with a static token or a renewing login.

    Per-thread hvac clients (requests.Session is not documented as thread-safe), and
    every hvac or transport failure as VaultUnavailable, naming only the error's type.

    A 403 on a read means one of two things, told apart by asking Vault about the token
    that was refused (auth/token/lookup-self, which every token may call):
    - the token is alive: a policy does not grant this path. That is VaultForbidden,
      naming the path; logging in again would not help and is not attempted;
    - the token is dead (expired, revoked early): one fresh login, one retry.
    """

    def __init__(
        self, addr: str, token: str | TokenProvider, *, mount: str = "secret",
        timeout_s: float = 5.0,
    ) -> None:
        self._addr = addr
        # A static token, or a login (AppRole, Kubernetes) kept valid by authz/vault_auth.py.
        self.tokens: TokenProvider = StaticToken(token) if isinstance(token, str) else token
        self.mount = mount
        self._timeout_s = timeout_s
        self._local = threading.local()

    def client(self, token: str | None = None) -> hvac.Client:
        client: hvac.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = hvac.Client(url=self._addr, timeout=self._timeout_s)
            self._local.client = client
        client.token = token if token is not None else self.tokens.token()
        return client

    def read(self, path: str) -> dict[str, Any] | None:
        """The secret's data at path; None when there is none (or it was deleted)."""

        def read_as(token: str) -> Any:
            return self.client(token).secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.mount, raise_on_deleted_version=True)

        try:
            token = self.tokens.token()
            try:
                response = read_as(token)
            except hvac.exceptions.Forbidden:
                response = read_as(self._after_forbidden(token, path))
        except hvac.exceptions.InvalidPath:
            return None
        except (*_VAULT_ERRORS, ValueError) as exc:
            raise VaultUnavailable(f"vault read failed: {type(exc).__name__}") from None
        data: Any = ((response or {}).get("data") or {}).get("data")
        return data if isinstance(data, dict) else None

    def read_with_version(self, path: str) -> tuple[dict[str, Any] | None, int]:
        """The secret's data and its current version (None, 0 when there is none): the
        version to pass as `cas` to write() for a read-modify-write."""
        try:
            response = self.client().secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.mount, raise_on_deleted_version=True)
        except hvac.exceptions.InvalidPath:
            return None, 0
        except (*_VAULT_ERRORS, ValueError) as exc:
            raise VaultUnavailable(f"vault read failed: {type(exc).__name__}") from None
        body = (response or {}).get("data") or {}
        data = body.get("data")
        version = int((body.get("metadata") or {}).get("version") or 0)
        return (data if isinstance(data, dict) else None), version

    def _after_forbidden(self, token: str, path: str) -> str:
        """Vault refused `token` on path: the token to retry with, or VaultForbidden when
        the token is fine and the policy is not."""
        current = self.tokens.token()
        if current != token:
            return current  # replaced meanwhile (renewal, another thread's login)
        if self._token_alive(token):
            raise VaultForbidden(f"vault policy denies read on {self.mount}/data/{path}")
        if self.tokens.refresh():
            return self.tokens.token()
        raise VaultUnavailable("vault token rejected (expired or revoked)")

    def _token_alive(self, token: str) -> bool:
        try:
            self.client(token).auth.token.lookup_self()
        except hvac.exceptions.Forbidden:
            return False
        except (*_VAULT_ERRORS, ValueError) as exc:
            raise VaultUnavailable(f"vault token lookup failed: {type(exc).__name__}") from None
        return True

    def write(self, path: str, data: dict[str, Any], *, create_only: bool = False,
              cas: int | None = None) -> int | None:
        """Create or replace the secret at path; its new version. With create_only, a
        secret that already exists is left alone and None is returned (check-and-set);
        with cas=N, the write happens only if the current version is still N (else
        None)."""
        if create_only:
            cas = 0
        try:
            response = self.client().secrets.kv.v2.create_or_update_secret(
                path=path, secret=data, mount_point=self.mount, cas=cas)
        except hvac.exceptions.InvalidRequest as exc:
            if cas is not None and "check-and-set" in str(exc):
                return None
            raise VaultUnavailable(f"vault write failed: {type(exc).__name__}") from None
        except _VAULT_ERRORS as exc:
            raise VaultUnavailable(f"vault write failed: {type(exc).__name__}") from None
        return int(((response or {}).get("data") or {}).get("version") or 0)

    def list(self, path: str) -> list[str]:
        try:
            response = self.client().secrets.kv.v2.list_secrets(path=path, mount_point=self.mount)
        except hvac.exceptions.InvalidPath:
            return []
        except _VAULT_ERRORS as exc:
            raise VaultUnavailable(f"vault list failed: {type(exc).__name__}") from None
        keys = ((response or {}).get("data") or {}).get("keys") or []
        return [k for k in keys if isinstance(k, str)]

    def delete(self, path: str) -> None:
        """Remove every version of the secret at path."""
        try:
            self.client().secrets.kv.v2.delete_metadata_and_all_versions(
                path=path, mount_point=self.mount)
        except _VAULT_ERRORS as exc:
            raise VaultUnavailable(f"vault delete failed: {type(exc).__name__}") from None

    def ping(self) -> bool:
        try:
            return bool(self.client().sys.read_health_status(method="GET"))
        except Exception:
            return False


class VaultTenantStore:
    """Tenant keys in KV v2. The Vault token's lifecycle (renewal, login) belongs to its
    TokenProvider (vault_login.py); this store only starts and stops it."""

    def __init__(
        self,
        addr: str,
        token: str | TokenProvider,
        *,
        mount: str = "secret",
        path_template: str = "openai/clients/{client_id}",
        timeout_s: float = 5.0,
    ) -> None:
        self._kv = KvStore(addr, token, mount=mount, timeout_s=timeout_s)
        self._tokens = self._kv.tokens
        self._path_template = path_template
        self._change_log = log_path(path_template)

    def _changed(self, client_id: str) -> None:
        """Log the write (change_log.py) so the fast path re-reads just this tenant."""
        if self._change_log is not None:
            note_change(self._kv, self._change_log, client_id)

    def path_for(self, client_id: str) -> str:
        return self._path_template.format(client_id=validate_client_id(client_id))

    def read(self, client_id: str) -> TenantKey | None:
        """The tenant's key, None when it has none; VaultUnavailable when we cannot tell;
        TenantRecordInvalid when a value could not be sent as a header."""
        data = self._kv.read(self.path_for(client_id)) or {}
        api_key = data.get("api_key")
        if not isinstance(api_key, str) or not api_key.strip():
            return None
        organization = data.get("organization")
        project = data.get("project")
        key = TenantKey(
            api_key=api_key.strip(),
            organization=organization.strip() if isinstance(organization, str) and
            organization.strip() else None,
            project=project.strip() if isinstance(project, str) and project.strip() else None,
            policy=read_policy(data),
        )
        bad = key.invalid_field()
        if bad is not None:
            raise TenantRecordInvalid(
                f"tenant {client_id}: field {bad} holds characters not allowed in a header")
        return key

    def write(self, client_id: str, key: TenantKey) -> int:
        """Create or replace the tenant's secret; returns the new version. ValueError
        (naming the field, never the value) for a value that cannot be a header."""
        bad = key.invalid_field()
        if bad is not None:
            raise ValueError(f"{bad} must be printable ASCII without spaces or line breaks")
        secret: dict[str, Any] = {"api_key": key.api_key}
        if key.organization:
            secret["organization"] = key.organization
        if key.project:
            secret["project"] = key.project
        if key.policy is not None:
            secret["policy"] = policy_to_json(key.policy)
        version = self._kv.write(self.path_for(client_id), secret) or 0
        self._changed(client_id)
        return version

    def read_record(self, client_id: str) -> tuple[dict[str, Any] | None, int]:
        """The tenant's whole record, unparsed, and its version (for operator commands
        that must show or keep fields the relay would refuse, such as a broken policy)."""
        return self._kv.read_with_version(self.path_for(client_id))

    def update_record(self, client_id: str,
                      change: Callable[[dict[str, Any]], dict[str, Any]],
                      *, attempts: int = 5) -> int | None:
        """Read-modify-write of the tenant's record with KV v2 check-and-set: `change`
        gets a copy of the current record and returns the whole new one; if someone
        else wrote in between, it is re-read and `change` runs again. The record is
        replaced in one write, never half-written. None when the tenant has no record."""
        path = self.path_for(client_id)
        for _ in range(attempts):
            data, version = self._kv.read_with_version(path)
            if data is None:
                return None
            written = self._kv.write(path, change(dict(data)), cas=version)
            if written is not None:
                self._changed(client_id)
                return written
        raise VaultUnavailable("tenant record kept changing: try again")

    def delete(self, client_id: str) -> bool:
        """Remove every version of the tenant's secret; False if there was none."""
        if self.read_record(client_id)[0] is None:
            return False
        self._kv.delete(self.path_for(client_id))
        self._changed(client_id)
        return True

    def start_token_renewal(self) -> None:
        """Keep the token valid in the background (its provider's job; idempotent)."""
        self._tokens.start()

    async def stop_token_renewal(self) -> None:
        """Stop renewal and give a login token back. Joining the renewal thread and the
        revoke call block, so they run in a worker thread, never on the event loop."""
        await asyncio.to_thread(self._tokens.close)

    def ping(self) -> bool:
        return self._kv.ping()
