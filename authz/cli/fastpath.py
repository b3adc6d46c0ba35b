"""`authz fastpath status [--json] [--grpc HOST:PORT]`: what the fast path's control
plane last pushed to Envoy (the Admin API's GetFastPathStatus, on AUTHZ_GRPC_ADDR).

Exit codes: 0 shown (the fast path on, Envoy connected), 1 the fast path is off or no
Envoy is connected, 2 bad usage, 3 the service could not be reached.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from authz.cli.common import UsageError, default_grpc_addr, fail

EXIT_OK, EXIT_NOT_SERVING, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fastpath = subparsers.add_parser("fastpath", help="the fast path's state (AUTHZ_FAST_PATH)")
    actions = fastpath.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="what was last pushed to Envoy")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--grpc", help="HOST:PORT of an authz service's gRPC port "
                                       "(default: $AUTHZ_GRPC_ADDR or 127.0.0.1:9001)")
    status.set_defaults(handler=run)


def report(status: Any) -> dict[str, Any]:
    return {"enabled": status.enabled, "version": status.version, "pushes": status.pushes,
            "envoy_streams": status.envoy_streams, "tenants": status.tenants,
            "budgets_used_up": status.budgets_used_up,
            "issuer_keys": dict(sorted(status.issuer_keys.items())),
            "config_bytes": status.config_bytes, "updated_at_ms": status.updated_at_ms,
            "vault_failing": status.vault_failing}


def render(found: dict[str, Any]) -> str:
    if not found["enabled"]:
        return "fast path: off (AUTHZ_FAST_PATH=off): every request goes to ext_authz"
    updated = (dt.datetime.fromtimestamp(found["updated_at_ms"] / 1000, dt.UTC)
               .strftime("%Y-%m-%d %H:%M:%S UTC") if found["updated_at_ms"] else "never")
    keys = ", ".join(f"{name} {count}" for name, count in found["issuer_keys"].items())
    lines = [
        f"fast path: on, config version {found['version']} (updated {updated})",
        f"  envoy streams   {found['envoy_streams']}"
        + ("" if found["envoy_streams"] else "  (none: after the lease every request goes "
                                             "to ext_authz)"),
        f"  tenants         {found['tenants']}",
        f"  budgets used up {found['budgets_used_up']}",
        f"  issuer keys     {keys or 'none'}",
        f"  config          {found['config_bytes']} bytes, {found['pushes']} pushes",
    ]
    if found["vault_failing"]:
        lines.append("  vault           failing: the last tenant table read is served")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import grpc

    from authz.api.openai_relay.admin.v1 import admin_pb2, admin_pb2_grpc

    try:
        target = args.grpc or default_grpc_addr("authz fastpath")
    except UsageError as exc:
        return fail("authz fastpath", str(exc).removeprefix("authz fastpath: "), EXIT_USAGE)
    try:
        with grpc.insecure_channel(target) as channel:
            status = admin_pb2_grpc.AdminStub(channel).GetFastPathStatus(
                admin_pb2.GetFastPathStatusRequest(), timeout=5)
    except grpc.RpcError as exc:
        return fail("authz fastpath", f"cannot read the fast path's state from {target}: "
                    f"{exc.details() or exc.code().name}", EXIT_UNREACHABLE)
    found = report(status)
    print(json.dumps(found) if args.json else render(found))
    return EXIT_OK if found["enabled"] and found["envoy_streams"] else EXIT_NOT_SERVING
