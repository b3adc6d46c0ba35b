"""`authz tenant put|rotate|show|delete CLIENT_ID` and `authz tenant list`: a tenant's
OpenAI key in Vault; `authz tenant policy set|show|clear CLIENT_ID`: its governance policy.

Every change is a read-modify-write of the whole record with KV v2 check-and-set, so no
field is lost to a concurrent writer and nothing is half-written. `put` and `rotate`
keep the tenant's policy (`put --policy` replaces it); a policy is validated before
anything is written (exit 2, the message names the field).

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
import sys
from typing import Any

from authz.cli.common import (
    UsageError,
    client_key_store,
    fail,
    operator_settings,
    read_policy,
    require_vault,
    tenant_store,
)
from authz.errors import RelayError, TenantRecordInvalid
from authz.governance.policy import PolicyError, parse_policy, policy_to_json
from authz.settings import Settings
from authz.tenants.client_id import validate_client_id
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
        own = put.add_mutually_exclusive_group()
        own.add_argument("--policy", help="the tenant's governance policy (JSON); "
                                          "default: keep the one it has")
        own.add_argument("--policy-file", help="read the policy from this JSON file")
    actions.add_parser("list", help="list every tenant (keys masked)")
    for name, text in (("show", "show a tenant (the key masked)"), ("delete", "remove a tenant")):
        action = actions.add_parser(name, help=text)
        action.add_argument("client_id")
    for action in actions.choices.values():
        action.add_argument("--json", action="store_true", help="machine-readable output")
    policy = actions.add_parser("policy", help="set, show or clear a tenant's policy")
    policy_actions = policy.add_subparsers(dest="policy_action", required=True)
    set_policy = policy_actions.add_parser("set", help="validate and store a policy")
    set_policy.add_argument("client_id")
    source = set_policy.add_mutually_exclusive_group(required=True)
    source.add_argument("policy", nargs="?", help="the policy as JSON")
    source.add_argument("--file", help="read the policy from this JSON file")
    for name, text in (("show", "print the tenant's policy (or the default it gets)"),
                       ("clear", "remove the policy: the tenant gets AUTHZ_DEFAULT_POLICY")):
        policy_actions.add_parser(name, help=text).add_argument("client_id")
    for action in policy_actions.choices.values():
        action.add_argument("--json", action="store_true", help="machine-readable output")
    tenant.set_defaults(handler=run)


def _store(settings: Settings) -> VaultTenantStore:
    try:
        require_vault(settings)
    except UsageError as exc:
        raise SystemExit(_fail(str(exc), EXIT_USAGE)) from None
    return tenant_store(settings)


def _settings() -> Settings:
    try:
        return operator_settings("settings")
    except UsageError as exc:
        raise SystemExit(_fail(str(exc), EXIT_USAGE)) from None


def _fail(message: str, code: int) -> int:
    return fail("authz tenant", message, code)


def _read_key(args: argparse.Namespace, settings: Settings) -> str:
    """The new key from --api-key, stdin or OPENAI_API_KEY; ValueError (naming the field,
    never the value) when it, --organization or --project cannot be a header value."""
    if args.api_key:
        api_key = str(args.api_key).strip()
    elif args.stdin:
        api_key = sys.stdin.readline().strip()
    else:
        api_key = settings.openai_api_key
    bad = TenantKey(api_key, args.organization, args.project).invalid_field()
    if api_key and bad is not None:
        raise ValueError(f"{bad} must be printable ASCII without spaces or line breaks")
    return api_key


def _policy_view(record: dict[str, Any]) -> Any:
    """The record's policy for display: its JSON, None, or why the relay refuses it."""
    raw = record.get("policy")
    if raw is None or raw == "":
        return None
    try:
        return policy_to_json(parse_policy(raw))
    except PolicyError as exc:
        return {"invalid": str(exc)}


def _api_key_of(record: dict[str, Any] | None) -> str | None:
    api_key = (record or {}).get("api_key")
    return api_key.strip() if isinstance(api_key, str) and api_key.strip() else None


