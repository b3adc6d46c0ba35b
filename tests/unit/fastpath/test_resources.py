"""authz.fastpath: what Envoy is sent (the Lua filter's config), built without an Envoy."""

from __future__ import annotations

import re

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from envoy.extensions.filters.http.lua.v3 import lua_pb2

from authz.credentials.jose.jwks import Jwk
from authz.credentials.oidc import OidcIssuer
from authz.fastpath.blocks import LUA_FILTER, NOOP_LUA
from authz.fastpath.resources import (
    FastTenant,
    build_resources,
    firebase_issuer,
    lua_source,
    oidc_issuer,
)
from authz.fastpath.tenants import served_policy, tenant_from_record
from authz.governance.policy import ALLOW_ALL, parse_policy

PROJECT = "demo-relay"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
CLAIMS = ("clientId", "firebase.tenant")


def firebase(keys=None):
    return firebase_issuer(PROJECT, {"kid-1": KEY} if keys is None else keys, CLAIMS)


OIDC = oidc_issuer(0, OidcIssuer("https://login.example.test/", ("relay", "api"),
                                 "https://login.example.test/jwks", ("org.tenant",), None,
                                 ("RS256", "RS384")),
                   {"k-a": Jwk(KEY, "RS384"), "k-b": Jwk(KEY, None)})
TENANTS = [FastTenant("acme", "sk-acme-1"), FastTenant("globex", "sk-globex-2", "org-g", None)]


def der_literal(key) -> str:
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return '"' + "".join(f"\\{b:03d}" for b in der) + '"'


def test_each_issuers_keys_are_sent_as_der_with_their_own_algorithm():
    source = lua_source([firebase(), OIDC], TENANTS, 30)
    # Firebase's certificates are RS256 keys; an OIDC key keeps the alg its JWKS named,
    # or none (then the issuer's allow-list decides).
    assert f'    keys = {{["kid-1"] = {{{der_literal(KEY)}, "RS256"}}}},' in source
    assert (f'    keys = {{["k-a"] = {{{der_literal(KEY)}, "RS384"}}, '
            f'["k-b"] = {{{der_literal(KEY)}, false}}}},') in source


@pytest.mark.parametrize("issuers", [[], [firebase({})]], ids=["no-issuer", "no-keys"])
def test_without_an_issuer_with_keys_nothing_is_verified(issuers):
    resources = build_resources(issuers, TENANTS, 30)
    assert list(resources) == [LUA_FILTER]
    lua = lua_pb2.Lua()
    resources[LUA_FILTER].typed_config.Unpack(lua)
    assert lua.default_source_code.inline_string == NOOP_LUA


def test_lua_holds_the_tenant_table_and_the_settings():
    source = lua_source([firebase(), OIDC], TENANTS, 30)
    assert '["acme"] = {"Bearer sk-acme-1", false, false, false},' in source
    assert '["globex"] = {"Bearer sk-globex-2", "org-g", false, false},' in source
    assert '    claims = {{"clientId"}, {"firebase", "tenant"}},' in source
    assert '    iss = "https://securetoken.google.com/demo-relay",' in source
    assert '    exact_audience = "demo-relay",' in source
    assert '    not_after_now = {"iat", "auth_time"},' in source
    assert '    max_subject = 128,' in source
    # The OIDC issuer: any listed audience, its algorithms, iat only, 255 characters.
    assert '    exact_audience = false,\n    audiences = {["relay"] = true, ["api"] = true},' \
        in source
    assert '    algorithms = {["RS256"] = true, ["RS384"] = true},' in source
    assert '    not_after_now = {"iat"},\n    max_subject = 255,' in source
    assert '    claims = {{"org", "tenant"}},\n    token_type = "oidc",' in source
    assert "local SKEW = 30" in source
    assert "function envoy_on_request(handle)" in source
    assert "envoy_on_response" not in source  # nothing runs on the response side


