"""`authz cache invalidate [CLIENT_ID]`: make running authz services forget what they cached
(tenant keys, verified identities, client-key records, Firebase user statuses) now.

For a leaked key: rotate it in Vault (`authz tenant put`/`rotate`), then invalidate, and
the very next request reads the new key instead of waiting out AUTHZ_KEY_CACHE_TTL.
Each --admin address is an authz service's metrics/admin port (AUTHZ_METRICS_ADDR);
the endpoint answers loopback peers only, so run this next to the service (in its pod).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

from authz.cli.common import UsageError, default_admin_addr, fail
from authz.edge.admin_http import ADMIN_HEADER
from authz.tenants.client_id import validate_client_id


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cache = subparsers.add_parser("cache", help="control running authz services' caches")
    actions = cache.add_subparsers(dest="action", required=True)
    invalidate = actions.add_parser("invalidate", help="forget cached tenant keys now")
    invalidate.add_argument("client_id", nargs="?", help="one tenant (default: all)")
    invalidate.add_argument(
        "--admin", action="append",
        help="HOST:PORT of an authz admin port; repeatable (default: $AUTHZ_METRICS_ADDR "
             "or 127.0.0.1:9464)",
    )
    invalidate.add_argument("--json", action="store_true", help="machine-readable output")
    cache.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    query = ""
    if args.client_id:
        try:
            query = "?" + urllib.parse.urlencode({"client_id": validate_client_id(args.client_id)})
        except ValueError as exc:
            return fail("authz cache", str(exc), 2)
    targets: list[str] = list(args.admin or [])
    if not targets:
        try:
            targets = [default_admin_addr("authz cache")]
        except UsageError as exc:
            return fail("authz cache", str(exc).removeprefix("authz cache: "), 2)
    failed = 0
    results = []
    for target in targets:
        url = f"http://{target}/admin/invalidate{query}"
        request = urllib.request.Request(url, method="POST", headers={ADMIN_HEADER: "1"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                results.append({"admin": target, "status": response.status})
        except (urllib.error.URLError, OSError) as exc:
            failed += 1
            results.append({"admin": target, "error": str(getattr(exc, "reason", exc))})
    if args.json:
        print(json.dumps(results))
    else:
        for result in results:
            what = args.client_id or "all tenants"
            if "error" in result:
                print(f"{result['admin']}: failed: {result['error']}", file=sys.stderr)
            else:
                print(f"{result['admin']}: invalidated {what}")
    return 3 if failed else 0
