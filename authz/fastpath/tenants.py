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

import time
from collections.abc import Callable
from typing import Any

from authz.fastpath.resources import FastTenant
from authz.governance.policy import ALLOW_ALL, Policy, PolicyError, parse_policy
from authz.tenants.change_log import log_path, read_changes
from authz.tenants.client_id import is_valid_client_id, tenant_folder
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
    return None if parsed.limits.counts_requests else parsed


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


#: A full read quicker than this is repeated every poll (small deployments: a raw write
#: to Vault is seen within a poll); a slower one every FULL_READ_EVERY_S at most.
QUICK_FULL_READ_S = 0.25
FULL_READ_EVERY_S = 30.0


class TenantSource:
    """Lists and reads the tenants (blocking: called from a worker thread).

    `refresh` keeps the tenant set current without reading every record on every poll:
    it reads the change log (change_log.py) and re-reads only the tenants written since
    the last poll, plus any named by `authz cache invalidate`. Everything is read again
    at the start, when the log cannot tell what changed, on `cache invalidate` without a
    tenant, and periodically (every poll while a full read is quick, else every
    FULL_READ_EVERY_S or ten full reads' time), for writes that bypass the log.
    Measured here (bench/fast_path_scale.py), a full read costs about 1 ms per tenant
    against an OpenBao dev server; the log read is one request.
    """

    def __init__(self, kv: KvStore, path_template: str, *,
                 default_policy: Policy = ALLOW_ALL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        parent, log = tenant_folder(path_template), log_path(path_template)
        if parent is None or log is None:
            raise ValueError("AUTHZ_VAULT_PATH must end in /{client_id} to list tenants")
        self._kv = kv
        self._parent = parent
        self._template = path_template
        self._log = log
        self._default_policy = default_policy
        self._clock = clock
        self._tenants: dict[str, FastTenant] = {}
        self._seen: int | None = None  # the log's seq at the last read; None: never read
        self._next_full_read = 0.0
        self.full_reads = 0
        self.tenants_read = 0

    def _read_one(self, client_id: str) -> FastTenant | None:
        self.tenants_read += 1
        return tenant_from_record(client_id, self._kv.read(self._template.format(
            client_id=client_id)), default_policy=self._default_policy)

    def read_all(self) -> list[FastTenant]:
        """Every servable tenant; VaultUnavailable when Vault cannot be read."""
        names = sorted({name.rstrip("/") for name in self._kv.list(self._parent)})
        tenants = []
        for name in names:
            if not is_valid_client_id(name):
                continue
            tenant = self._read_one(name)
            if tenant is not None:
                tenants.append(tenant)
        return tenants

    def refresh(self, named: frozenset[str] = frozenset(), everything: bool = False
                ) -> list[FastTenant]:
        """The current servable tenants (see the class doc); `named`: tenants to read
        again whatever the log says; VaultUnavailable when Vault cannot be read (the
        set held stays as it was)."""
        now = self._clock()
        changes = read_changes(self._kv, self._log)
        if changes.seq < 0:
            changed: frozenset[str] | None = frozenset()  # unreadable: periodic reads only
        else:
            changed = None if self._seen is None else changes.since(self._seen)
        if everything or changed is None or now >= self._next_full_read:
            started = self._clock()
            tenants = {t.client_id: t for t in self.read_all()}
            took = self._clock() - started
            self.full_reads += 1
            self._next_full_read = now + (0.0 if took < QUICK_FULL_READ_S
                                          else max(FULL_READ_EVERY_S, 10 * took))
        else:
            tenants = dict(self._tenants)
            for client_id in sorted(changed | named):
                if not is_valid_client_id(client_id):
                    continue
                tenant = self._read_one(client_id)
                if tenant is None:
                    tenants.pop(client_id, None)
                else:
                    tenants[client_id] = tenant
        self._tenants = tenants
        self._seen = max(changes.seq, 0)
        return [tenants[name] for name in sorted(tenants)]
