"""Which tenants the fast path serves, and with what: read from Vault (KV v2).

The tenants are the Vault KV list under AUTHZ_VAULT_PATH's parent (as `authz tenant
list` finds them); each record is read as the authz service reads it (api_key,
organization, project, stripped; its policy, or AUTHZ_DEFAULT_POLICY when it has none).
A tenant is served only while Envoy can do for it everything the authz service would:
endpoint rules, the model allow-list and token budgets (governance_lua.py), but not
request-rate or concurrency limits, which need a count per request. Any other tenant
(so limited, or with a record the service would refuse) is left out, and so stays on
ext_authz.
"""

from __future__ import annotations

from typing import Any

from authz.fastpath.resources import FastTenant
from authz.governance.policy import ALLOW_ALL, Policy, PolicyError, parse_policy
from authz.tenants.client_id import is_valid_client_id
from authz.tenants.vault import KvStore, TenantKey


def served_policy(policy: Any, default: Policy = ALLOW_ALL) -> Policy | None:
    """The policy Envoy enforces for a record's policy (None or empty: the record has
    none, so the default applies): ALLOW_ALL, or a policy with no request-rate or
    concurrency limit. None when the tenant must stay on ext_authz: it has such a limit,
    or a policy that does not parse (the service answers 500 for it)."""
    if policy is None or policy == "":
        parsed = default
    else:
        try:
            parsed = parse_policy(policy)
        except PolicyError:
            return None
    limits = parsed.limits
    if (limits.user_requests_per_minute is not None
            or limits.tenant_requests_per_minute is not None
            or limits.user_concurrent_requests is not None):
        return None
    return parsed


def tenant_from_record(client_id: str, data: dict[str, Any] | None, *,
                       default_policy: Policy = ALLOW_ALL) -> FastTenant | None:
    """The fast path's view of one tenant record; None when it must stay on ext_authz."""
    if data is None or not is_valid_client_id(client_id):
        return None
    api_key = data.get("api_key")
    if not isinstance(api_key, str) or not api_key.strip():
        return None
    policy = served_policy(data.get("policy"), default_policy)
    if policy is None:
        return None

    def optional(name: str) -> str | None:
        value = data.get(name)
        return value.strip() if isinstance(value, str) and value.strip() else None

    key = TenantKey(api_key.strip(), optional("organization"), optional("project"))
    # A value that cannot be a header stays on ext_authz, which refuses it (500).
    if key.invalid_field() is not None:
        return None
    return FastTenant(client_id, key.api_key, key.organization, key.project,
                      None if policy == ALLOW_ALL else policy)


class TenantSource:
    """Lists and reads the tenants (blocking: called from a worker thread)."""

    def __init__(self, kv: KvStore, path_template: str, *,
                 default_policy: Policy = ALLOW_ALL) -> None:
        parent, _, leaf = path_template.rpartition("/")
        if leaf != "{client_id}" or "{client_id}" in parent:
            raise ValueError("AUTHZ_VAULT_PATH must end in /{client_id} to list tenants")
        self._kv = kv
        self._parent = parent
        self._template = path_template
        self._default_policy = default_policy

    def read_all(self) -> list[FastTenant]:
        """Every servable tenant; VaultUnavailable when Vault cannot be read.

        One list and one read per tenant, every poll: measured here, 1,000 tenants take
        about 1 s against an OpenBao dev server (8 readers in parallel were no faster on
        2 cores), so beyond some hundreds of tenants a change takes longer than 2 s to
        reach Envoy. Change detection instead of full reads is left to do.
        """
        names = sorted({name.rstrip("/") for name in self._kv.list(self._parent)})
        tenants = []
        for name in names:
            if not is_valid_client_id(name):
                continue
            tenant = tenant_from_record(
                name, self._kv.read(self._template.format(client_id=name)),
                default_policy=self._default_policy)
            if tenant is not None:
                tenants.append(tenant)
        return tenants
