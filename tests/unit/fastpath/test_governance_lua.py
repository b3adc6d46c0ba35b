"""The fast path's governance Lua, run in LuaJIT (lupa) against the Python rules.

The Lua only ever proves a request allowed, and leaves the rest to the service, so the
property that matters is one-sided: whatever the Lua allows, the service allows too.
These tests check it on generated paths, rules and bodies, and that the Lua does allow
the ordinary cases (else the fast path would serve nothing governed).
"""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.errors import RelayError
from authz.fastpath.governance_lua import GOVERNANCE_LUA, exhausted_table, policy_tables
from authz.fastpath.resources import FastTenant, firebase_issuer, lua_source
from authz.governance.endpoints import openai_path
from authz.governance.models import Body, check_model
from authz.governance.policy import EffectivePolicy, parse_policy

lupa = pytest.importorskip("lupa.luajit21")

EXPORTS = """
return {openai_path = openai_path, maybe_chat_path = maybe_chat_path,
        endpoint_allowed = endpoint_allowed,
        body_model = body_model, model_allowed = model_allowed}
"""


@pytest.fixture(scope="module")
def lua():
    runtime = lupa.LuaRuntime(encoding=None)  # bytes in, bytes out: as Envoy's strings
    return runtime, runtime.execute(GOVERNANCE_LUA.encode() + EXPORTS.encode())


def lua_text(value):
    return None if value is None else value.decode("utf-8")


# -- paths ---------------------------------------------------------------------------
PATH_CHARS = string.ascii_letters + string.digits + "/._-~%?#:@!$&'()*+,;=\\ \x7f\x00é"


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=PATH_CHARS, max_size=40))
def test_the_lua_path_is_the_services_or_nothing(lua, tail):
    _, fns = lua
    for raw in ("/api/openai" + tail, "/api/openai/" + tail, "/api/openai/v1/" + tail):
        found = lua_text(fns.openai_path(raw.encode("utf-8")))
        # None: the service decides (it may well allow); a path: exactly the service's.
        assert found is None or found == openai_path(raw), raw


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=PATH_CHARS, max_size=12),
       st.sampled_from(["/api/openai/v1/chat/completions", "/api/openai/v1/chat/",
                        "/api/openai/v1/", "/api/openai/v1/chat/completion"]))
def test_every_chat_completion_path_is_seen_as_one(lua, tail, head):
    """The fast path reads the body of whatever the service may call a chat completion
    (it alone asks such a request's stream for usage)."""
    raw = head + tail
    if openai_path(raw) == "/v1/chat/completions":
        assert lua[1].maybe_chat_path(raw.encode("utf-8")), raw
    if "%" not in raw and lua[1].maybe_chat_path(raw.encode("utf-8")):
        assert openai_path(raw) == "/v1/chat/completions", raw


@pytest.mark.parametrize(("raw", "expected"), [
    ("/api/openai/v1/chat/completions", "/v1/chat/completions"),
    ("/api/openai/v1/models/gpt-4o?x=1", "/v1/models/gpt-4o"),
    ("/api/openai", "/v1/responses"),
    ("/api/openai/", "/v1/responses"),
    ("/api/openai/v1/files#frag", "/v1/files"),
])
def test_ordinary_paths_are_read_in_envoy(lua, raw, expected):
    assert lua_text(lua[1].openai_path(raw.encode())) == expected


@pytest.mark.parametrize("raw", [
    "/api/openai/v1/%63hat/completions", "/api/openai/v1//files", "/api/openai/v1/./files",
    "/api/openai/v1/a/../files", "/api/openai/v1/a\\b", "/api/openaiv1", "/other/v1/files",
])
def test_odd_or_escaped_paths_are_left_to_the_service(lua, raw):
    assert lua[1].openai_path(raw.encode()) is None


# -- endpoint rules --------------------------------------------------------------------
RULES = ["POST /v1/chat/completions", "GET /v1/models/*", "* /v1/files", "DELETE /v1/files/*",
         "POST /v1/responses", "GET /v1/models"]
METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH"]
PATHS = ["/v1/chat/completions", "/v1/models", "/v1/models/", "/v1/models/gpt-4o",
         "/v1/files", "/v1/files/file-1", "/v1/filesx", "/v1/responses", "/v1/responses/r1"]


def lua_policy(runtime, policy):
    lines, refs = policy_tables([policy])
    return runtime.execute(("\n".join(lines) + f"\nreturn {refs[0]}").encode())


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.just("inference"), st.lists(st.sampled_from(RULES), min_size=1, max_size=4)),
       st.sampled_from(METHODS), st.sampled_from(PATHS))
def test_endpoint_rules_allow_exactly_what_the_policy_allows(lua, endpoints, method, path):
    runtime, fns = lua
    policy = parse_policy({"endpoints": endpoints})
    table = lua_policy(runtime, policy)
    allowed = fns.endpoint_allowed(table[b"endpoints"], method.encode(), path.encode())
    assert allowed is policy.allows_endpoint(method, path)


# -- model allow-list --------------------------------------------------------------------
def service_allows(policy, raw: bytes) -> bool:
    try:
        check_model(EffectivePolicy.of(policy), Body(raw))
    except RelayError:
        return False
    return True


