"""Render THE Envoy bootstrap (envoy/envoy.yaml, shipped in this package) for one deployment.

The template has `${name}` placeholders (string.Template). `render()` validates every
value, so a bad setting fails here with a clear message instead of as an Envoy parse
error. Scalars are substituted verbatim (they are validated to be plain hosts, ports
and durations); the optional blocks (downstream TLS, upstream TLS, upstream protocol)
are emitted as YAML at the placeholder's indentation, with every string JSON-quoted
(a JSON string is a valid YAML double-quoted scalar).

Only the standard library is used: no YAML library is needed to write YAML.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import NamedTuple, TypeAlias
from urllib.parse import urlsplit

from authz.config.env import process_environment
from authz.fastpath import blocks as fast_path
from authz.stack import cors

__all__ = [
    "EnvoyParams",
    "Upstream",
    "default_ca_file",
    "parse_upstream_url",
    "render",
    "template_text",
]

# Well-known CA bundle locations, used when the interpreter's default paths have none.
_WELL_KNOWN_CA_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL, CentOS
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # RHEL 7+
    "/etc/ssl/cert.pem",  # macOS, Alpine
)
# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_BLOCK_NAMES = (
    "downstream_transport_socket",
    "upstream_http_protocol",
    "upstream_transport_socket",
    "cors_preflight_routes",
    "cors_not_found_routes",
    "cors_virtual_host",
    "cors_filter",
)
_MAX_TIMEOUT_S = 365 * 24 * 3600.0

Json: TypeAlias = dict[str, "Json"] | list["Json"] | str | int | bool


@dataclass(frozen=True)
class EnvoyParams:
    """Everything that differs between deployments of the one Envoy configuration."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 9901
    #: Envoy's readiness listener (GET /ready), on listen_host: 200 only while authz is SERVING.
    health_port: int = 8081
    authz_host: str = "127.0.0.1"
    authz_port: int = 9001
    upstream_url: str = "https://api.openai.com"
    #: PEM bundle that verifies the upstream's certificate; None = the system trust store.
    upstream_ca_file: str | None = None
    check_timeout_s: float = 2.0
    stream_idle_timeout_s: float = 300.0
    #: Serve h2 and HTTP/1.1 over TLS (ALPN) with this certificate chain and key;
    #: both None = plaintext HTTP/1.1 and h2c.
    downstream_tls_cert_file: str | None = None
    downstream_tls_key_file: str | None = None
    #: Browser origins allowed to call the relay (AUTHZ_CORS_ORIGINS, exact, as
    #: authz.stack.cors.parse_origins returns them); empty = no CORS at all.
    cors_origins: tuple[str, ...] = ()
    #: AUTHZ_FAST_PATH: Envoy verifies Firebase tokens and injects keys (authz/fastpath/).
    fast_path: bool = False


class Upstream(NamedTuple):
    """A parsed, validated upstream URL."""

    scheme: str  # "https" or "http"
    host: str  # DNS name or IP literal (no brackets)
    port: int
    is_ip: bool

    @property
    def authority(self) -> str:
        """The Host header the upstream expects: host, plus :port when not the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_upstream_url(url: str) -> Upstream:
    """Validate an upstream base URL such as https://api.openai.com or https://localhost:8443.

    Raises ValueError naming what is wrong: the scheme (https or http only), a missing or
    malformed host, a bad port, or any path, userinfo, query or fragment.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("upstream URL is empty: expected e.g. https://api.openai.com")
    if url != url.strip() or any(c.isspace() or ord(c) < 0x20 for c in url):
        raise ValueError(f"upstream URL {url!r} contains whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. a bracketed host that is not an IPv6 address
        raise ValueError(f"upstream URL {url!r} is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise ValueError(
            f"upstream URL {url!r}: scheme must be https or http, not {parts.scheme or 'none'!r}"
        )
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(f"upstream URL {url!r} must not carry userinfo (user:password@)")
    if parts.query or url.rstrip("#").endswith("?") or "?" in url:
        raise ValueError(f"upstream URL {url!r} must not have a query string")
    if parts.fragment or "#" in url:
        raise ValueError(f"upstream URL {url!r} must not have a fragment")
    if parts.path not in ("", "/"):
        raise ValueError(
            f"upstream URL {url!r} must not have a path (got {parts.path!r}): "
            "the client's path after /api/openai is appended as-is"
        )
    try:
        raw_port = parts.port
    except ValueError as exc:
        raise ValueError(f"upstream URL {url!r} has an invalid port") from exc
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"upstream URL {url!r} has no host")
    is_ip = _is_ip(host)
    if not is_ip:
        if parts.netloc.startswith("["):
            raise ValueError(f"upstream URL {url!r}: {host!r} is not an IP address")
        if not _DNS_NAME.match(host) or host.replace(".", "").isdigit():
            raise ValueError(f"upstream URL {url!r}: {host!r} is not a valid host name")
        host = host.rstrip(".")
    port = raw_port if raw_port is not None else (443 if scheme == "https" else 80)
    if not 0 < port < 65536:
        raise ValueError(f"upstream URL {url!r}: port {port} is out of range")
    if is_ip:
        host = str(ipaddress.ip_address(host))
    return Upstream(scheme=scheme, host=host, port=port, is_ip=is_ip)


