"""authz.stack.envoy_config: rendering THE Envoy bootstrap, without starting anything."""

from __future__ import annotations

import builtins
import os
import re
import ssl
import tomllib
from pathlib import Path
from string import Template
from typing import Any

import pytest

from authz.stack import envoy_config
from authz.stack.envoy_config import (
    EnvoyParams,
    Upstream,
    parse_upstream_url,
    render,
    template_text,
)

REPO = Path(__file__).resolve().parents[3]
CA = "/etc/test/ca.pem"


def _render(**kwargs: Any) -> str:
    kwargs.setdefault("upstream_ca_file", CA)
    return render(EnvoyParams(**kwargs))


def _cluster(text: str, name: str) -> str:
    """The text of one cluster in the rendered config."""
    clusters = text.split("\n  clusters:\n", 1)[1]
    match = re.search(rf"^  - name: {name}\n(.*?)(?=^  - name: |\Z)", clusters, re.M | re.S)
    assert match, name
    return match.group(1)


# --------------------------------------------------------------------------- template


def test_template_placeholders_are_exactly_the_known_ones() -> None:
    names = set(Template(template_text()).get_identifiers())
    assert names == {
        "listen_host",
        "listen_port",
        "admin_host",
        "admin_port",
        "health_port",
        "authz_host",
        "authz_port",
        "authz_cluster_type",
        "check_timeout",
        "stream_idle_timeout",
        "upstream_host",
        "upstream_port",
        "upstream_authority",
        "upstream_cluster_type",
        "downstream_transport_socket",
        "upstream_http_protocol",
        "upstream_transport_socket",
        "cors_preflight_routes",
        "cors_not_found_routes",
        "cors_virtual_host",
        "cors_filter",
        "fast_path_bootstrap",
        "fast_path_filters",
        "fast_path_ext_authz",
        "fast_path_access_log",
    }


def test_packaged_template_is_the_repo_template() -> None:
    assert (REPO / "authz" / "stack" / "envoy.yaml").read_text() == (
        REPO / "envoy" / "envoy.yaml"
    ).read_text()
    assert template_text() == (REPO / "envoy" / "envoy.yaml").read_text()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "envoy.yaml" in pyproject["tool"]["setuptools"]["package-data"]["authz.stack"]


@pytest.mark.parametrize(
    "params",
    [
        EnvoyParams(upstream_ca_file=CA),
        EnvoyParams(upstream_url="http://localhost:8000"),
        EnvoyParams(upstream_url="https://127.0.0.1:8443", upstream_ca_file=CA),
        EnvoyParams(upstream_url="https://[::1]:8443", upstream_ca_file=CA, listen_host="::"),
        EnvoyParams(
            upstream_ca_file=CA,
            downstream_tls_cert_file="/tls/cert.pem",
            downstream_tls_key_file="/tls/key.pem",
        ),
        EnvoyParams(upstream_ca_file=CA, cors_origins=("http://127.0.0.1:5173",)),
    ],
)
def test_every_placeholder_is_substituted(params: EnvoyParams) -> None:
    text = render(params)
    assert "${" not in text
    assert "$" not in text.replace("$$", "")
    assert "\t" not in text


# --------------------------------------------------------------------------- scalars


def test_default_render_points_at_openai() -> None:
    text = _render()
    assert 'socket_address: { address: "127.0.0.1", port_value: 8080 }' in text
    assert 'socket_address: { address: "127.0.0.1", port_value: 9901 }' in text
    assert 'socket_address: { address: "127.0.0.1", port_value: 9001 }' in text
    assert 'socket_address: { address: "api.openai.com", port_value: 443 }' in text
    assert text.count('host_rewrite_literal: "api.openai.com"') == 2
    openai = _cluster(text, "openai")
    assert "type: LOGICAL_DNS" in openai
    assert "dns_lookup_family: V4_PREFERRED" in openai
    assert 'sni: "api.openai.com"' in openai
    assert 'san_type: "DNS"' in openai
    assert 'exact: "api.openai.com"' in openai
    assert f'filename: "{CA}"' in openai
    assert "auto_config:" in openai
    assert "type: STATIC" in _cluster(text, "authz")


def test_timeouts_and_idle_timeout() -> None:
    text = _render(check_timeout_s=0.25, stream_idle_timeout_s=300)
    assert "timeout: 0.25s" in text
    assert "connect_timeout: 0.25s" in _cluster(text, "authz")
    assert "stream_idle_timeout: 300s" in text
    assert "stream_idle_timeout: 0s" in _render(stream_idle_timeout_s=0)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(2, "2s"), (2.0, "2s"), (0.5, "0.5s"), (1.234, "1.234s"), (0.001, "0.001s"), (90.1, "90.1s")],
)
def test_duration_format(seconds: float, expected: str) -> None:
    assert f"timeout: {expected}\n" in _render(check_timeout_s=seconds)


