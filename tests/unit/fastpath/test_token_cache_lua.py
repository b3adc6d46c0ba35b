"""The fast path's cache of verified tokens (resources.py `served`), run in LuaJIT (lupa).

A token seen again is not verified again while it is remembered; the cache is bounded
(two generations of CACHE_MAX), and one that fills up keeps the tokens in use instead
of forgetting every token at once. Signatures are checked by a stand-in for Envoy's
verifySignature (as in test_jws_lua.py) that counts its calls.
"""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from authz.fastpath.resources import (
    LUA_CACHE_SIZE,
    FastTenant,
    firebase_issuer,
    lua_source,
)

lupa = pytest.importorskip("lupa.luajit21")

PROJECT = "demo-relay"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SMALL = 3  # CACHE_MAX for these tests

EXPORTS = """
local verifications = 0
local function request(authorization)
  local headers = {
    getNumValues = function(_, name) return name == "authorization" and 1 or 0 end,
    get = function(_, name) if name == "authorization" then return authorization end end,
  }
  local handle = {
    importPublicKey = function(_, der, length)
      return {get = function() return string.sub(der, 1, length) end}
    end,
    -- Only signatures made by the test's key over the signing input are made here.
    verifySignature = function() verifications = verifications + 1; return true end,
  }
  local client_id, _, _, user = served(handle, headers)
  return client_id, user
end
local function remembered()
  local count = 0
  for _ in pairs(CACHE) do count = count + 1 end
  for _ in pairs(PREVIOUS) do count = count + 1 end
  return count
end
return {request = request, remembered = remembered,
        verifications = function() return verifications end}
"""


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def bearer(user: str) -> bytes:
    now = int(time.time())
    head = {"alg": "RS256", "kid": "kid-1", "typ": "JWT"}
    body = {"iss": f"https://securetoken.google.com/{PROJECT}", "aud": PROJECT,
            "sub": user, "clientId": "acme", "iat": now - 60, "auth_time": now - 60,
            "exp": now + 3600}
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(body).encode())}"
    signature = KEY.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"Bearer {signing_input}.{b64(signature)}".encode()


@pytest.fixture
def lua():
    issuer = firebase_issuer(PROJECT, {"kid-1": KEY.public_key()}, ("clientId",))
    source = lua_source([issuer], [FastTenant("acme", "sk-acme-1")], 30)
    source, replaced = re.subn(rf"^local CACHE_MAX = {LUA_CACHE_SIZE}$",
                               f"local CACHE_MAX = {SMALL}", source, flags=re.MULTILINE)
    assert replaced == 1
    runtime = lupa.LuaRuntime(encoding=None)
    return runtime.execute((source + EXPORTS).encode())


def test_a_token_seen_again_is_not_verified_again(lua):
    token = bearer("u1")
    assert tuple(lua.request(token)) == (b"acme", b"u1")
    assert tuple(lua.request(token)) == (b"acme", b"u1")
    assert lua.verifications() == 1


def test_a_full_cache_keeps_the_tokens_in_use(lua):
    users = [f"u{i}".encode() for i in range(SMALL + 1)]
    tokens = {bearer(user.decode()): user for user in users}
    for token in tokens:
        lua.request(token)
    assert lua.verifications() == SMALL + 1  # the last one started a new generation
    # Those of the full generation are still remembered: used again, not verified again.
    for token in tokens:
        assert tuple(lua.request(token)) == (b"acme", tokens[token])
    assert lua.verifications() == SMALL + 1


def test_tokens_no_longer_used_age_out_and_the_cache_stays_bounded(lua):
    old = bearer("old")
    lua.request(old)
    for i in range(2 * SMALL + 1):  # two generations' worth of other tokens
        lua.request(bearer(f"other{i}"))
        assert lua.remembered() <= 2 * SMALL
    before = lua.verifications()
    assert tuple(lua.request(old)) == (b"acme", b"old")
    assert lua.verifications() == before + 1  # forgotten, so verified again
