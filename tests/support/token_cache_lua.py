"""The fast path's token cache (authz/fastpath/resources.py `served`) run in LuaJIT (lupa),
for its unit tests and bench/token_cache.py.

The generated filter is loaded with a small cache size and a stand-in for Envoy's
request handle whose verifySignature counts its calls and says yes: what is measured is
which requests the cache spares a verification, not the verification itself.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from authz.fastpath.resources import (
    LUA_CACHE_SIZE,
    FastIssuer,
    FastTenant,
    firebase_issuer,
    lua_source,
)
from tests.support.firebase import b64url_encode

PROJECT = "demo-relay"
CLIENT_ID = "acme"

_EXPORTS = """
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


@functools.cache
def _issuer() -> FastIssuer:
    """One signing key for every filter loaded here (the stand-in never verifies)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return firebase_issuer(PROJECT, {"kid-1": key}, ("clientId",))


def token_cache(cache_max: int, *, single_table: bool = False) -> Any:
    """The generated filter with CACHE_MAX = cache_max, exporting request(authorization)
    → (client_id, user), verifications() and remembered(). single_table: the cache as it
    was before its two generations (one table, emptied when full)."""
    import lupa.luajit21 as lupa

    source = lua_source([_issuer()], [FastTenant(CLIENT_ID, "sk-acme-1")], 30)
    source, replaced = re.subn(rf"^local CACHE_MAX = {LUA_CACHE_SIZE}$",
                               f"local CACHE_MAX = {cache_max}", source, flags=re.MULTILINE)
    if replaced != 1:
        raise AssertionError("CACHE_MAX not found in the generated filter")
    if single_table:
        source, replaced = re.subn(r"^    PREVIOUS = CACHE$", "    PREVIOUS = {}", source,
                                   flags=re.MULTILINE)
        if replaced != 1:
            raise AssertionError("the generation change not found in the generated filter")
    runtime = lupa.LuaRuntime(encoding=None)  # bytes in, bytes out: as Envoy's strings
    return runtime.execute((source + _EXPORTS).encode())


def bearer(user: str, now: int) -> bytes:
    """An Authorization value the filter accepts once its signature check says yes (the
    signature segment is a placeholder: the stand-in never reads it)."""
    head = {"alg": "RS256", "kid": "kid-1", "typ": "JWT"}
    body = {"iss": f"https://securetoken.google.com/{PROJECT}", "aud": PROJECT,
            "sub": user, "clientId": CLIENT_ID, "iat": now - 60, "auth_time": now - 60,
            "exp": now + 3600}
    segments = (json.dumps(head).encode(), json.dumps(body).encode(), b"signature" * 28)
    return ("Bearer " + ".".join(b64url_encode(s) for s in segments)).encode()