MODELS_POLICY = parse_policy({"models": ["gpt-4o-mini", "text-embedding-3-*"]})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8)
models = st.sampled_from(["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "", "gpt-4o-mini "])


def lua_allows(lua, raw: bytes) -> bool:
    runtime, fns = lua
    table = lua_policy(runtime, MODELS_POLICY)
    return bool(fns.model_allowed(table[b"models"], fns.body_model(raw)))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=4), models,
       st.booleans(), st.sampled_from(["", " ", "\n\t"]))
def test_well_formed_bodies_are_judged_as_the_service_judges_them(lua, document, model,
                                                                   ascii_only, space):
    document = {**document, "model": model}
    raw = (space + json.dumps(document, ensure_ascii=ascii_only) + space).encode("utf-8")
    allowed = lua_allows(lua, raw)
    if b"\\u" not in raw:
        # Plain JSON is read in Envoy: the same verdict both ways.
        assert allowed is service_allows(MODELS_POLICY, raw), raw
    else:
        assert not allowed or service_allows(MODELS_POLICY, raw), raw


MUTATIONS = [b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b" ", b"0", b"-", b".", b"e",
             b"NaN", b"Infinity", b"\x00", b"\x1f", b"\xff", b"\xc0\xaf", b"\xed\xa0\x80",
             b'"model":"gpt-4o-mini"', b"true", b"nul", b"01", b"1.", b"\xef\xbb\xbf"]


@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=3), models,
       st.lists(st.tuples(st.integers(0, 200), st.sampled_from(MUTATIONS),
                          st.booleans()), min_size=1, max_size=3))
def test_whatever_the_lua_allows_the_service_allows(lua, document, model, edits):
    raw = bytearray(json.dumps({**document, "model": model}, ensure_ascii=False).encode())
    for position, piece, replace in edits:
        position = min(position, len(raw))
        raw[position:position + (1 if replace else 0)] = piece
    if lua_allows(lua, bytes(raw)):
        assert service_allows(MODELS_POLICY, bytes(raw)), bytes(raw)


@pytest.mark.parametrize(("raw", "allowed"), [
    (b'{"model": "gpt-4o-mini", "input": "hi"}', True),
    (b'{"input": {"model": "gpt-4o-mini"}, "model": "text-embedding-3-large"}', True),
    (b'{"model": "gpt-4o"}', False),
    (b'{"model": "gpt-4o-mini", "model": "gpt-4o-mini"}', False),  # the service: 400
    (b'{"input": "x"}', False),
    (b'{"model": "gpt-4o-mini"} x', False),
    (b'{"model": "gpt-4o-mini", "x": NaN}', False),
    (b'{"model": "gpt-4o-mini", "x": 01}', False),
    (b'{"model": "gpt-4o-mini", "x": "\xed\xa0\x80"}', False),
    (b'{"model": "gpt-4o-mini", "x": "\xc3\xa9\xf0\x9f\x98\x80"}', True),
    (b'{"model": "gpt-4o-mini", "x": ' + b"[" * 70 + b"]" * 70 + b"}", False),
    (b'{"model": "gpt-4o-mini", "x": ' + b"[" * 30 + b"]" * 30 + b"}", True),
    (b'{"model": "gpt\\/4o-mini"}', False),
    (b'{"model": 7}', False),
    (b'{"model": "gpt-4o-mini", "x": ' + b"1" * 5000 + b"}", False),  # Python: too long
    (b'{"model": "gpt-4o-mini", "x": -0.5e-3}', True),
    (b'[{"model": "gpt-4o-mini"}]', False),
])
def test_model_examples(lua, raw, allowed):
    assert lua_allows(lua, raw) is allowed
    if allowed:
        assert service_allows(MODELS_POLICY, raw)


# -- the tables ---------------------------------------------------------------------------
def test_equal_policies_share_one_entry_and_none_checks_nothing():
    inference = parse_policy({"endpoints": "inference"})
    lines, refs = policy_tables([None, inference, parse_policy({"endpoints": "inference"}),
                                 MODELS_POLICY])
    assert refs == ["false", "POLICIES[1]", "POLICIES[1]", "POLICIES[2]"]
    assert len(lines) == 4


def test_exhausted_table_names_tenants_and_users(lua):
    runtime, _ = lua
    lines = exhausted_table({"acme": True, "globex": frozenset({"u1", 'q"\\'}), "idle": False})
    table = runtime.execute(("\n".join(lines) + "\nreturn EXHAUSTED").encode())
    assert table[b"acme"] is True
    assert table[b"globex"][b"u1"] is True
    assert table[b"globex"][b'q"\\'] is True
    assert table[b"idle"] is None


def test_the_whole_generated_filter_compiles_in_luajit():
    """Lua refuses a whole script for one error (Envoy then rejects the push)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    source = lua_source(
        [firebase_issuer("demo", {"k": key}, ("clientId",))],
        [FastTenant("acme", "sk-1"), FastTenant("globex", "sk-2", policy=MODELS_POLICY)],
        30, {"acme": frozenset({"u1"})})
    runtime = lupa.LuaRuntime(encoding=None)
    runtime.execute(source.encode())
    assert runtime.eval("type(envoy_on_request)") == b"function"