@pytest.mark.parametrize("bad", [0, -1, 0.0001, float("nan"), float("inf"), True, "2s", 10**9])
def test_bad_check_timeout(bad: Any) -> None:
    with pytest.raises(ValueError, match="check_timeout_s"):
        _render(check_timeout_s=bad)


def test_bad_stream_idle_timeout() -> None:
    with pytest.raises(ValueError, match="stream_idle_timeout_s"):
        _render(stream_idle_timeout_s=-1)


def test_authz_by_name_uses_dns() -> None:
    text = _render(authz_host="authz", authz_port=9001)
    authz = _cluster(text, "authz")
    assert "type: STRICT_DNS" in authz
    assert 'socket_address: { address: "authz", port_value: 9001 }' in authz


def test_ipv6_listen_and_admin() -> None:
    text = _render(listen_host="::", admin_host="::1")
    assert 'address: "::", port_value: 8080' in text
    assert 'address: "::1", port_value: 9901' in text


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "::", "localhost", "example.com"])
def test_admin_must_be_loopback_ip(host: str) -> None:
    with pytest.raises(ValueError, match="admin_host"):
        _render(admin_host=host)


@pytest.mark.parametrize("host", ["localhost", "example.com", "", "1.2.3.4.5"])
def test_listen_host_must_be_an_ip(host: str) -> None:
    with pytest.raises(ValueError, match="listen_host"):
        _render(listen_host=host)


@pytest.mark.parametrize("host", ["", "bad host", "a_b", "-x.com", "a..b"])
def test_bad_authz_host(host: str) -> None:
    with pytest.raises(ValueError, match="authz_host"):
        _render(authz_host=host)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("listen_port", -1),
        ("listen_port", 65536),
        ("admin_port", "80"),
        ("authz_port", 0),
        ("authz_port", True),
    ],
)
def test_bad_ports(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        _render(**{field: value})


def test_port_zero_allowed_for_listeners() -> None:
    text = _render(listen_port=0, admin_port=0)
    assert 'address: "127.0.0.1", port_value: 0 }' in text


# --------------------------------------------------------------------------- upstream


def test_localhost_upstream_keeps_port_in_host() -> None:
    text = _render(upstream_url="https://localhost:8443")
    assert text.count('host_rewrite_literal: "localhost:8443"') == 2
    openai = _cluster(text, "openai")
    assert 'address: "localhost", port_value: 8443' in openai
    assert 'sni: "localhost"' in openai


def test_ip_upstream_is_static_without_sni_and_checks_ip_san() -> None:
    openai = _cluster(_render(upstream_url="https://127.0.0.1:8443"), "openai")
    assert "type: STATIC" in openai
    assert "sni:" not in openai
    assert 'san_type: "IP_ADDRESS"' in openai
    assert 'exact: "127.0.0.1"' in openai


def test_ipv6_upstream() -> None:
    text = _render(upstream_url="https://[::1]:8443")
    assert 'host_rewrite_literal: "[::1]:8443"' in text
    openai = _cluster(text, "openai")
    assert 'address: "::1", port_value: 8443' in openai
    assert 'exact: "::1"' in openai
    assert "sni:" not in openai


def test_http_upstream_has_no_tls_and_speaks_http1() -> None:
    text = _render(upstream_url="http://stand-in")
    assert text.count('host_rewrite_literal: "stand-in"') == 2
    openai = _cluster(text, "openai")
    assert "transport_socket" not in openai
    assert "explicit_http_config:" in openai
    assert "auto_config" not in openai
    assert 'address: "stand-in", port_value: 80' in openai


def test_default_port_not_in_host() -> None:
    assert 'host_rewrite_literal: "example.com"' in _render(upstream_url="https://example.com:443/")
    assert 'host_rewrite_literal: "example.com:80"' in _render(
        upstream_url="https://example.com:80"
    )


def test_system_trust_store_when_no_ca_file() -> None:
    text = render(EnvoyParams(upstream_ca_file=None))
    ca = envoy_config.default_ca_file()
    assert os.path.isfile(ca)
    assert f'filename: "{ca}"' in _cluster(text, "openai")


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = _render(upstream_ca_file="ca.pem")
    assert f'filename: "{tmp_path / "ca.pem"}"' in text


def test_ca_path_is_quoted() -> None:
    text = _render(upstream_ca_file='/odd dir/"quoted": ca.pem')
    assert 'filename: "/odd dir/\\"quoted\\": ca.pem"' in text


def test_no_ca_bundle_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = ssl.DefaultVerifyPaths(
        "/nonexistent/a", "/nonexistent", "SSL_CERT_FILE", "/nonexistent/b", "SSL_CERT_DIR", "/x"
    )
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: paths)
    monkeypatch.setattr(envoy_config, "_WELL_KNOWN_CA_FILES", ("/nonexistent/c",))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    real_import = builtins.__import__

    def no_certifi(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "certifi":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_certifi)
    with pytest.raises(ValueError, match="no system CA bundle"):
        render(EnvoyParams(upstream_ca_file=None))
    # An explicit file, or an http upstream, needs no system bundle.
    assert _render(upstream_ca_file=CA)
    assert render(EnvoyParams(upstream_url="http://localhost:8000"))


