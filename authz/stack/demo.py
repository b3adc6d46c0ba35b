"""`authz up --demo`: the first minute, with no Firebase project.

Before the stack starts: OPENAI_API_KEY must be set; when no Firebase project and no OIDC
issuer is configured, client keys are switched on explicitly (AUTHZ_CLIENT_KEYS=on) so the
service starts with client keys as its only way in. Once the stack is up: the tenant
`demo` gets OPENAI_API_KEY, a client key is issued for it, and a ready-to-paste curl line
and openai-SDK snippet that use it are printed.
"""

from __future__ import annotations

import shlex
from collections.abc import MutableMapping

from authz.settings import Settings
from authz.tenants.client_key_store import VaultClientKeyStore, parse_pepper_source
from authz.tenants.vault import TenantKey, VaultTenantStore, mask

DEMO_TENANT = "demo"
READY_LINE = "Demo ready: paste the lines above. Ctrl-C stops everything."


def prepare(env: MutableMapping[str, str]) -> str | None:
    """Adjust the environment for a demo stack; an error message when it cannot run."""
    if not env.get("OPENAI_API_KEY", "").strip():
        return ("--demo needs OPENAI_API_KEY: the demo tenant's OpenAI key "
                "(OPENAI_API_KEY=sk-... authz up --demo)")
    if (not env.get("AUTHZ_FIREBASE_PROJECT_ID", "").strip()
            and not env.get("AUTHZ_OIDC_ISSUERS", "").strip()
            and not env.get("AUTHZ_CLIENT_KEYS", "").strip()):
        env["AUTHZ_CLIENT_KEYS"] = "on"
    return None


def create(settings: Settings, vault_addr: str, vault_token: str, relay_url: str,
           api_key: str, *, authz: str = "authz") -> str:
    """Store the demo tenant, issue its client key; the lines to print (`authz`: the
    command as the user's shell runs it, so the printed revoke line works as pasted)."""
    VaultTenantStore(vault_addr, vault_token, mount=settings.vault_mount,
                     path_template=settings.vault_path).write(DEMO_TENANT, TenantKey(api_key))
    issued = VaultClientKeyStore(
        vault_addr, vault_token, mount=settings.vault_mount, tenant_path=settings.vault_path,
        index_path=settings.client_key_index_path,
        pepper=parse_pepper_source("AUTHZ_CLIENT_KEY_PEPPER", settings.client_key_pepper),
    ).issue(DEMO_TENANT, name="authz up --demo")
    base = f"{relay_url}/api/openai/v1"
    body = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}'
    return "\n".join([
        "",
        f"Demo: tenant {DEMO_TENANT!r} holds your OPENAI_API_KEY ({mask(api_key)}); its client "
        f"key {issued.key_id} is shown this once",
        f"(revoke it, with the VAULT_ADDR and VAULT_TOKEN above: "
        f"{authz} keys revoke {DEMO_TENANT} {issued.key_id}).",
        "",
        "curl:",
        f"  curl {base}/chat/completions \\",
        f"    -H {shlex.quote('Authorization: Bearer ' + issued.key)} \\",
        "    -H 'Content-Type: application/json' \\",
        f"    -d {shlex.quote(body)}",
        "",
        "openai SDK (Python):",
        "  from openai import OpenAI",
        f"  client = OpenAI(base_url={base!r}, api_key={issued.key!r})",
        "  reply = client.chat.completions.create(",
        "      model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'Hello'}])",
        "  print(reply.choices[0].message.content)",
        "",
        READY_LINE,
    ])

