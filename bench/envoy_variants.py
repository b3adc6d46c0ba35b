"""The Envoy configurations the benchmark compares, all rendered from THE template.

- ``relay``: ``authz.stack.envoy_config.render`` as every deployment gets it.
- ``alone``: the same YAML with the ext_authz HTTP filter (and the one per-route
  override that names it) cut out, so only the authorization step differs.
- endpoint variants for experiments: several authz endpoints in the authz cluster,
  or a Unix socket (``pipe``) instead of TCP.

The template is YAML with anchors, so the cuts are made on the rendered text,
indentation-aware, and each one checks that it found exactly what it expected.
Every variant is checked with ``envoy --mode validate`` before it is used.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from authz.stack.binaries import envoy_binary
from authz.stack.envoy_config import EnvoyParams, render
from tests.support.processes import free_port

EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"


@dataclass(frozen=True)
class EnvoyPorts:
    listen: int
    admin: int


def render_relay(ports: EnvoyPorts, authz_port: int, upstream_url: str, *,
                 fast_path: bool = False) -> str:
    return render(
        EnvoyParams(
            listen_host="127.0.0.1",
            listen_port=ports.listen,
            admin_host="127.0.0.1",
            admin_port=ports.admin,
            # A free port, not the default 8081: another stack on this machine may hold it.
            health_port=free_port(),
            authz_host="127.0.0.1",
            authz_port=authz_port,
            upstream_url=upstream_url,
            fast_path=fast_path,
        )
    )


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _cut_block(lines: list[str], start: int) -> list[str]:
    """Remove lines[start] and every following line indented deeper (or blank)."""
    base = _indent(lines[start])
    # A key's list items may sit at the key's own indentation ("key:\n- item").
    is_key = not lines[start].lstrip().startswith("- ")

    def inside(line: str) -> bool:
        if not line.strip() or _indent(line) > base:
            return True
        return is_key and _indent(line) == base and line.lstrip().startswith("- ")

    end = start + 1
    while end < len(lines) and inside(lines[end]):
        end += 1
    return lines[:start] + lines[end:]


def strip_ext_authz(yaml_text: str) -> str:
    """The rendered relay config without the ext_authz filter: Envoy alone."""
    lines = yaml_text.splitlines()
    filter_rx = re.compile(r"^\s*- name: " + re.escape(EXT_AUTHZ_FILTER) + r"\s*$")
    hits = [i for i, line in enumerate(lines) if filter_rx.match(line)]
    if len(hits) != 1:
        raise ValueError(f"expected one {EXT_AUTHZ_FILTER} http filter, found {len(hits)}")
    lines = _cut_block(lines, hits[0])
    # Per-route config naming the filter (the not_found route disables it): with no
    # such filter in the chain it means nothing, so it goes too.
    per_route = [
        i
        for i, line in enumerate(lines)
        # (possibly with a YAML anchor: `typed_per_filter_config: &name`)
        if line.strip().split(" &")[0] == "typed_per_filter_config:"
        and i + 1 < len(lines)
        and lines[i + 1].strip() == f"{EXT_AUTHZ_FILTER}:"
    ]
    anchors = set()
    for i in reversed(per_route):
        anchor = lines[i].strip().partition(" &")[2]
        if anchor:
            anchors.add(anchor)
        lines = _cut_block(lines, i)
    # Routes that reuse a cut block by its YAML alias lose the alias too.
    lines = [line for line in lines
             if line.strip() not in {f"typed_per_filter_config: *{a}" for a in anchors}]
    text = "\n".join(lines) + "\n"
    # (The access log may still name its metadata namespace: that reads as "-".)
    if any(
        line.strip() in (f"{EXT_AUTHZ_FILTER}:", f"- name: {EXT_AUTHZ_FILTER}") for line in lines
    ):
        raise ValueError("ext_authz still configured after the cut")
    return text


def _authz_endpoint_rx(authz_port: int) -> re.Pattern[str]:
    return re.compile(
        r"^(?P<indent>[ ]*)- endpoint:\n[ ]*address:\n[ ]*socket_address: "
        r'\{ address: "?127\.0\.0\.1"?, port_value: ' + str(authz_port) + r" \}\n",
        re.MULTILINE,
    )


def with_authz_endpoints(yaml_text: str, authz_port: int, ports: list[int]) -> str:
    """The authz cluster with one endpoint per port (Envoy balances across them)."""
    rx = _authz_endpoint_rx(authz_port)
    if len(rx.findall(yaml_text)) != 1:
        raise ValueError("authz endpoint not found exactly once in the rendered config")

    def repl(m: re.Match[str]) -> str:
        ind = m.group("indent")
        return "".join(
            f"{ind}- endpoint:\n{ind}    address:\n{ind}      socket_address: "
            f"{{ address: 127.0.0.1, port_value: {p} }}\n"
            for p in ports
        )

    return rx.sub(repl, yaml_text)


def with_authz_pipe(yaml_text: str, authz_port: int, path: str) -> str:
    """The authz cluster reaching its endpoint over a Unix socket instead of TCP."""
    rx = _authz_endpoint_rx(authz_port)
    if len(rx.findall(yaml_text)) != 1:
        raise ValueError("authz endpoint not found exactly once in the rendered config")

    def repl(m: re.Match[str]) -> str:
        ind = m.group("indent")
        return f"{ind}- endpoint:\n{ind}    address:\n{ind}      pipe: {{ path: {path} }}\n"

    return rx.sub(repl, yaml_text)


def validate(config: Path) -> None:
    """Envoy's own check of a config file; raises with Envoy's message if it refuses."""
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise ValueError(f"envoy refused {config}:\n{proc.stdout}\n{proc.stderr}")


def _cluster_span(lines: list[str], name: str) -> tuple[int, int]:
    """[start, end) line indices of the cluster called `name`."""
    start = next(i for i, line in enumerate(lines) if line.strip() == f"- name: {name}")
    base = _indent(lines[start])
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
        end += 1
    return start, end


def with_http_ext_authz(yaml_text: str, authz_port: int) -> str:
    """ext_authz over plain HTTP/1.1 (``http_service``) instead of gRPC (experiment).

    The filter asks ``http://127.0.0.1:<authz_port>`` and copies the ``authorization``
    header of an OK answer onto the upstream request; the authz cluster speaks
    HTTP/1.1 and loses its gRPC health check.
    """
    rx = re.compile(
        r"^(?P<i>[ ]*)grpc_service:\n[ ]*envoy_grpc: \{ cluster_name: authz \}\n"
        r"[ ]*timeout: (?P<t>\S+)\n",
        re.MULTILINE,
    )
    if len(rx.findall(yaml_text)) != 1:
        raise ValueError("ext_authz grpc_service block not found exactly once")

    def repl(m: re.Match[str]) -> str:
        i = m.group("i")
        return (
            f"{i}http_service:\n"
            f'{i}  server_uri: {{ uri: "http://127.0.0.1:{authz_port}", cluster: authz, '
            f"timeout: {m.group('t')} }}\n"
            f"{i}  authorization_response:\n"
            f"{i}    allowed_upstream_headers:\n"
            f"{i}      patterns: [{{ exact: authorization }}]\n"
        )

    lines = rx.sub(repl, yaml_text).splitlines()
    start, end = _cluster_span(lines, "authz")
    cluster = lines[start:end]
    checks = [i for i, line in enumerate(cluster) if line.strip() == "health_checks:"]
    for i in reversed(checks):
        cluster = _cut_block(cluster, i)
    h2 = [i for i, line in enumerate(cluster) if line.strip() == "http2_protocol_options:"]
    if len(h2) != 1:
        raise ValueError("authz cluster http2_protocol_options not found exactly once")
    indent = " " * _indent(cluster[h2[0]])
    cluster = _cut_block(cluster, h2[0])
    cluster.insert(h2[0], f"{indent}http_protocol_options: {{}}")
    return "\n".join(lines[:start] + cluster + lines[end:]) + "\n"
