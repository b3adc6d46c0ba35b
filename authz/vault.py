"""Tenant secrets in Vault (or OpenBao) KV v2, through hvac.

One secret per tenant at <mount>/<path with {client_id}>, field `api_key` and optional
`organization` and `project`. hvac is synchronous: the service calls `read` from a worker
thread, never on the event loop. Every hvac or transport failure becomes
VaultUnavailable, whose message never holds the token or a secret value.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import hvac
import hvac.exceptions
import requests

from authz.client_id import validate_client_id
from authz.errors import VaultUnavailable


@dataclass(frozen=True)
class TenantKey:
    api_key: str = field(repr=False)
    organization: str | None = None
    project: str | None = None


def mask(secret: str) -> str:
    """Enough of a key to recognise it, never enough to use it."""
    if len(secret) <= 12:
        return "…" + "*" * min(len(secret), 4)
    return f"{secret[:3]}…{secret[-4:]}"


class VaultTenantStore:
    def __init__(
        self,
        addr: str,
        token: str,
        *,
        mount: str = "secret",
        path_template: str = "openai/clients/{client_id}",
        timeout_s: float = 5.0,
    ) -> None:
        self._addr = addr
        self._token = token
        self._mount = mount
        self._path_template = path_template
        self._timeout_s = timeout_s
        # requests.Session is not documented as thread-safe: one client per thread.
        self._local = threading.local()

    def _client(self) -> hvac.Client:
        client: hvac.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = hvac.Client(url=self._addr, token=self._token, timeout=self._timeout_s)
            self._local.client = client
        return client

    def path_for(self, client_id: str) -> str:
        return self._path_template.format(client_id=validate_client_id(client_id))

    def read(self, client_id: str) -> TenantKey | None:
        """The tenant's key, None when it has none; VaultUnavailable when we cannot tell."""
        path = self.path_for(client_id)
        try:
            response = self._client().secrets.kv.v2.read_secret_version(
                path=path, mount_point=self._mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            return None
        except (hvac.exceptions.VaultError, requests.RequestException, ValueError) as exc:
            raise VaultUnavailable(f"vault read failed: {type(exc).__name__}") from None
        data: Any = ((response or {}).get("data") or {}).get("data") or {}
        api_key = data.get("api_key")
        if not isinstance(api_key, str) or not api_key.strip():
            return None
        organization = data.get("organization")
        project = data.get("project")
        return TenantKey(
            api_key=api_key.strip(),
            organization=organization.strip() if isinstance(organization, str) and
            organization.strip() else None,
            project=project.strip() if isinstance(project, str) and project.strip() else None,
        )

    def write(self, client_id: str, key: TenantKey) -> int:
        """Create or replace the tenant's secret; returns the new version."""
        secret = {"api_key": key.api_key}
        if key.organization:
            secret["organization"] = key.organization
        if key.project:
            secret["project"] = key.project
        try:
            response = self._client().secrets.kv.v2.create_or_update_secret(
                path=self.path_for(client_id), secret=secret, mount_point=self._mount
            )
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise VaultUnavailable(f"vault write failed: {type(exc).__name__}") from None
        return int(response["data"]["version"])

    def delete(self, client_id: str) -> bool:
        """Remove every version of the tenant's secret; False if there was none."""
        if self.read(client_id) is None:
            return False
        try:
            self._client().secrets.kv.v2.delete_metadata_and_all_versions(
                path=self.path_for(client_id), mount_point=self._mount
            )
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise VaultUnavailable(f"vault delete failed: {type(exc).__name__}") from None
        return True

    def ping(self) -> bool:
        try:
            return bool(self._client().sys.read_health_status(method="GET"))
        except Exception:
            return False
