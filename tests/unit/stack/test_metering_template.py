"""The metering Lua filter's place and wiring in THE Envoy template (no Envoy started;
its behaviour is tested through the real binary in tests/integration/test_metering.py)."""

from __future__ import annotations

import re

from authz.governance.model import (
    META_INJECT_USAGE,
    USAGE_EVENTS,
    USAGE_INJECTED,
    USAGE_INPUT,
    USAGE_NAMESPACE,
    USAGE_OUTPUT,
)
from authz.stack.envoy_config import EnvoyParams, render


def _relay_http_filters(text: str) -> list[str]:
    relay = text.split("  - name: health\n", 1)[0]
    return re.findall(r"^          - name: (\S+)$", relay, re.M)


def test_metering_runs_after_the_authz_decision_and_before_the_router() -> None:
    filters = _relay_http_filters(render(EnvoyParams(upstream_ca_file="/ca.pem")))
    assert filters.index("envoy.filters.http.ext_authz") < filters.index(
        "envoy.filters.http.lua") < filters.index("envoy.filters.http.router")


def test_the_lua_filter_uses_the_shared_metadata_names() -> None:
    text = render(EnvoyParams(upstream_ca_file="/ca.pem"))
    lua = text.split("inline_string: |\n", 1)[1]
    assert f'local NS = "{USAGE_NAMESPACE}"' in lua
    assert 'local AUTHZ = "envoy.filters.http.ext_authz"' in lua
    for key in (USAGE_INPUT, USAGE_OUTPUT, USAGE_EVENTS, USAGE_INJECTED):
        assert f'"{key}"' in lua, key
    assert f'authz["{META_INJECT_USAGE}"] ~= "1"' in lua
    # Changing content-length must not re-pick the route after authorization.
    assert "clear_route_cache: false" in text


def test_the_access_log_line_carries_the_metered_tokens() -> None:
    text = render(EnvoyParams(upstream_ca_file="/ca.pem"))
    for key in (USAGE_INPUT, USAGE_OUTPUT, USAGE_EVENTS):
        assert f'{key}: "%DYNAMIC_METADATA({USAGE_NAMESPACE}:{key})%"' in text