def test_ssl_cert_file_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("x")
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    assert envoy_config.default_ca_file() == str(bundle)


# --------------------------------------------------------------------------- downstream TLS


def test_plaintext_listener_by_default() -> None:
    text = _render()
    assert "DownstreamTlsContext" not in text
    assert "codec_type: AUTO" in text


def test_downstream_tls() -> None:
    text = _render(downstream_tls_cert_file="/tls/cert.pem", downstream_tls_key_file="/tls/key.pem")
    listener = text.split("\n  clusters:\n", 1)[0]
    assert "DownstreamTlsContext" in listener
    assert re.search(r'alpn_protocols:\n\s+- "h2"\n\s+- "http/1.1"', listener)
    assert 'filename: "/tls/cert.pem"' in listener
    assert 'filename: "/tls/key.pem"' in listener
    # Same indentation as `filters:` in the filter chain entry.
    assert "\n      transport_socket:\n" in listener


@pytest.mark.parametrize(
    "kwargs",
    [{"downstream_tls_cert_file": "/c.pem"}, {"downstream_tls_key_file": "/k.pem"}],
)
def test_downstream_tls_needs_both_files(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="both"):
        _render(**kwargs)


# ---------------------------------------------------------------- the contract in the template


def test_routes_and_hardening_present() -> None:
    text = _render()
    for needle in [
        "normalize_path: true",
        "merge_slashes: true",
        "path_with_escaped_slashes_action: REJECT_REQUEST",
        "server_header_transformation: PASS_THROUGH",
        "skip_xff_append: true",
        "suppress_envoy_headers: true",
        "failure_mode_allow: false",
        "match: { path: /api/openai }",
        "match: { path: /api/openai/ }",
        "match: { prefix: /api/openai/ }",
        "prefix_rewrite: /v1/responses",
        "prefix_rewrite: /\n",
        "timeout: 0s",
        "disabled: true",
        "- set-cookie",
        '\'{"error": "Not found"}\'',
        "error: OpenAI proxy internal error",
    ]:
        assert needle in text, needle
    assert "envoy.filters.http.buffer" not in text
    # Governance reads bodies up to 16 MiB (cut and flagged beyond, never refused), except
    # multipart uploads, whose route turns body buffering off so they keep streaming.
    for needle in ("with_request_body:", "max_request_bytes: 16777216",
                   "allow_partial_message: true", "pack_as_bytes: true",
                   "string_match: { prefix: multipart/, ignore_case: true }",
                   "string_match: { prefix: application/octet-stream, ignore_case: true }",
                   "check_settings: { disable_request_body_buffering: true }"):
        assert needle in text, needle
    assert text.index("name: openai_multipart") < text.index("name: openai\n")
    # A client cannot claim its body was cut: its copy of the flag goes before ext_authz.
    assert (text.index("remove: x-envoy-auth-partial-body")
            < text.index("- name: envoy.filters.http.ext_authz"))
    # authz is sent the credential and what governance reads; Envoy strips the fixed
    # header names itself.
    indent = " " * 16
    allowed = (f"allowed_headers:\n{indent}patterns:\n{indent}- exact: authorization\n"
               f"{indent}- exact: content-type\n{indent}- exact: x-envoy-auth-partial-body\n")
    assert allowed in text
    for name in ("cookie", "proxy-authorization", "x-api-key", "x-client-id", "x-tenant-id"):
        assert f"              - {name}\n" in text, name


