"""Browser clients (CORS): the AUTHZ_CORS_ORIGINS setting and the Envoy blocks it renders.

Envoy does all of it; the authz service never sees a listed origin's preflight.

- Preflights (OPTIONS + Origin + Access-Control-Request-Method) from a listed origin
  match a route of their own, one per origin, answered with a direct 204: ext_authz is
  off on it, so no token is needed and nothing reaches authz or the upstream. Envoy's
  CORS filter would answer them itself, but always with 200 (cors_filter.cc), so it is
  switched off on those routes and the route writes the headers.
- Every other response to a listed origin, the authz service's denials and Envoy's
  own local replies included, gets Access-Control-Allow-Origin and
  Access-Control-Expose-Headers from the CORS filter (its encodeHeaders runs for
  local replies sent by filters after it, which is why it comes first in the chain).
  Two kinds of reply never pass its decode side, so it cannot tag them: direct
  responses (the relay's 404 outside /api/openai/ gets a route per origin instead),
  and what the connection manager refuses before any filter runs (escaped slashes
  400, oversized headers 431, upgrades 403): those reach a page as a network error.
- An unlisted origin gets nothing: its preflight falls through to the ordinary routes
  (401 with no CORS headers, so the browser blocks the call), and the filter only
  ever echoes an origin that matched a listed one exactly.

Origins are exact strings, as browsers send them: scheme://host[:port], lowercase,
no default port, no path. `*` is refused: the relay is credentialed by a bearer token,
and a wildcard would let any web page spend a signed-in user's quota.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import TypeAlias
from urllib.parse import urlsplit

from authz.errors import ConfigError

__all__ = [
    "ALLOW_HEADERS",
    "ALLOW_METHODS",
    "ENV_NAME",
    "EXPOSE_HEADERS",
    "MAX_AGE_S",
    "envoy_blocks",
    "parse_origins",
    "settings_from_env",
]

ENV_NAME = "AUTHZ_CORS_ORIGINS"

ALLOW_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"
# What the official openai JS SDK (7.x) sends from a page, read from its source
# (client.mjs, internal/detect-platform.mjs, lib/polling.mjs): Envoy's CORS filter
# takes a literal list or a bare `*` (any header at all), no `x-stainless-*` pattern;
# and a browser refuses a call whose
# preflight does not name every non-safelisted header it carries. tests/browser
# checks this list against the installed SDK.
ALLOW_HEADERS = (
    "authorization",
    "content-type",
    "accept",
    "idempotency-key",
    "openai-beta",
    "openai-organization",
    "openai-project",
    "x-stainless-arch",
    "x-stainless-custom-poll-interval",
    "x-stainless-helper-method",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-poll-helper",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
)
# Response headers a page may read (the rest are hidden by the browser): the request
# id, OpenAI's timing and rate-limit headers, and the relay's own Retry-After on 429.
EXPOSE_HEADERS = (
    "x-request-id",
    "openai-processing-ms",
    "openai-version",
    "openai-organization",
    "openai-project",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)
# How long a browser may reuse a preflight answer (Chromium caps it at 2 h).
MAX_AGE_S = 600

_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(item: str) -> str:
    """One origin, checked and put in the form a browser sends in its Origin header."""

    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"{ENV_NAME}: {item!r} is not an origin ({why}); expected exact origins "
            "like https://app.example.com or http://127.0.0.1:5173, comma-separated"
        )

    if "*" in item:
        raise bad("wildcards are not allowed: list each origin")
    if any(c.isspace() or ord(c) < 0x20 or c in "\"'\\" for c in item):
        raise bad("it contains whitespace, quotes or control characters")
    try:
        parts = urlsplit(item)
        port = parts.port
    except ValueError as exc:
        raise bad(str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not item.lower().startswith(scheme + "://"):
        raise bad("the scheme must be http:// or https://")
    if "@" in parts.netloc:
        raise bad("no user:password@")
    if parts.path or parts.query or parts.fragment or "?" in item or "#" in item:
        raise bad("no path, not even a trailing /, no query, no fragment")
    host = (parts.hostname or "").lower()
    if not host:
        raise bad("no host")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if parts.netloc.startswith("[") or not _DNS_NAME.match(host):
            raise bad(f"{host!r} is not a host name") from None
        shown = host
    else:
        shown = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        if port == 0:
            raise bad("port 0")
        shown = f"{shown}:{port}"
    return f"{scheme}://{shown}"


def parse_origins(raw: str | Iterable[str]) -> tuple[str, ...]:
    """AUTHZ_CORS_ORIGINS (comma-separated, or already a list) → unique origins, in order.

    Raises ConfigError naming the setting and the offending entry."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    origins: list[str] = []
    for item in items:
        text = item.strip()
        if not text:
            continue
        origin = _origin(text)
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


