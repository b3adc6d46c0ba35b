"""The fast path's token checks (jws_lua.py), run in LuaJIT (lupa) against the service's.

As for governance, the property that matters is one-sided: a token the Lua accepts is
one the service accepts, with the same header and claims. The Lua's base64url and JSON
decoders are checked on generated and mutated input against authz/credentials/jose;
signatures are checked by a stand-in for Envoy's verifySignature built on `cryptography`
(the real one is BoringSSL's, exercised by tests/integration/test_fast_path.py).
"""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.credentials.jose.jwt import parse
from authz.errors import AuthenticationFailed
from authz.fastpath.resources import FastTenant, firebase_issuer, lua_source

lupa = pytest.importorskip("lupa.luajit21")

PROJECT = "demo-relay"
ISSUER = f"https://securetoken.google.com/{PROJECT}"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
HASHES = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}

EXPORTS = """
local function check(verify, token)
  local handle = {
    importPublicKey = function(_, der, length)
      return {get = function() return string.sub(der, 1, length) end}
    end,
    verifySignature = function(_, hash, key, signature, signature_length, text, text_length)
      return verify(hash, key, string.sub(signature, 1, signature_length),
                    string.sub(text, 1, text_length))
    end,
  }
  local issuer, payload = verified_token(handle, token)
  return issuer ~= nil, payload
end
return {b64url_decode = b64url_decode, json_object = json_object, check = check,
        is_null = function(value) return value == NULL end}
"""


def verify(hash_name: bytes, der: bytes, signature: bytes, text: bytes) -> bool:
    key = load_der_public_key(der)
    assert isinstance(key, rsa.RSAPublicKey)
    try:
        key.verify(signature, text, padding.PKCS1v15(), HASHES[hash_name.decode()])
    except InvalidSignature:
        return False
    return True


@pytest.fixture(scope="module")
def lua():
    issuer = firebase_issuer(PROJECT, {"kid-1": KEY.public_key()}, ("clientId",))
    source = lua_source([issuer], [FastTenant("acme", "sk-acme-1")], 30)
    runtime = lupa.LuaRuntime(encoding=None)  # bytes in, bytes out: as Envoy's strings
    return runtime.execute((source + EXPORTS).encode())


def from_lua(fns, value):
    """A decoded Lua value as Python: objects to dicts, arrays to lists, NULL to None."""
    if fns.is_null(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if lupa.lua_type(value) == "table":
        items = dict(value.items())
        if items and all(isinstance(k, int) for k in items):
            return [from_lua(fns, items[i]) for i in range(1, len(items) + 1)]
        return {k.decode("utf-8"): from_lua(fns, v) for k, v in items.items()}
    return value


def normal(value):
    """Python's value as the Lua sees it: an empty list and an empty object are alike."""
    if isinstance(value, list):
        return [normal(v) for v in value] if value else {}
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items()}
    return value


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def service_object(raw: bytes):
    """The service's reading of a token payload, or None when it refuses it."""
    try:
        return parse(f"{b64(b'{}')}.{b64(raw)}.c2ln").payload
    except AuthenticationFailed:
        return None


# -- base64url -----------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=70))
def test_base64url_decodes_what_the_service_decodes(lua, raw):
    assert lua.b64url_decode(b64(raw).encode()) == raw


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="ABCDQRSTwxyz0189-_+/=. ", max_size=12))
def test_base64url_accepts_only_what_the_service_accepts(lua, segment):
    decoded = lua.b64url_decode(segment.encode())
    if decoded is None:
        return
    # The service's decoder is strict and canonical: the same bytes, or a refusal.
    token = parse(f"{b64(b'{}')}.{b64(b'{}')}.{segment}") if segment else None
    assert token is None or token.signature == decoded


# -- JSON ----------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12)
    | st.floats(-1e6, 1e6).map(lambda f: round(f, 3)) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=10,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5), st.booleans())
def test_json_objects_are_read_as_the_service_reads_them(lua, document, ascii_only):
    raw = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8")
    decoded = lua.json_object(raw)
    assert decoded is not None, raw
    assert from_lua(lua, decoded) == normal(service_object(raw))


EDITS = ['"', "\\", "\\u", "\\ud800", "\\udc00", "{", "}", "[", "]", ",", ":", "1", "-",
         "e", ".", "0", " ", "\x00", "\x1f", "\xff", "é", "NaN", "Infinity", "1e999",
         "true", "null", '"a"', '"a":1']


