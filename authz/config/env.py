"""The environment and the small parsers of the settings model (authz/settings.py).

The only module that reads the process environment (`os.environ`). Kept free of heavy
imports, so the container health check (`authz.edge.healthcheck`) can find its address
the same way the service does without loading the whole service.
"""

from __future__ import annotations

import ipaddress
import os
import re
from urllib.parse import urlsplit

from authz.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
DEFAULT_VAULT_ADDR = "http://127.0.0.1:8200"
DEFAULT_METRICS_ADDR = "127.0.0.1:9464"
DEFAULT_GRPC_ADDR = "127.0.0.1:9001"


def process_environment() -> dict[str, str]:
    """A copy of the process environment: for Settings.from_env, for child processes
    (`authz up`) and the health check. No other module touches os.environ."""
    return dict(os.environ)


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}: {raw!r} is not true or false")


def parse_on_off(name: str, raw: str) -> bool:
    """'on' or 'off' (as the setting is documented), nothing else."""
    value = raw.strip().lower()
    if value not in ("on", "off"):
        raise ConfigError(f"{name}: {raw!r} must be on or off")
    return value == "on"


def parse_duration(name: str, raw: str) -> float:
    """'2s', '250ms', '5m', '1h' or a bare number of seconds → seconds (float)."""
    match = _DURATION.match(raw)
    if not match:
        raise ConfigError(f"{name}: {raw!r} is not a duration (examples: 2s, 250ms, 5m, 1h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_int(name: str, raw: str) -> int:
    if not raw.strip().isdigit():
        raise ConfigError(f"{name}: {raw!r} is not a whole number")
    return int(raw)


def parse_addr(name: str, raw: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as '[::1]:PORT') → (host, port); the host without brackets."""
    host, sep, port_text = raw.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        # An unbracketed IPv6 address: '::1:9001' is ambiguous, so it is refused.
        host = ""
    if (not sep or not host or "[" in host or "]" in host or not port_text.isdigit()
            or not 0 < int(port_text) < 65536):
        raise ConfigError(f"{name}: {raw!r} is not HOST:PORT (IPv6 as [::1]:PORT)")
    return host, int(port_text)


def format_addr(addr: tuple[str, int]) -> str:
    """(host, port) → 'HOST:PORT', IPv6 hosts in brackets: the inverse of parse_addr."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback_ip(text: str) -> bool:
    """Whether text is an IP address (no brackets, no name) on the loopback network."""
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def is_loopback_host(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    return is_loopback_ip(host.strip("[]"))


def require_https_off_loopback(name: str, url: str) -> None:
    """Keys and secrets are fetched from this URL: plain http only to this machine."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}: {url!r} must be an http:// or https:// URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(f"{name}: {url!r} uses plain http to another host; keys and "
                          "secrets come from it, so it must be https (http only on loopback)")