def test_every_escape_in_the_generated_lua_is_one_lua_knows():
    r"""Lua refuses the whole script for one unknown escape (Envoy then rejects the push);
    code outside comments may only use \\, \", \', \n, \t, \r and \ddd."""
    source = lua_source([firebase(), OIDC], TENANTS, 30)
    code = "\n".join(line.split("--", 1)[0] for line in source.splitlines())
    assert re.findall(r"\\(?![\\\"'ntr0-9])", code.replace("\\\\", "")) == []
    assert 'string.find(bytes, "\\\\u", 1, true)' in source  # the two bytes \u


@pytest.mark.parametrize("hostile", [
    'sk-"quote', "sk-back\\slash", "sk-new\nline", "sk-]]long", "sk-\x00nul", "sk-é",
])
def test_no_value_escapes_its_lua_string(hostile):
    source = lua_source([firebase()], [FastTenant("acme", hostile, hostile, hostile)],
                        30)
    table = source.split("local TENANTS = {\n", 1)[1].split("\n}", 1)[0]
    # One line, only printable ASCII, every quote and backslash written as \ddd.
    assert "\n" not in table
    assert table.isprintable()
    assert table.isascii()
    literals = re.findall(r'"([^"]*)"', table)
    assert len(literals) == 4  # the client id, then three values: nothing else quoted

    def lua_decode(literal: str) -> str:
        raw = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1))), literal)
        return raw.encode("latin-1").decode("utf-8")

    assert [lua_decode(v) for v in literals] == ["acme", "Bearer " + hostile, hostile, hostile]


def test_tenant_table_is_sorted_so_equal_inputs_give_equal_configs():
    first = build_resources([firebase(), OIDC], TENANTS, 30)
    second = build_resources([firebase(), OIDC], TENANTS[::-1], 30)
    assert {n: r.SerializeToString(deterministic=True) for n, r in first.items()} == {
        n: r.SerializeToString(deterministic=True) for n, r in second.items()}


INFERENCE = parse_policy({"endpoints": "inference"})
BUDGETS = parse_policy({"limits": {"user_tokens_per_day": 10}})


@pytest.mark.parametrize(("policy", "default", "served"), [
    (None, ALLOW_ALL, ALLOW_ALL),
    (None, INFERENCE, INFERENCE),
    ({"endpoints": "all"}, INFERENCE, ALLOW_ALL),
    ('{"endpoints": "inference"}', ALLOW_ALL, INFERENCE),
    # Parsed as governance parses it: no limit set is the plain policy...
    ({"endpoints": "all", "limits": {}}, ALLOW_ALL, ALLOW_ALL),
    # ...token budgets are enforced in Envoy from pushed counts...
    ({"limits": {"user_tokens_per_day": 10}}, ALLOW_ALL, BUDGETS),
    # ...but a limit counted per request is not: ext_authz counts it.
    ({"endpoints": "all", "limits": {"user_requests_per_minute": 5}}, ALLOW_ALL, None),
    ({"limits": {"tenant_requests_per_minute": 5}}, ALLOW_ALL, None),
    ({"limits": {"user_concurrent_requests": 1}}, ALLOW_ALL, None),
    (None, parse_policy({"limits": {"user_concurrent_requests": 1}}), None),
    ({"endpoints": "all", "unknown": 1}, ALLOW_ALL, None),
    ("not json", ALLOW_ALL, None),
    (["all"], ALLOW_ALL, None),
])
def test_the_policy_envoy_enforces(policy, default, served):
    assert served_policy(policy, default) == served


@pytest.mark.parametrize(("client_id", "data", "expected"), [
    ("acme", {"api_key": " sk-1 ", "organization": " org ", "project": ""},
     FastTenant("acme", "sk-1", "org", None)),
    ("acme", {"api_key": "  "}, None),
    ("acme", {"organization": "org"}, None),
    ("acme", None, None),
    ("..", {"api_key": "sk-1"}, None),
    ("acme", {"api_key": "sk-1", "policy": {"endpoints": "inference"}},
     FastTenant("acme", "sk-1", policy=INFERENCE)),
    ("acme", {"api_key": "sk-1", "policy": {"limits": {"user_requests_per_minute": 1}}}, None),
])
def test_tenant_records_are_read_as_the_service_reads_them(client_id, data, expected):
    assert tenant_from_record(client_id, data) == expected