@settings(max_examples=2000, deadline=None)
@given(st.dictionaries(st.text(max_size=4), json_values, max_size=3),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 2), st.sampled_from(EDITS)),
                min_size=1, max_size=3))
def test_whatever_json_the_lua_reads_the_service_reads_alike(lua, document, edits):
    text = json.dumps(document, ensure_ascii=False)
    for at, drop, insert in edits:
        at %= len(text) + 1
        text = text[:at] + insert + text[at + drop:]
    raw = text.encode("utf-8", "surrogatepass")
    decoded = lua.json_object(raw)
    if decoded is not None:
        assert from_lua(lua, decoded) == normal(service_object(raw)), raw


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"a":"\\ud83d\\ude00 \\u00e9\\n"}', {"a": "\U0001f600 \u00e9\n"}),
    (b' {"a" : [1, 2.5, -3e2, true, false, null, {}]} ', {"a": [1, 2.5, -300, True, False,
                                                                None, {}]}),
    (b'{"a":{"b":{"c":"d"}}}', {"a": {"b": {"c": "d"}}}),
])
def test_json_examples_read_in_envoy(lua, raw, expected):
    assert from_lua(lua, lua.json_object(raw)) == normal(expected)


@pytest.mark.parametrize("raw", [
    b'{"a":1,"a":2}',            # a duplicate member: the service refuses the token
    b'{"a":"\\ud800"}',          # a lone surrogate: Python keeps it; left to the service
    b'{"a":1e999}',              # overflows a double
    b'{"a":NaN}', b'{"a":Infinity}',
    b'{"a":1234567890123456}',   # longer than the Lua is sure of
    b'\xef\xbb\xbf{}',           # a BOM
    b'{"a":"\xc3"}',             # not UTF-8
    b'{"a":"\xed\xa0\x80"}',     # an encoded surrogate
    b'[1]', b'"a"', b'{} {}', b'{"a":1,}', b'{"a":01}', b'{"a":"\x01"}',
    b'{"a":' * 70 + b"1" + b"}" * 70,
])
def test_json_the_lua_is_not_sure_of_is_left_to_the_service(lua, raw):
    assert lua.json_object(raw) is None


# -- the token -----------------------------------------------------------------------
def token(claims=None, header=None, key=KEY, alg="RS256", digest=None, *, sign=True) -> str:
    head = {"alg": alg, "kid": "kid-1", "typ": "JWT", **(header or {})}
    body = {"iss": ISSUER, "aud": PROJECT, "sub": "u1", "clientId": "acme",
            **(claims or {})}
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(body).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(),
                         digest or hashes.SHA256()) if sign else b""
    return f"{signing_input}.{b64(signature)}"


def check(lua, text: str):
    ok, payload = lua.check(verify, text.encode())
    return ok, (from_lua(lua, payload) if ok else None)


def test_a_signed_token_is_verified_and_its_claims_read(lua):
    ok, payload = check(lua, token({"clientId": "acme", "n": [1, {"x": None}]}))
    assert ok
    assert payload == {"iss": ISSUER, "aud": PROJECT, "sub": "u1", "clientId": "acme",
                       "n": [1, {"x": None}]}


@pytest.mark.parametrize("text", [
    token(key=OTHER_KEY),                                   # another signer
    token(alg="RS384", digest=hashes.SHA384()),             # not Firebase's algorithm
    token(alg="none", sign=False),
    token(alg="HS256"),
    token(header={"kid": "kid-2"}),                         # a key it does not hold
    token(header={"kid": ""}),
    token(header={"kid": None}),
    token(header={"crit": ["exp"]}),
    token({"iss": "https://securetoken.google.com/other"}),
    token(sign=False),
    token() + "A",                                          # a non-canonical signature
    token().replace(".", "=.", 1),                          # padding
    token().split(".", 1)[0] + ".." + token().split(".")[2],
])
def test_tokens_the_service_refuses_are_not_verified(lua, text):
    assert check(lua, text) == (False, None)


def test_a_tampered_payload_is_not_verified(lua):
    head, body, signature = token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged = b64(json.dumps({**claims, "clientId": "globex"}).encode())
    assert check(lua, f"{head}.{forged}.{signature}") == (False, None)
