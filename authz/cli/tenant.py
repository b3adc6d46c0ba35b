"""`authz tenant put|rotate|show|delete CLIENT_ID` and `authz tenant list`: a tenant's
OpenAI key in Vault.

`rotate` replaces the key of an existing tenant (keeping its organization and project
unless given); the relay serves the new key once its cached copy is older than
AUTHZ_KEY_CACHE_TTL (300 s by default), without a restart. `delete` also revokes the
tenant's relay-issued client keys.

Exit codes scripts can rely on: 0 done, 1 no such tenant, 2 bad usage or client id,
3 Vault unreachable or refused. `show` never prints a whole key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from authz.errors import TenantRecordInvalid, VaultUnavailable
from authz.tenants.client_id import validate_client_id
from authz.tenants.client_key_store import VaultClientKeyStore
from authz.tenants.vault import TenantKey, VaultTenantStore, mask

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_VAULT = 0, 1, 2, 3


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tenant = subparsers.add_parser("tenant", help="manage a tenant's OpenAI key in Vault")
    actions = tenant.add_subparsers(dest="action", required=True)
    for name, text in (("put", "create or replace a tenant's key"),
                       ("rotate", "replace the key of an existing tenant")):
        put = actions.add_parser(name, help=text)
        put.add_argument("client_id")
        source = put.add_mutually_exclusive_group()
        source.add_argument("--stdin", action="store_true",
                            help="read the key from standard input (default: $OPENAI_API_KEY)")
        source.add_argument("--api-key", help="the key itself (visible to other local users "
                                              "in the process list: prefer --stdin)")
        put.add_argument("--organization", help="sent upstream as OpenAI-Organization")
        put.add_argument("--project", help="sent upstream as OpenAI-Project")
    actions.add_parser("list", help="list every tenant (keys masked)")
    for name, text in (("show", "show a tenant (the key masked)"), ("delete", "remove a tenant")):
        action = actions.add_parser(name, help=text)
        action.add_argument("client_id")
    for action in actions.choices.values():
        action.add_argument("--json", action="store_true", help="machine-readable output")
    tenant.set_defaults(handler=run)


def _store() -> VaultTenantStore:
    addr, token = os.environ.get("VAULT_ADDR", ""), os.environ.get("VAULT_TOKEN", "")
    if not addr or not token:
        raise SystemExit(_fail("VAULT_ADDR and VAULT_TOKEN must be set (authz up prints them)",
                               EXIT_USAGE))
    return VaultTenantStore(
        addr, token,
        mount=os.environ.get("AUTHZ_VAULT_MOUNT") or "secret",
        path_template=os.environ.get("AUTHZ_VAULT_PATH") or "openai/clients/{client_id}",
    )


def _fail(message: str, code: int) -> int:
    print(f"authz tenant: {message}", file=sys.stderr)
    return code


def _read_key(args: argparse.Namespace) -> str:
    if args.api_key:
        return str(args.api_key).strip()
    if args.stdin:
        return sys.stdin.readline().strip()
    return os.environ.get("OPENAI_API_KEY", "").strip()


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list(args)
    try:
        client_id = validate_client_id(args.client_id)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    store = _store()
    try:
        if args.action == "rotate":
            current = store.read(client_id)
            if current is None:
                return _fail(f"no tenant {client_id!r} (use put to create it)", EXIT_NOT_FOUND)
            api_key = _read_key(args)
            if not api_key:
                return _fail("no key given: set OPENAI_API_KEY, or use --stdin", EXIT_USAGE)
            if api_key == current.api_key:
                return _fail("the new key is the key already stored", EXIT_USAGE)
            version = store.write(client_id, TenantKey(
                api_key, args.organization or current.organization,
                args.project or current.project))
            result = {"client_id": client_id, "version": version, "api_key": mask(api_key),
                      "previous": mask(current.api_key)}
            text = (f"tenant {client_id}: key {mask(current.api_key)} replaced by "
                    f"{mask(api_key)} (version {version}); the relay uses it within "
                    "AUTHZ_KEY_CACHE_TTL (300s by default)")
        elif args.action == "put":
            api_key = _read_key(args)
            if not api_key:
                return _fail("no key given: set OPENAI_API_KEY, or use --stdin", EXIT_USAGE)
            version = store.write(client_id, TenantKey(api_key, args.organization, args.project))
            result = {"client_id": client_id, "version": version, "api_key": mask(api_key)}
            text = f"tenant {client_id}: key {mask(api_key)} stored (version {version})"
        elif args.action == "show":
            key = store.read(client_id)
            if key is None:
                return _fail(f"no tenant {client_id!r}", EXIT_NOT_FOUND)
            result = {"client_id": client_id, "api_key": mask(key.api_key),
                      "organization": key.organization, "project": key.project}
            text = "\n".join(f"{name}: {value}" for name, value in result.items()
                             if value is not None)
        else:
            if not store.delete(client_id):
                return _fail(f"no tenant {client_id!r}", EXIT_NOT_FOUND)
            revoked = VaultClientKeyStore.from_env().revoke_all(client_id)
            result = {"client_id": client_id, "deleted": True, "client_keys_revoked": revoked}
            text = f"tenant {client_id}: deleted ({revoked} client key(s) revoked)"
    except VaultUnavailable as exc:
        return _fail(f"Vault at {os.environ.get('VAULT_ADDR')} failed: {exc.log_detail}",
                     EXIT_VAULT)
    except TenantRecordInvalid as exc:  # names the field, never the value
        return _fail(f"{exc.log_detail}: put a clean value", EXIT_VAULT)
    except ValueError as exc:  # a value that cannot become a header: refused, not stored
        return _fail(str(exc), EXIT_USAGE)
    print(json.dumps(result) if args.json else text)
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    store = _store()
    keys = VaultClientKeyStore.from_env()
    try:
        tenants = []
        for client_id in keys.list_tenants():
            key = store.read(client_id)
            if key is not None:
                tenants.append({"client_id": client_id, "api_key": mask(key.api_key),
                                "organization": key.organization, "project": key.project})
    except VaultUnavailable as exc:
        return _fail(f"Vault at {os.environ.get('VAULT_ADDR')} failed: {exc.log_detail}",
                     EXIT_VAULT)
    if args.json:
        print(json.dumps(tenants))
    else:
        for tenant in tenants:
            print("  ".join(str(v) for v in tenant.values() if v is not None))
    return EXIT_OK
