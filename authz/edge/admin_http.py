"""The authz service's HTTP side port: /metrics, /healthz, /readyz, and cache control.

It runs in its own thread so a scrape never competes with checks on the event loop.
Anything that changes state (POST /admin/...) is accepted from loopback peers only, and
only with the header `X-Relay-Admin: 1`: a browser on the same machine can send a
cross-site "simple" POST to loopback, but not one with a custom header (that needs a
CORS preflight, which this port never grants). Accepted requests are handed to the
event loop thread; reading (GET) is open to whoever can reach the port,
which is loopback by default (AUTHZ_METRICS_ADDR).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from authz.tenants.client_id import is_valid_client_id

log = logging.getLogger(__name__)

#: The header every state-changing admin request must carry (see the module docstring).
ADMIN_HEADER = "X-Relay-Admin"

# Returns a JSON-able readiness report with a boolean "ready".
ReadinessReport = Callable[[], dict[str, Any]]
# Forget cached keys, identities, client-key records and user statuses for one tenant,
# or all when None.
Invalidate = Callable[[str | None], None]
# Today's usage of one tenant (optionally one user): the /admin/usage body.
Usage = Callable[[str, str | None], dict[str, Any]]


class AdminServer:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        registry: CollectorRegistry,
        readiness: ReadinessReport,
        invalidate: Invalidate,
        usage: Usage | None = None,
    ) -> None:
        admin = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "authz"
            sys_version = ""

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._json(200, {"status": "live"})
                elif path == "/readyz":
                    report = readiness()
                    self._json(200 if report.get("ready") else 503, report)
                elif path == "/admin/usage" and usage is not None:
                    self._usage(parse_qs(urlsplit(self.path).query))
                else:
                    self._json(404, {"error": "Not found"})

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                if url.path != "/admin/invalidate":
                    self._json(404, {"error": "Not found"})
                    return
                if not ipaddress.ip_address(self.client_address[0]).is_loopback:
                    self._json(403, {"error": "admin endpoints answer loopback peers only"})
                    return
                if self.headers.get(ADMIN_HEADER) != "1":
                    self._json(403, {"error": f"admin requests need the header "
                                              f"{ADMIN_HEADER}: 1"})
                    return
                client_id = parse_qs(url.query).get("client_id", [None])[0]
                if client_id is not None and not is_valid_client_id(client_id):
                    self._json(400, {"error": "invalid client_id"})
                    return
                invalidate(client_id)
                log.info("cache invalidated", extra={"client_id": client_id or "*"})
                self._json(200, {"invalidated": client_id or "*"})

            def _usage(self, query: dict[str, list[str]]) -> None:
                client_id = query.get("client_id", [""])[0]
                user = query.get("user", [None])[0]
                if not is_valid_client_id(client_id):
                    self._json(400, {"error": "client_id is required and must be valid"})
                    return
                if user is not None and not 0 < len(user) <= 512:
                    self._json(400, {"error": "invalid user"})
                    return
                assert usage is not None
                try:
                    report = usage(client_id, user)
                except Exception:
                    log.exception("usage report failed", extra={"client_id": client_id})
                    self._json(503, {"error": "usage unavailable"})
                    return
                self._json(200, report)

            def _json(self, status: int, body: dict[str, Any]) -> None:
                self._send(status, json.dumps(body).encode(), "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes and probes are not worth a log line each

        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self._httpd = server_class((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=admin._httpd.serve_forever, name="admin-http",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _IPv6Server(ThreadingHTTPServer):
    """The admin server on an IPv6 address (AUTHZ_METRICS_ADDR=[::1]:9464)."""

    address_family = socket.AF_INET6
