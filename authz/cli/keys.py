"""`authz keys issue|list|revoke CLIENT_ID`: relay-issued client keys (`rk_…`).

    authz keys issue acme [--expires-in 90d] [--name ci]   the key on stdout, shown once
        [--policy JSON | --policy-file F]                  the key's own, narrower policy
    authz keys list acme                                     id, hint, status, expiry
    authz keys revoke acme ck_0123456789ab | --all           stops working within
                                                             AUTHZ_CLIENT_KEY_CACHE_TTL

Exit codes: 0 done, 1 no such tenant or key, 2 bad usage or client id, 3 Vault
unreachable or refused. `--json` prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
from authz.errors import ConfigError, RelayError
from authz.governance.policy import policy_to_json
from authz.settings import parse_duration
from authz.tenants.client_id import validate_client_id
from authz.tenants.client_key_store import KeyInfo

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_VAULT = 0, 1, 2, 3


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = subparsers.add_parser("keys", help="relay-issued client keys (rk_...) of a tenant")
    actions = keys.add_subparsers(dest="action", required=True)
    issue = actions.add_parser("issue", help="issue a new key (printed once, never stored)")
    issue.add_argument("client_id")
    issue.add_argument("--expires-in", help="lifetime, e.g. 90d, 12h, 30m (default: never)")
    issue.add_argument("--name", help="a label shown by list (e.g. the script using it)")
    own = issue.add_mutually_exclusive_group()
    own.add_argument("--policy", help=(
        "the key's own policy (JSON, as for a tenant): a request must be allowed by it "
        "and by the tenant's; limits are the tighter of each"))
    own.add_argument("--policy-file", help="read the key's own policy from this JSON file")
    listing = actions.add_parser("list", help="list a tenant's keys (never the keys)")
    listing.add_argument("client_id")
    revoke = actions.add_parser("revoke", help="revoke a key, or every key of a tenant")
    revoke.add_argument("client_id")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("key_id", nargs="?", help="the key's id (ck_...), from list")
    which.add_argument("--all", action="store_true", help="every key of the tenant")
    for action in actions.choices.values():
        action.add_argument("--json", action="store_true", help="machine-readable output")
    keys.set_defaults(handler=run)


def _fail(message: str, code: int) -> int:
    return fail("authz keys", message, code)


def parse_lifetime(raw: str) -> float:
    text = raw.strip()
    seconds = (float(text[:-1]) * 86400 if text.endswith("d") and text[:-1].replace(
        ".", "", 1).isdigit() else parse_duration("--expires-in", text))
    if seconds <= 0:
        raise ConfigError("--expires-in must be positive")
    return seconds


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _info(info: KeyInfo, now: float) -> dict[str, Any]:
    return {"client_id": info.client_id, "key_id": info.key_id, "hint": info.hint,
            "name": info.name, "status": info.status(now), "created_at": _when(info.created_at),
            "expires_at": _when(info.expires_at) if info.expires_at else None,
            "revoked_at": _when(info.revoked_at) if info.revoked_at else None}


def run(args: argparse.Namespace) -> int:
    try:
        client_id = validate_client_id(args.client_id)
        lifetime = parse_lifetime(args.expires_in) if getattr(args, "expires_in", None) else None
        policy = read_policy(getattr(args, "policy", None),
                                    getattr(args, "policy_file", None))
    except (ValueError, ConfigError) as exc:  # PolicyError is a ValueError
        return _fail(str(exc), EXIT_USAGE)
    try:
        settings = operator_settings("settings")
        require_vault(settings)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    store = client_key_store(settings)
    tenants = tenant_store(settings)
    now = time.time()
    try:
        if tenants.read(client_id) is None:
            return _fail(f"no tenant {client_id!r} (authz tenant put {client_id} first)",
                         EXIT_NOT_FOUND)
        if args.action == "issue":
            issued = store.issue(client_id, expires_at=now + lifetime if lifetime else None,
                                 name=args.name, policy=policy)
            result: Any = {"client_id": client_id, "key_id": issued.key_id, "key": issued.key,
                           "hint": issued.hint, "expires_at": _when(issued.expires_at)
                           if issued.expires_at else None}
            if policy is not None:
                result["policy"] = policy_to_json(policy)
            print(f"authz keys: issued {issued.key_id} for tenant {client_id} (expires "
                  f"{_when(issued.expires_at)}). It is shown this once: store it now.",
                  file=sys.stderr)
            text = issued.key
        elif args.action == "list":
            result = [_info(info, now) for info in store.list_keys(client_id)]
            text = "\n".join(
                f"{r['key_id']}  {r['hint']}  {r['status']:<7}  "
                f"expires {r['expires_at'] or 'never'}"
                + (f"  {r['name']}" if r["name"] else "") for r in result) or "(no keys)"
        elif args.all:
            count = store.revoke_all(client_id)
            result = {"client_id": client_id, "revoked": count}
            text = f"tenant {client_id}: {count} key(s) revoked"
        else:
            info = store.revoke(client_id, args.key_id)
            if info is None:
                return _fail(f"tenant {client_id!r} has no key {args.key_id!r}", EXIT_NOT_FOUND)
            result = _info(info, now)
            text = (f"{info.key_id} revoked: the relay refuses it within "
                    "AUTHZ_CLIENT_KEY_CACHE_TTL (30s by default)")
    except RelayError as exc:  # Vault unreachable, or a record the relay would refuse
        return _fail(f"Vault at {settings.vault_addr} failed: {exc.log_detail}",
                     EXIT_VAULT)
    print(json.dumps(result) if args.json else text)
    return EXIT_OK