# --------------------------------------------------------------------------- parse_upstream_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.openai.com", Upstream("https", "api.openai.com", 443, False)),
        ("https://api.openai.com/", Upstream("https", "api.openai.com", 443, False)),
        ("HTTPS://API.OpenAI.com", Upstream("https", "api.openai.com", 443, False)),
        ("https://localhost:8443", Upstream("https", "localhost", 8443, False)),
        ("http://localhost", Upstream("http", "localhost", 80, False)),
        ("http://10.1.2.3:8080", Upstream("http", "10.1.2.3", 8080, True)),
        ("https://[::1]:8443", Upstream("https", "::1", 8443, True)),
        ("https://[0:0::1]", Upstream("https", "::1", 443, True)),
        ("https://example.com.", Upstream("https", "example.com", 443, False)),
    ],
)
def test_parse_upstream_url_ok(url: str, expected: Upstream) -> None:
    assert parse_upstream_url(url) == expected


def test_authority() -> None:
    assert parse_upstream_url("https://api.openai.com").authority == "api.openai.com"
    assert parse_upstream_url("https://localhost:8443").authority == "localhost:8443"
    assert parse_upstream_url("http://h:80").authority == "h"
    assert parse_upstream_url("https://[::1]").authority == "[::1]"
    assert parse_upstream_url("https://[::1]:1").authority == "[::1]:1"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("api.openai.com", "scheme must be https or http"),
        ("ftp://api.openai.com", "scheme must be https or http"),
        ("ws://api.openai.com", "scheme must be https or http"),
        ("https://", "no host"),
        ("https://:443", "no host"),
        ("https://api.openai.com/v1", "must not have a path"),
        ("https://api.openai.com//", "must not have a path"),
        ("https://api.openai.com?x=1", "query"),
        ("https://api.openai.com/?", "query"),
        ("https://api.openai.com#frag", "fragment"),
        ("https://user:pw@api.openai.com", "userinfo"),
        ("https://user@api.openai.com", "userinfo"),
        ("https://api.openai.com:99999", "port"),
        ("https://api.openai.com:0", "port"),
        ("https://api.openai.com:abc", "port"),
        ("https://api openai.com", "whitespace"),
        (" https://api.openai.com", "whitespace"),
        ("https://api.openai.com\n", "whitespace"),
        ("https://bad_host.com", "not a valid host name"),
        ("https://-bad.com", "not a valid host name"),
        ("https://1.2.3", "not a valid host name"),
        ("https://[not-ip]", "malformed|not an IP address"),
        ("https://[::1", "malformed"),
    ],
)
def test_parse_upstream_url_errors(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_upstream_url(url)


def test_render_rejects_bad_upstream_url() -> None:
    with pytest.raises(ValueError, match="must not have a path"):
        _render(upstream_url="https://api.openai.com/v1")


# ----------------------------------------------------------------- fast path (issue 14)

def _without_fast_path_lines(template: str) -> str:
    return re.sub(r"^ *\$\{fast_path_\w+\}\n", "", template, flags=re.M)


@pytest.mark.parametrize("kwargs", [
    {}, {"cors_origins": ("https://app.example.com",)},
    {"upstream_url": "http://localhost:8000"},
])
def test_fast_path_off_renders_exactly_the_template_without_it(monkeypatch, kwargs):
    """Off, the three placeholder lines vanish with their line breaks: the config is
    byte for byte what the template renders without any fast-path line."""
    off = _render(**kwargs)
    monkeypatch.setattr(envoy_config.fast_path, "envoy_blocks", lambda enabled: {})
    assert off == render(EnvoyParams(upstream_ca_file=CA, **kwargs),
                         _without_fast_path_lines(template_text()))
    # Off, the namespace appears only where the gRPC access log would leave out what
    # the fast path decided (never set when it is off).
    assert off.count("relay.fast_path") == 1
    assert "filter: relay.fast_path\n" in off
    assert "dynamic_resources" not in off


def test_fast_path_on_adds_ads_the_lua_filter_and_the_ext_authz_switch():
    on = _render(fast_path=True)
    off = _render()
    # ADS and the metering log, over the authz cluster.
    assert on.count("cluster_name: \"authz\"") == 2
    assert "OpenTelemetryAccessLogConfig" in on
    assert "dynamic_resources:\n  ads_config:" in on
    assert 'node:\n  id: "openai-relay"' in on
    filters = on.split("http_filters:", 1)[1]
    order = [filters.index(name) for name in (
        '"relay.fast_path.lua"', "envoy.filters.http.ext_authz")]
    assert order == sorted(order)
    assert "jwt_authn" not in on  # the Lua verifies tokens itself
    assert "apply_default_config_without_warming: true" in on
    assert 'filter: "relay.fast_path"' in on
    assert "invert: true" in on
    # Everything else is untouched: on minus the blocks is off.
    assert len(on.splitlines()) > len(off.splitlines())
    for line in off.splitlines():
        assert line in on