def default_ca_file(env: Mapping[str, str] | None = None) -> str:
    """The system trust store as one PEM file (Envoy needs a file, not a directory).

    Tries the interpreter's OpenSSL default (and SSL_CERT_FILE), then the well-known
    distribution paths, then certifi if it is installed. Raises ValueError if none exists.
    """
    paths = ssl.get_default_verify_paths()
    candidates = [
        (env or {}).get(paths.openssl_cafile_env or "SSL_CERT_FILE", ""),
        paths.cafile or "",
        paths.openssl_cafile or "",
        *_WELL_KNOWN_CA_FILES,
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            return candidate
    try:
        import certifi  # optional: only when the system has no bundle
    except ImportError:
        pass
    else:
        bundle: str = certifi.where()
        if os.path.isfile(bundle):
            return bundle
    raise ValueError(
        "no system CA bundle found to verify the upstream's TLS certificate "
        f"(looked at {', '.join(c for c in candidates if c)} and certifi); "
        "install ca-certificates or set AUTHZ_UPSTREAM_CA_FILE"
    )


def template_text() -> str:
    """The envoy.yaml template shipped with the package."""
    return resources.files("authz.stack").joinpath("envoy.yaml").read_text(encoding="utf-8")


def render(params: EnvoyParams, template: str | None = None) -> str:
    """The final Envoy YAML for `params`. Raises ValueError on any invalid parameter."""
    upstream = parse_upstream_url(params.upstream_url)
    listen_host = _ip_host("listen_host", params.listen_host)
    admin_host = _ip_host("admin_host", params.admin_host)
    if not ipaddress.ip_address(admin_host).is_loopback:
        raise ValueError(
            f"admin_host {params.admin_host!r} is not a loopback address: Envoy's admin "
            "endpoint can stop and reconfigure the proxy, so it stays on 127.0.0.1 or ::1"
        )
    authz_host = _any_host("authz_host", params.authz_host)
    values: dict[str, str] = {
        "listen_host": _yaml_host(listen_host),
        "listen_port": str(_port("listen_port", params.listen_port, allow_zero=True)),
        "admin_host": _yaml_host(admin_host),
        "admin_port": str(_port("admin_port", params.admin_port, allow_zero=True)),
        "health_port": str(_port("health_port", params.health_port, allow_zero=True)),
        "authz_host": _yaml_host(authz_host),
        "authz_port": str(_port("authz_port", params.authz_port)),
        "authz_cluster_type": "STATIC" if _is_ip(authz_host) else "STRICT_DNS",
        "check_timeout": _duration("check_timeout_s", params.check_timeout_s),
        "stream_idle_timeout": _duration(
            "stream_idle_timeout_s", params.stream_idle_timeout_s, allow_zero=True
        ),
        "upstream_host": _yaml_host(upstream.host),
        "upstream_port": str(upstream.port),
        "upstream_authority": json.dumps(upstream.authority),
        "upstream_cluster_type": "STATIC" if upstream.is_ip else "LOGICAL_DNS",
    }
    blocks: dict[str, Json | None] = {
        "downstream_transport_socket": _downstream_tls(params),
        "upstream_http_protocol": _upstream_protocol(upstream),
        "upstream_transport_socket": _upstream_tls(params, upstream),
        **cors.envoy_blocks(params.cors_origins),
    }
    text = template_text() if template is None else template
    for name, block in blocks.items():
        text = _substitute_block(text, name, block)
    # Off, these lines vanish with their line break: the rendering is then exactly the
    # template's without them (a unit test holds it to that).
    for name, block in fast_path.envoy_blocks(params.fast_path).items():
        text = _substitute_block(text, name, block, drop_line=True)
    try:
        rendered = Template(text).substitute(values)
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"envoy.yaml template has an unknown or malformed placeholder: {exc}"
        ) from exc
    return rendered


# --------------------------------------------------------------------------- blocks


def _downstream_tls(params: EnvoyParams) -> Json | None:
    cert, key = params.downstream_tls_cert_file, params.downstream_tls_key_file
    if not cert and not key:
        return None
    if not cert or not key:
        raise ValueError(
            "downstream TLS needs both a certificate chain file and a private key file"
        )
    return {
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {
                    "alpn_protocols": ["h2", "http/1.1"],
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": _file_path("cert", cert)},
                            "private_key": {"filename": _file_path("key", key)},
                        }
                    ],
                },
            },
        }
    }


def _upstream_protocol(upstream: Upstream) -> Json:
    if upstream.scheme == "https":
        # HTTP/2 when the upstream offers it in ALPN, HTTP/1.1 otherwise.
        return {
            "auto_config": {
                "http_protocol_options": {},
                "http2_protocol_options": _UPSTREAM_H2_OPTIONS,
            }
        }
    # Plaintext has no ALPN to negotiate with: HTTP/1.1.
    return {"explicit_http_config": {"http_protocol_options": {}}}


