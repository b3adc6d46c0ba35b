"""`authz usage show CLIENT_ID [--user U] [--json] [--admin HOST:PORT]`: today's usage.
`authz usage watch [CLIENT_ID] [--json] [--count N] [--grpc HOST:PORT]`: every request
as it is metered.

`show` reads GET /admin/usage of a running authz service (its AUTHZ_METRICS_ADDR port).
With AUTHZ_REDIS_URL set any replica answers for all of them; without it, for itself.
`watch` follows the Admin API's WatchUsage (protos/, on AUTHZ_GRPC_ADDR): one line per
request that replica meters, until Ctrl-C or --count lines.

Exit codes: 0 shown, 2 bad usage or client id, 3 the service could not be reached,
4 the watch fell too far behind and was ended (events were missed).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from authz.cli.common import UsageError, default_admin_addr, default_grpc_addr, fail
from authz.tenants.client_id import validate_client_id

EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_MISSED = 0, 2, 3, 4


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = subparsers.add_parser("usage", help="today's metered usage of a tenant")
    actions = usage.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="requests and tokens of the current UTC day")
    show.add_argument("client_id")
    show.add_argument("--user", help="only this user (a Firebase uid or a client key id)")
    show.add_argument("--json", action="store_true", help="the /admin/usage JSON document")
    show.add_argument("--admin", help="HOST:PORT of an authz admin port (default: "
                                      "$AUTHZ_METRICS_ADDR or 127.0.0.1:9464)")
    show.set_defaults(handler=run)
    watch = actions.add_parser("watch", help="every request as it is metered (Admin API)")
    watch.add_argument("client_id", nargs="?", help="one tenant (default: all)")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    watch.add_argument("--count", type=int, help="stop after this many requests")
    watch.add_argument("--grpc", help="HOST:PORT of an authz service's gRPC port "
                                      "(default: $AUTHZ_GRPC_ADDR or 127.0.0.1:9001)")
    watch.set_defaults(handler=run_watch)


def fetch(admin: str, client_id: str, user: str | None) -> dict[str, Any]:
    query = {"client_id": client_id, **({"user": user} if user else {})}
    url = f"http://{admin}/admin/usage?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body: dict[str, Any] = json.load(response)
        return body


def render(report: dict[str, Any]) -> str:
    lines = [f"{report['client_id']}  {report['day']} (UTC)",
             f"  {'':24} {'requests':>10} {'input':>12} {'output':>12} {'total':>12}",
             _row("tenant", report)]
    for user, numbers in report.get("users", {}).items():
        lines.append(_row(user if len(user) <= 24 else user[:21] + "...", numbers))
    return "\n".join(lines)


def _row(name: str, n: dict[str, Any]) -> str:
    return (f"  {name:24} {n['requests']:>10} {n['input_tokens']:>12} "
            f"{n['output_tokens']:>12} {n['total_tokens']:>12}")


def run(args: argparse.Namespace) -> int:
    try:
        client_id = validate_client_id(args.client_id)
    except ValueError as exc:
        return fail("authz usage", str(exc), EXIT_USAGE)
    try:
        admin = args.admin or default_admin_addr("authz usage")
    except UsageError as exc:
        return fail("authz usage", str(exc).removeprefix("authz usage: "), EXIT_USAGE)
    try:
        report = fetch(admin, client_id, args.user)
    except urllib.error.HTTPError as exc:
        return fail("authz usage", f"{admin} answered {exc.code}",
                    EXIT_USAGE if exc.code == 400 else EXIT_UNREACHABLE)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return fail("authz usage", f"cannot read usage from {admin}: "
                    f"{getattr(exc, 'reason', exc)}", EXIT_UNREACHABLE)
    print(json.dumps(report) if args.json else render(report))
    return EXIT_OK


def run_watch(args: argparse.Namespace) -> int:
    # grpc and the generated stubs are loaded by this command only.
    import grpc

    from authz.api.openai_relay.admin.v1 import admin_pb2, admin_pb2_grpc

    try:
        client_id = validate_client_id(args.client_id) if args.client_id else ""
        if args.count is not None and args.count < 1:
            raise ValueError("--count must be at least 1")
        target = args.grpc or default_grpc_addr("authz usage")
    except (ValueError, UsageError) as exc:
        return fail("authz usage", str(exc).removeprefix("authz usage: "), EXIT_USAGE)
    shown = 0
    with grpc.insecure_channel(target) as channel:
        stream = admin_pb2_grpc.AdminStub(channel).WatchUsage(
            admin_pb2.WatchUsageRequest(client_id=client_id))
        try:
            stream.initial_metadata()  # the service has the watch in place
            print(f"authz usage: watching {client_id or 'every tenant'} on {target}",
                  file=sys.stderr, flush=True)
            for event in stream:
                print(json.dumps(_event(event)) if args.json else _event_line(event),
                      flush=True)
                shown += 1
                if args.count is not None and shown >= args.count:
                    stream.cancel()
                    break
        except KeyboardInterrupt:
            stream.cancel()
            return EXIT_OK
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.CANCELLED:
                return EXIT_OK
            detail = exc.details() or code.name
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return fail("authz usage", f"watch ended: {detail}", EXIT_MISSED)
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED):
                return fail("authz usage", f"{target} refused: {detail}", EXIT_USAGE)
            return fail("authz usage", f"cannot watch usage on {target}: {detail}",
                        EXIT_UNREACHABLE)
    return EXIT_OK


def _event(event: Any) -> dict[str, Any]:
    return {"client_id": event.client_id, "user": event.user, "day": event.day,
            "input_tokens": event.input_tokens, "output_tokens": event.output_tokens,
            "status": event.status, "metered_at_ms": event.metered_at_ms}


def _event_line(event: Any) -> str:
    return (f"{event.client_id}  {event.user}  status {event.status}  "
            f"input {event.input_tokens}  output {event.output_tokens}")
