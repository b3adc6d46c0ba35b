"""What every operator command shares: the settings (loaded once, the same model `serve`
and `up` use) and the Vault stores built from them."""

from __future__ import annotations

import json
import sys

from authz.errors import ConfigError
from authz.governance.policy import Policy, PolicyError, parse_policy
from authz.settings import Settings, format_addr
from authz.tenants.client_key_store import VaultClientKeyStore, parse_pepper_source
from authz.tenants.vault import VaultTenantStore


class UsageError(Exception):
    """A bad setting or flag: the command prints it and exits with status 2."""


def operator_settings(prog: str) -> Settings:
    """The settings an operator command runs with; ConfigError → UsageError naming `prog`."""
    try:
        return Settings.from_env(serving=False)
    except ConfigError as exc:
        raise UsageError(f"{prog}: {exc}") from None


def default_admin_addr(prog: str) -> str:
    """HOST:PORT of the local authz admin port (AUTHZ_METRICS_ADDR), for commands whose
    --admin was not given; UsageError when it is off."""
    metrics = operator_settings(prog).metrics_addr
    if metrics is None:
        raise UsageError(f"{prog}: AUTHZ_METRICS_ADDR is off: name the admin address with --admin")
    return format_addr(metrics)


def default_grpc_addr(prog: str) -> str:
    """HOST:PORT of the local authz service's gRPC port (AUTHZ_GRPC_ADDR), where the
    Admin API answers, for commands whose --grpc was not given."""
    return format_addr(operator_settings(prog).grpc_addr)


def require_vault(settings: Settings) -> None:
    if not settings.vault_addr_given or not settings.vault_token:
        raise UsageError("VAULT_ADDR and VAULT_TOKEN must be set (authz up prints them)")


def tenant_store(settings: Settings) -> VaultTenantStore:
    return VaultTenantStore(settings.vault_addr, settings.vault_token,
                            mount=settings.vault_mount, path_template=settings.vault_path)


def client_key_store(settings: Settings) -> VaultClientKeyStore:
    return VaultClientKeyStore(
        settings.vault_addr, settings.vault_token, mount=settings.vault_mount,
        tenant_path=settings.vault_path, index_path=settings.client_key_index_path,
        pepper=parse_pepper_source("AUTHZ_CLIENT_KEY_PEPPER", settings.client_key_pepper),
    )


# Set once by main() from the command's --json flag: a script that asked for JSON gets
# its errors as JSON too, one object on stderr, instead of a line it cannot parse.
_json_errors = False


def read_policy(text: str | None, file: str | None) -> Policy | None:
    """A policy given as JSON text (--policy) or in a file (--policy-file, --file),
    validated (PolicyError names the field); None when neither is given."""
    if file:
        try:
            with open(file, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise PolicyError(f"cannot read {file}: {exc.strerror}") from None
    return None if text is None else parse_policy(text)


def use_json_errors(enabled: bool) -> None:
    global _json_errors
    _json_errors = enabled


def fail(prog: str, message: str, code: int) -> int:
    """Print an operator command's error (text, or JSON under --json) and return `code`,
    the exit status."""
    if _json_errors:
        print(json.dumps({"error": message, "command": prog, "exit_code": code}),
              file=sys.stderr)
    else:
        print(f"{prog}: {message}", file=sys.stderr)
    return code
