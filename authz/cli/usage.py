"""`authz usage show CLIENT_ID [--user U] [--json] [--admin HOST:PORT]`: today's usage.

Reads GET /admin/usage of a running authz service (its AUTHZ_METRICS_ADDR port). With
AUTHZ_REDIS_URL set any replica answers for all of them; without it, for itself.

Exit codes: 0 shown, 2 bad usage or client id, 3 the service could not be reached.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from authz.cli.common import UsageError, default_admin_addr, fail
from authz.tenants.client_id import validate_client_id

EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE = 0, 2, 3


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = subparsers.add_parser("usage", help="today's metered usage of a tenant")
    actions = usage.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="requests and tokens of the current UTC day")
    show.add_argument("client_id")
    show.add_argument("--user", help="only this user (a Firebase uid or a client key id)")
    show.add_argument("--json", action="store_true", help="the /admin/usage JSON document")
    show.add_argument("--admin", help="HOST:PORT of an authz admin port (default: "
                                      "$AUTHZ_METRICS_ADDR or 127.0.0.1:9464)")
    usage.set_defaults(handler=run)


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