_UPSTREAM_H2_OPTIONS: Json = {
    "initial_stream_window_size": 65536,
    "initial_connection_window_size": 1048576,
    "connection_keepalive": {"interval": "30s", "timeout": "10s"},
}


def _upstream_tls(params: EnvoyParams, upstream: Upstream) -> Json | None:
    if upstream.scheme != "https":
        return None
    ca_file = (
        _file_path("upstream_ca_file", params.upstream_ca_file)
        if params.upstream_ca_file
        else default_ca_file(process_environment())
    )
    san_type = "IP_ADDRESS" if upstream.is_ip else "DNS"
    context: dict[str, Json] = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    }
    if not upstream.is_ip:
        # Explicit: auto_sni would take the host from before the host rewrite, and
        # SNI may only carry a DNS name, never an IP address.
        context["sni"] = upstream.host
    context["common_tls_context"] = {
        "validation_context": {
            "trusted_ca": {"filename": ca_file},
            "match_typed_subject_alt_names": [
                {"san_type": san_type, "matcher": {"exact": upstream.host}}
            ],
        },
    }
    return {
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": context,
        }
    }


def _substitute_block(text: str, name: str, block: Json | None, *,
                      drop_line: bool = False) -> str:
    """Replace the line holding ${name} with `block` as YAML at that line's indentation;
    a None block leaves an empty line, or (drop_line) no line at all."""
    pattern = re.compile(r"^([ ]*)\$\{" + name + r"\}[ ]*" + ("\n" if drop_line else "$"),
                         re.MULTILINE)
    matches = pattern.findall(text)
    if len(matches) != 1:
        raise ValueError(f"envoy.yaml template must hold ${{{name}}} once, on its own line")

    def replace(match: re.Match[str]) -> str:
        if block is None:
            return ""
        indent = match.group(1)
        return "\n".join(indent + line for line in _to_yaml(block)) + ("\n" if drop_line else "")

    return pattern.sub(replace, text)


def _to_yaml(value: Json) -> list[str]:
    """Block-style YAML lines for a JSON-like value; strings are JSON-quoted."""
    if isinstance(value, dict):
        if not value:
            return ["{}"]
        lines: list[str] = []
        for key, item in value.items():
            head = json.dumps(key) if not re.fullmatch(r"[a-z_][a-z0-9_]*", key) else key
            if isinstance(item, dict | list) and item:
                lines.append(f"{head}:")
                lines.extend("  " + line for line in _to_yaml(item))
            else:
                lines.append(f"{head}: {_scalar(item)}")
        return lines
    if isinstance(value, list):
        if not value:
            return ["[]"]
        lines = []
        for item in value:
            inner = _to_yaml(item)
            lines.append("- " + inner[0])
            lines.extend("  " + line for line in inner[1:])
        return lines
    return [_scalar(value)]


def _scalar(value: Json) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "{}" if isinstance(value, dict) else "[]"


# --------------------------------------------------------------------------- values


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _ip_host(field: str, host: str) -> str:
    text = host.strip("[]") if isinstance(host, str) else ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(
            f"{field} {host!r} must be an IP address (Envoy binds to addresses, not names)"
        ) from None


def _any_host(field: str, host: str) -> str:
    text = host.strip("[]") if isinstance(host, str) else ""
    if _is_ip(text):
        return str(ipaddress.ip_address(text))
    if text and _DNS_NAME.match(text) and not text.replace(".", "").isdigit():
        return text.rstrip(".")
    raise ValueError(f"{field} {host!r} is neither an IP address nor a host name")


def _yaml_host(host: str) -> str:
    # IPv6 literals contain ':' and would read as YAML mappings unquoted.
    return json.dumps(host)


def _port(field: str, port: int, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        raise ValueError(f"{field} {port!r} must be an integer port between {low} and 65535")
    return port


def _duration(field: str, seconds: float, *, allow_zero: bool = False) -> str:
    """Seconds → a protobuf Duration string ("2s", "0.25s"), millisecond precision."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"{field} {seconds!r} must be a number of seconds")
    value = float(seconds)
    if not math.isfinite(value) or value < 0 or value > _MAX_TIMEOUT_S:
        raise ValueError(f"{field} {seconds!r} must be a finite number of seconds, 0..1 year")
    millis = round(value * 1000)
    if millis == 0 and not (allow_zero and value == 0):
        raise ValueError(f"{field} {seconds!r} must be at least 1 ms")
    whole, frac = divmod(millis, 1000)
    return f"{whole}s" if frac == 0 else f"{whole}.{frac:03d}".rstrip("0") + "s"


def _file_path(field: str, path: str) -> str:
    if not isinstance(path, str) or not path or "\x00" in path or "\n" in path:
        raise ValueError(f"{field} {path!r} is not a file path")
    return os.path.abspath(path)
