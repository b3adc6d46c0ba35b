"""authz.stack.cors: the AUTHZ_CORS_ORIGINS setting, and what it renders into THE Envoy config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.errors import ConfigError
from authz.settings import Settings
from authz.stack.cors import ALLOW_HEADERS, EXPOSE_HEADERS, MAX_AGE_S, parse_origins
from authz.stack.envoy_config import EnvoyParams, render

REPO = Path(__file__).resolve().parents[3]
CA = "/etc/test/ca.pem"
BASE = {"AUTHZ_FIREBASE_PROJECT_ID": "demo-relay"}


def _config(origins: tuple[str, ...] = ()) -> dict[str, Any]:
    text = render(EnvoyParams(upstream_ca_file=CA, cors_origins=origins))
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def _relay_hcm(config: dict[str, Any]) -> dict[str, Any]:
    [listener] = [x for x in config["static_resources"]["listeners"] if x["name"] == "relay"]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _vhost(config: dict[str, Any]) -> dict[str, Any]:
    [vhost] = _relay_hcm(config)["route_config"]["virtual_hosts"]
    return vhost  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- setting


@pytest.mark.parametrize(("raw", "expected"), [
    ("", ()),
    ("  ,  ", ()),
    ("https://app.example.com", ("https://app.example.com",)),
    (" http://127.0.0.1:5173 , https://app.example.com ",
     ("http://127.0.0.1:5173", "https://app.example.com")),
    # As a browser writes them: lowercase host and scheme, no default port.
    ("HTTPS://App.Example.COM:443", ("https://app.example.com",)),
    ("http://localhost:80", ("http://localhost",)),
    ("http://[::1]:8000", ("http://[::1]:8000",)),
    ("https://a.example,https://a.example", ("https://a.example",)),
])
def test_origins_are_parsed_to_what_browsers_send(raw: str, expected: tuple[str, ...]) -> None:
    assert parse_origins(raw) == expected


@pytest.mark.parametrize(("raw", "why"), [
    ("*", "wildcard"),
    ("https://*.example.com", "wildcard"),
    ("https://app.example.com/", "no path"),
    ("https://app.example.com/app", "no path"),
    ("https://app.example.com?x=1", "no path"),
    ("https://app.example.com#top", "no path"),
    ("app.example.com", "scheme"),
    ("ftp://app.example.com", "scheme"),
    ("null", "scheme"),
    ("https://user@app.example.com", "user"),
    ("https://", "no host"),
    ("https://app_example.com", "host name"),
    ("https://app.example.com:99999", "out of range"),
    ("https://app.example.com:0", "port 0"),
    ('https://a.example"', "quotes"),
    ("https://a .example", "whitespace"),
    ("https://a.example\x00", "control"),
])
def test_bad_origins_are_refused_naming_the_setting(raw: str, why: str) -> None:
    with pytest.raises(ConfigError, match="AUTHZ_CORS_ORIGINS") as caught:
        parse_origins(raw)
    assert why in str(caught.value)


def test_settings_read_the_origins_and_refuse_a_bad_one() -> None:
    assert Settings.from_env(BASE).cors_origins == ()
    settings = Settings.from_env({**BASE, "AUTHZ_CORS_ORIGINS": "http://127.0.0.1:5173"})
    assert settings.cors_origins == ("http://127.0.0.1:5173",)
    with pytest.raises(ConfigError, match="AUTHZ_CORS_ORIGINS"):
        Settings.from_env({**BASE, "AUTHZ_CORS_ORIGINS": "https://app.example.com/"})


def test_header_lists_hold_what_browsers_and_the_sdk_need() -> None:
    for name in ("authorization", "content-type", "openai-beta", "openai-organization",
                 "openai-project", "x-stainless-lang", "x-stainless-retry-count",
                 "x-stainless-timeout"):
        assert name in ALLOW_HEADERS
    for kind in ("requests", "tokens"):
        for what in ("limit", "remaining", "reset"):
            assert f"x-ratelimit-{what}-{kind}" in EXPOSE_HEADERS
    assert {"x-request-id", "retry-after", "openai-processing-ms"} <= set(EXPOSE_HEADERS)
    # Envoy takes them literally, a browser compares lowercase names.
    for name in ALLOW_HEADERS + EXPOSE_HEADERS:
        assert name == name.lower()
        assert "*" not in name


# --------------------------------------------------------------------------- rendering


def test_without_origins_nothing_cors_is_rendered() -> None:
    text = render(EnvoyParams(upstream_ca_file=CA))
    config_lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in config_lines if "cors" in line.lower()]
    assert not [line for line in config_lines if "access-control" in line.lower()]
    vhost = _vhost(_config())
    assert "typed_per_filter_config" not in vhost
    assert "response_headers_to_add" not in vhost
    assert [r["name"] for r in vhost["routes"]] == [
        "responses", "responses_slash", "openai_multipart", "openai_octet_stream", "openai",
        "not_found"]


def test_cors_filter_runs_before_ext_authz() -> None:
    names = [f["name"] for f in _relay_hcm(_config(("http://127.0.0.1:5173",)))["http_filters"]]
    # Its encode side must see the authz service's denials (local replies of ext_authz).
    assert names.index("envoy.filters.http.cors") < names.index("envoy.filters.http.ext_authz")
    assert names[-1] == "envoy.filters.http.router"


def test_policy_lists_exact_origins_and_the_header_lists() -> None:
    origins = ("http://127.0.0.1:5173", "https://app.example.com")
    vhost = _vhost(_config(origins))
    policy = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert policy["allow_origin_string_match"] == [{"exact": o} for o in origins]
    assert policy["allow_headers"].split(", ") == list(ALLOW_HEADERS)
    assert policy["expose_headers"].split(", ") == list(EXPOSE_HEADERS)
    assert policy["max_age"] == str(MAX_AGE_S)
    assert "allow_credentials" not in policy
    assert vhost["response_headers_to_add"] == [{
        "header": {"key": "vary", "value": "Origin"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}]


def test_each_origin_has_a_preflight_route_first_and_a_not_found_route_last() -> None:
    origins = ("http://127.0.0.1:5173", "https://app.example.com")
    routes = _vhost(_config(origins))["routes"]
    assert [r["name"] for r in routes] == [
        "cors_preflight_0", "cors_preflight_1", "responses", "responses_slash",
        "openai_multipart", "openai_octet_stream", "openai",
        "cors_not_found_0", "cors_not_found_1", "not_found"]
    for index, origin in enumerate(origins):
        preflight = routes[index]
        assert preflight["match"]["prefix"] == "/"
        assert {"name": "origin", "string_match": {"exact": origin}} in (
            preflight["match"]["headers"])
        assert {"name": ":method", "string_match": {"exact": "OPTIONS"}} in (
            preflight["match"]["headers"])
        assert preflight["direct_response"] == {"status": 204}
        added = {h["header"]["key"]: h["header"]["value"]
                 for h in preflight["response_headers_to_add"]}
        assert added["access-control-allow-origin"] == origin
        assert added["access-control-max-age"] == str(MAX_AGE_S)
        per_filter = preflight["typed_per_filter_config"]
        assert per_filter["envoy.filters.http.ext_authz"]["disabled"] is True
        assert per_filter["envoy.filters.http.cors"]["filter_enabled"]["default_value"][
            "numerator"] == 0
        not_found = next(r for r in routes if r["name"] == f"cors_not_found_{index}")
        assert not_found["direct_response"]["status"] == 404
        assert {h["header"]["key"]: h["header"]["value"]
                for h in not_found["response_headers_to_add"]}[
            "access-control-allow-origin"] == origin


def test_render_refuses_origins_not_in_canonical_form() -> None:
    with pytest.raises(ValueError, match="cors_origins"):
        render(EnvoyParams(upstream_ca_file=CA, cors_origins=("HTTPS://A.example",)))
    with pytest.raises(ValueError, match="AUTHZ_CORS_ORIGINS"):
        render(EnvoyParams(upstream_ca_file=CA, cors_origins=("*",)))


def test_kubernetes_renderer_takes_the_origins(tmp_path: Path) -> None:
    script = [sys.executable, str(REPO / "scripts/render-kubernetes-envoy.py")]
    out = tmp_path / "envoy.yaml"
    done = subprocess.run([*script, "--cors-origins", "https://app.example.com",
                           "--output", str(out)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert 'exact: "https://app.example.com"' in out.read_text()
    refused = subprocess.run([*script, "--cors-origins", "*", "--output", str(out)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2
    assert "AUTHZ_CORS_ORIGINS" in refused.stderr