def settings_from_env(get: Callable[..., str]) -> dict[str, object]:
    return {"cors_origins": parse_origins(get(ENV_NAME))}


# --------------------------------------------------------------------------- Envoy

# The same shape as envoy_config.Json (kept here so neither module imports the other).
Json: TypeAlias = dict[str, "Json"] | list["Json"] | str | int | bool

_CORS_POLICY_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
_EXT_AUTHZ_OFF: Json = {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
    "disabled": True,
}


def _preflight_route(index: int, origin: str) -> Json:
    headers = [
        ("access-control-allow-origin", origin),
        ("access-control-allow-methods", ALLOW_METHODS),
        ("access-control-allow-headers", ", ".join(ALLOW_HEADERS)),
        ("access-control-max-age", str(MAX_AGE_S)),
    ]
    return {
        "name": f"cors_preflight_{index}",
        "match": {
            # Every path, not only /api/openai/: a preflight only grants permission to
            # ask, and a page asking for a wrong path then reads the relay's JSON 404
            # instead of a bare network error (a browser drops a non-2xx preflight).
            "prefix": "/",
            "headers": [
                {"name": ":method", "string_match": {"exact": "OPTIONS"}},
                {"name": "origin", "string_match": {"exact": origin}},
                {"name": "access-control-request-method", "present_match": True},
            ],
        },
        "direct_response": {"status": 204},
        "response_headers_to_add": [
            {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for key, value in headers
        ],
        "typed_per_filter_config": {
            "envoy.filters.http.ext_authz": _EXT_AUTHZ_OFF,
            # The CORS filter would answer this preflight itself (with 200): off here,
            # so the route's 204 and headers above are the answer.
            "envoy.filters.http.cors": {
                "@type": _CORS_POLICY_TYPE,
                "filter_enabled": {"default_value": {"numerator": 0, "denominator": "HUNDRED"}},
            },
        },
    }


def _not_found_route(index: int, origin: str) -> Json:
    # The CORS filter skips direct responses (they have no route entry), so the
    # relay's own 404 for paths outside /api/openai/ carries the headers itself.
    return {
        "name": f"cors_not_found_{index}",
        "match": {
            "prefix": "/",
            "headers": [{"name": "origin", "string_match": {"exact": origin}}],
        },
        "direct_response": {
            "status": 404,
            "body_format": {
                "text_format_source": {"inline_string": '{"error": "Not found"}'},
                "content_type": "application/json",
            },
        },
        "response_headers_to_add": [
            {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for key, value in (("access-control-allow-origin", origin),
                               ("access-control-expose-headers", ", ".join(EXPOSE_HEADERS)))
        ],
        "typed_per_filter_config": {"envoy.filters.http.ext_authz": _EXT_AUTHZ_OFF},
    }


def envoy_blocks(origins: tuple[str, ...]) -> dict[str, Json | None]:
    """The template's CORS blocks; all None (nothing rendered) without origins."""
    if not origins:
        return {"cors_preflight_routes": None, "cors_not_found_routes": None,
                "cors_virtual_host": None, "cors_filter": None}
    try:
        checked = parse_origins(origins)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    if checked != origins:
        raise ValueError(f"cors_origins {origins!r} must be exact origins: {checked!r}")
    policy: Json = {
        "@type": _CORS_POLICY_TYPE,
        "allow_origin_string_match": [{"exact": origin} for origin in origins],
        "allow_methods": ALLOW_METHODS,
        "allow_headers": ", ".join(ALLOW_HEADERS),
        "expose_headers": ", ".join(EXPOSE_HEADERS),
        "max_age": str(MAX_AGE_S),
    }
    return {
        "cors_preflight_routes": [_preflight_route(i, o) for i, o in enumerate(origins)],
        "cors_not_found_routes": [_not_found_route(i, o) for i, o in enumerate(origins)],
        "cors_virtual_host": {
            "typed_per_filter_config": {"envoy.filters.http.cors": policy},
            # The answer depends on Origin: caches must not hand one origin's response
            # (or a no-CORS one) to another. On every response, preflights included.
            "response_headers_to_add": [
                {"header": {"key": "vary", "value": "Origin"},
                 "append_action": "APPEND_IF_EXISTS_OR_ADD"},
            ],
        },
        "cors_filter": [{
            "name": "envoy.filters.http.cors",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors",
            },
        }],
    }