def run(args: argparse.Namespace) -> int:
    settings = _settings()
    if args.action == "list":
        return _list(args, settings)
    try:
        client_id = validate_client_id(args.client_id)
        if args.action == "policy":
            return _policy(args, client_id, settings)
        new_policy = read_policy(getattr(args, "policy", None),
                                          getattr(args, "policy_file", None))
    except ValueError as exc:  # a bad client id, or a PolicyError naming the field
        return _fail(str(exc), EXIT_USAGE)
    store = _store(settings)
    try:
        if args.action == "rotate":
            api_key = _read_key(args, settings)
            if not api_key:
                return _fail("no key given: set OPENAI_API_KEY, or use --stdin", EXIT_USAGE)
            previous: list[str] = []

            def rotate(record: dict[str, Any]) -> dict[str, Any]:
                previous[:] = [_api_key_of(record) or ""]
                if previous[0] == api_key:
                    raise ValueError("the new key is the key already stored")
                record["api_key"] = api_key
                for name in ("organization", "project"):
                    if getattr(args, name):
                        record[name] = getattr(args, name)
                if new_policy is not None:
                    record["policy"] = policy_to_json(new_policy)
                return record

            try:
                version = store.update_record(client_id, rotate)
            except ValueError as exc:
                return _fail(str(exc), EXIT_USAGE)
            if version is None or not previous[0]:
                return _fail(f"no tenant {client_id!r} (use put to create it)", EXIT_NOT_FOUND)
            result = {"client_id": client_id, "version": version, "api_key": mask(api_key),
                      "previous": mask(previous[0])}
            text = (f"tenant {client_id}: key {mask(previous[0])} replaced by "
                    f"{mask(api_key)} (version {version}); the relay uses it within "
                    "AUTHZ_KEY_CACHE_TTL (300s by default)")
        elif args.action == "put":
            api_key = _read_key(args, settings)
            if not api_key:
                return _fail("no key given: set OPENAI_API_KEY, or use --stdin", EXIT_USAGE)
            fresh: dict[str, Any] = {"api_key": api_key}
            if args.organization:
                fresh["organization"] = args.organization
            if args.project:
                fresh["project"] = args.project
            if new_policy is not None:
                fresh["policy"] = policy_to_json(new_policy)

            def put(record: dict[str, Any]) -> dict[str, Any]:
                # Replace the key (and organization/project), keep the policy: losing
                # it by re-running put would silently widen what the tenant may do.
                if new_policy is None and "policy" in record:
                    return {**fresh, "policy": record["policy"]}
                return dict(fresh)

            version = store.update_record(client_id, put)
            if version is None:
                version = store.write(client_id, TenantKey(api_key, args.organization,
                                                           args.project, new_policy))
            result = {"client_id": client_id, "version": version, "api_key": mask(api_key)}
            text = f"tenant {client_id}: key {mask(api_key)} stored (version {version})"
        elif args.action == "show":
            record, _ = store.read_record(client_id)
            stored_key = _api_key_of(record)
            if record is None or stored_key is None:
                return _fail(f"no tenant {client_id!r}", EXIT_NOT_FOUND)
            result = {"client_id": client_id, "api_key": mask(stored_key),
                      "organization": record.get("organization"),
                      "project": record.get("project"), "policy": _policy_view(record)}
            text = "\n".join(
                f"{name}: {json.dumps(value) if name == 'policy' else value}"
                for name, value in result.items() if value is not None)
        else:
            if not store.delete(client_id):
                return _fail(f"no tenant {client_id!r}", EXIT_NOT_FOUND)
            revoked = client_key_store(settings).revoke_all(client_id)
            result = {"client_id": client_id, "deleted": True, "client_keys_revoked": revoked}
            text = f"tenant {client_id}: deleted ({revoked} client key(s) revoked)"
    except TenantRecordInvalid as exc:  # names the field, never the value
        return _fail(f"{exc.log_detail}: put a clean value", EXIT_VAULT)
    except RelayError as exc:
        return _fail(f"Vault at {settings.vault_addr} failed: {exc.log_detail}",
                     EXIT_VAULT)
    except ValueError as exc:  # a value that cannot become a header: refused, not stored
        return _fail(str(exc), EXIT_USAGE)
    print(json.dumps(result) if args.json else text)
    return EXIT_OK


def _policy(args: argparse.Namespace, client_id: str, settings: Settings) -> int:
    """`tenant policy set|show|clear`: never prints or changes anything but the policy."""
    action = args.policy_action
    # Validated before Vault is even asked: a bad policy changes nothing (exit 2).
    policy = read_policy(args.policy, args.file) if action == "set" else None
    store = _store(settings)
    try:
        if action == "show":
            record, _ = store.read_record(client_id)
            if record is None:
                return _fail(f"no tenant {client_id!r}", EXIT_NOT_FOUND)
            view = _policy_view(record)
            result: Any = {"client_id": client_id, "policy": view,
                           "default": view is None}
            text = (json.dumps(view, indent=2) if view is not None else
                    "(none: the tenant gets AUTHZ_DEFAULT_POLICY)")
        else:
            def change(record: dict[str, Any]) -> dict[str, Any]:
                if policy is None:
                    record.pop("policy", None)
                else:
                    record["policy"] = policy_to_json(policy)
                return record

            version = store.update_record(client_id, change)
            if version is None:
                return _fail(f"no tenant {client_id!r} (authz tenant put {client_id} first)",
                             EXIT_NOT_FOUND)
            result = {"client_id": client_id, "version": version,
                      "policy": policy_to_json(policy) if policy is not None else None}
            text = (f"tenant {client_id}: policy {'set' if policy else 'cleared'} "
                    f"(version {version}); the relay applies it within "
                    "AUTHZ_KEY_CACHE_TTL (300s by default)")
    except RelayError as exc:
        return _fail(f"Vault at {settings.vault_addr} failed: {exc.log_detail}",
                     EXIT_VAULT)
    print(json.dumps(result) if args.json else text)
    return EXIT_OK


def _list(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(settings)
    keys = client_key_store(settings)
    try:
        tenants = []
        for client_id in keys.list_tenants():
            record, _ = store.read_record(client_id)
            api_key = _api_key_of(record)
            if record is not None and api_key is not None:
                tenants.append({"client_id": client_id, "api_key": mask(api_key),
                                "organization": record.get("organization"),
                                "project": record.get("project")})
    except RelayError as exc:
        return _fail(f"Vault at {settings.vault_addr} failed: {exc.log_detail}",
                     EXIT_VAULT)
    if args.json:
        print(json.dumps(tenants))
    else:
        for tenant in tenants:
            print("  ".join(str(v) for v in tenant.values() if v is not None))
    return EXIT_OK
