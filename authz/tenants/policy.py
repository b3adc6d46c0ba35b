"""The Vault policy the relay's own token needs: read on exactly what it reads.

Tenant keys (AUTHZ_VAULT_PATH), and, while client keys are on (the default), the
client-key index (AUTHZ_CLIENT_KEY_INDEX_PATH) and a Vault-held pepper
(AUTHZ_CLIENT_KEY_PEPPER=vault:...). Nothing else: no list, no write, no metadata. Token
renewal and lookup (auth/token/renew-self, lookup-self) come with Vault's default policy.

The shipped policies (deploy/compose/vault-init.sh, the README's Kubernetes steps, the
containers suite) are this text for the default settings; a unit test keeps them equal.
"""

from __future__ import annotations

from authz.tenants.client_key_store import (
    DEFAULT_INDEX_PATH,
    DEFAULT_PEPPER,
    DEFAULT_TENANT_PATH,
    parse_pepper_source,
)


def relay_read_paths(
    *,
    mount: str = "secret",
    tenant_path: str = DEFAULT_TENANT_PATH,
    client_keys: bool = True,
    index_path: str = DEFAULT_INDEX_PATH,
    pepper: str = DEFAULT_PEPPER,
) -> list[str]:
    """The KV v2 API paths (mount/data/...) the relay reads, as policy globs."""
    paths = [f"{mount}/data/{tenant_path.replace('{client_id}', '*')}"]
    if client_keys:
        paths.append(f"{mount}/data/{index_path.rstrip('/')}/*")
        source = parse_pepper_source("AUTHZ_CLIENT_KEY_PEPPER", pepper)
        if source.kind == "vault":
            paths.append(f"{mount}/data/{source.path}")
    return paths


def relay_policy_hcl(**options: object) -> str:
    """The policy as HCL, one line per path (options as relay_read_paths')."""
    return "".join(f'path "{path}" {{ capabilities = ["read"] }}\n'
                   for path in relay_read_paths(**options))  # type: ignore[arg-type]
