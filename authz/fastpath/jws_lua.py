"""Token verification on the fast path: the Lua that decodes and checks a compact JWS.

Envoy's jwt_authn filter used to do this step. It cost more Envoy CPU per request than
everything else the fast path adds (docs/benchmark.md): even for a token in its cache it
copies the token's header and payload into dynamic metadata as protobuf structs, on every
request. The Lua filter already remembers every token it served, so it now checks a
token itself, once per token per worker, and a token seen again costs one table lookup.

The rules are the service's (authz/credentials/jose/jwt.py), allow-only like the rest
of the fast path: a token the Lua cannot prove the service would accept is left to it.
- Base64url without padding, canonical (no stray bits in the last character).
- Header and payload: JSON objects, as Python's strict decoder reads them: no duplicate
  member names, only finite numbers, valid UTF-8; \\u escapes are decoded (a lone
  surrogate, which only Python keeps, is left to the service), nesting deeper than
  MAX_DEPTH and numbers of more than MAX_NUMBER characters too.
- The signature: RSASSA-PKCS1-v1_5 with SHA-256/384/512 (RS256/384/512, the only
  algorithms the service knows), checked by Envoy's own BoringSSL (the Lua API's
  importPublicKey and verifySignature) with the key the header's kid names, and only
  under that key's own alg when the key has one.

It uses the JSON helpers of GOVERNANCE_LUA (skip_ws, scan_number, utf8_valid), which
come first in the generated filter (resources.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from authz.fastpath.lua_text import lua_string

# Raw: the Lua below is exactly what Envoy runs (its backslashes are Lua's).
JWS_LUA = r"""
-- JSON null, kept as a value: a claim that is present and null is not a missing one.
local NULL = setmetatable({}, {__tostring = function() return "null" end})
local MAX_NUMBER = 15  -- characters: any longer number is left to the service
local HASHES = {RS256 = "sha256", RS384 = "sha384", RS512 = "sha512"}

local B64 = {}
do
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
  for i = 1, 64 do B64[string.byte(alphabet, i)] = i - 1 end
end

-- Strict, canonical base64url without padding, or nil. Bytes are gathered as numbers
-- and turned into a string a few thousand at a time (not one small string per group).
local function b64url_decode(s)
  local n = #s
  if n % 4 == 1 or string.find(s, "[^A-Za-z0-9_%-]") then return nil end
  local bytes, count, parts = {}, 0, {}
  local i = 1
  while i + 3 <= n do
    local a, b, c, d = string.byte(s, i, i + 3)
    local v = ((B64[a] * 64 + B64[b]) * 64 + B64[c]) * 64 + B64[d]
    bytes[count + 1] = math.floor(v / 65536)
    bytes[count + 2] = math.floor(v / 256) % 256
    bytes[count + 3] = v % 256
    count = count + 3
    if count >= 3000 then
      parts[#parts + 1] = string.char(unpack(bytes, 1, count))
      count = 0
    end
    i = i + 4
  end
  local rest = n - i + 1
  if rest == 2 then
    local a, b = B64[string.byte(s, i)], B64[string.byte(s, i + 1)]
    if b % 16 ~= 0 then return nil end
    bytes[count + 1] = a * 4 + b / 16
    count = count + 1
  elseif rest == 3 then
    local a, b, c = B64[string.byte(s, i)], B64[string.byte(s, i + 1)], B64[string.byte(s, i + 2)]
    if c % 4 ~= 0 then return nil end
    local v = (a * 64 + b) * 64 + c
    bytes[count + 1] = math.floor(v / 1024)
    bytes[count + 2] = math.floor(v / 4) % 256
    count = count + 2
  end
  parts[#parts + 1] = string.char(unpack(bytes, 1, count))
  return table.concat(parts)
end

local function utf8_char(cp)
  if cp < 128 then return string.char(cp) end
  if cp < 2048 then return string.char(192 + math.floor(cp / 64), 128 + cp % 64) end
  if cp < 65536 then
    return string.char(224 + math.floor(cp / 4096), 128 + math.floor(cp / 64) % 64,
                       128 + cp % 64)
  end
  return string.char(240 + math.floor(cp / 262144), 128 + math.floor(cp / 4096) % 64,
                     128 + math.floor(cp / 64) % 64, 128 + cp % 64)
end

local ESCAPES = {['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\008", f = "\012", n = "\n",
                 r = "\r", t = "\t"}

-- The string that starts at i (a quote) and the index after it, or nil.
local function decode_string(s, i)
  -- Most strings hold no escape: their text is the source's, as it is.
  local first = string.find(s, '["\\%z\1-\31]', i + 1)
  if first ~= nil and string.byte(s, first) == 34 then
    return string.sub(s, i + 1, first - 1), first + 1
  end
  local parts = {}
  local j = i + 1
  while true do
    local k = string.find(s, '["\\%z\1-\31]', j)
    if k == nil then return nil end
    parts[#parts + 1] = string.sub(s, j, k - 1)
    local c = string.byte(s, k)
    if c == 34 then return table.concat(parts), k + 1 end
    if c ~= 92 then return nil end
    local e = string.sub(s, k + 1, k + 1)
    if e == "u" then
      local hex = string.match(s, "^%x%x%x%x", k + 2)
      if hex == nil then return nil end
      local cp = tonumber(hex, 16)
      j = k + 6
      if cp >= 0xD800 and cp <= 0xDBFF then
        local low = string.match(s, "^\\u(%x%x%x%x)", j)
        low = low and tonumber(low, 16)
        if low == nil or low < 0xDC00 or low > 0xDFFF then return nil end
        cp = 0x10000 + (cp - 0xD800) * 1024 + (low - 0xDC00)
        j = j + 6
      elseif cp >= 0xDC00 and cp <= 0xDFFF then
        return nil
      end
      parts[#parts + 1] = utf8_char(cp)
    else
      local char = ESCAPES[e]
      if char == nil then return nil end
      parts[#parts + 1] = char
      j = k + 2
    end
  end
end

local JSON_LITERALS = {t = {"true", true}, f = {"false", false}, n = {"null", NULL}}

-- The value that starts at i and the index after it, or nil. Objects are tables with
-- string keys, arrays tables with 1..n.
local function decode_value(s, i, depth)
  local c = string.sub(s, i, i)
  if c == '"' then return decode_string(s, i) end
  if c == "{" or c == "[" then
    if depth >= MAX_DEPTH then return nil end
    local close = (c == "{") and "}" or "]"
    local out, count = {}, 0
    i = skip_ws(s, i + 1)
    if string.sub(s, i, i) == close then return out, i + 1 end
    while true do
      local key
      if c == "{" then
        if string.sub(s, i, i) ~= '"' then return nil end
        key, i = decode_string(s, i)
        if key == nil or out[key] ~= nil then return nil end  -- duplicates: the service's
        i = skip_ws(s, i)
        if string.sub(s, i, i) ~= ":" then return nil end
        i = skip_ws(s, i + 1)
      else
        count = count + 1
        key = count
      end
      local value
      value, i = decode_value(s, i, depth + 1)
      if i == nil then return nil end
      out[key] = value
      i = skip_ws(s, i)
      local sep = string.sub(s, i, i)
      if sep == close then return out, i + 1 end
      if sep ~= "," then return nil end
      i = skip_ws(s, i + 1)
    end
  end
  local literal = JSON_LITERALS[c]
  if literal ~= nil then
    if string.sub(s, i, i + #literal[1] - 1) == literal[1] then
      return literal[2], i + #literal[1]
    end
    return nil
  end
  local after = scan_number(s, i)
  if after == nil or after - i > MAX_NUMBER then return nil end
  local number = tonumber(string.sub(s, i, after - 1))
  -- Python refuses what overflows a double (1e999), as it refuses NaN.
  if number == nil or number ~= number or number == math.huge or number == -math.huge then
    return nil
  end
  return number, after
end

-- A JSON object as Python's strict decoder reads it, or nil.
local function json_object(s)
  if s == nil then return nil end
  if string.find(s, "[\128-\255]") and not utf8_valid(s) then return nil end
  local i = skip_ws(s, 1)
  if string.sub(s, i, i) ~= "{" then return nil end
  local value, after = decode_value(s, i, 0)
  if after == nil or skip_ws(s, after) ~= #s + 1 then return nil end
  return value
end

-- The issuer and payload of a token whose signature checks out, or nil. The payload is
-- decoded only once the signature holds: a forged token costs its header and an RSA
-- check, never a walk through a payload of up to 16 KiB.
local function verified_token(handle, token)
  local head, body, signature = string.match(token, "^([^.]+)%.([^.]+)%.([^.]+)$")
  if head == nil then return nil end
  local header = json_object(b64url_decode(head))
  if header == nil or header.crit ~= nil then return nil end
  local hash = HASHES[header.alg]  -- nil for anything but the three RSA names
  if hash == nil then return nil end
  if type(header.kid) ~= "string" or header.kid == "" then return nil end
  for _, issuer in ipairs(ISSUERS) do
    local key = issuer.keys[header.kid]
    if key ~= nil then
      -- The first issuer holding the kid decides: another one's token (or a kid two
      -- issuers share) then fails a check below and is left to the service.
      if not issuer.algorithms[header.alg] then return nil end
      if key[2] and key[2] ~= header.alg then return nil end
      local raw = b64url_decode(signature)
      if raw == nil or raw == "" then return nil end
      local signed = head .. "." .. body
      local ok = handle:verifySignature(
        hash, handle:importPublicKey(key[1], #key[1]):get(), raw, #raw, signed, #signed)
      if ok ~= true then return nil end
      local payload = json_object(b64url_decode(body))
      if payload == nil or payload.iss ~= issuer.iss then return nil end
      return issuer, payload
    end
  end
  return nil
end
"""


def lua_keys(keys: Mapping[str, tuple[RSAPublicKey, str | None]]) -> str:
    """An issuer's keys as a Lua table: kid → {DER SubjectPublicKeyInfo, alg or false}."""
    entries = []
    for kid in sorted(keys):
        key, alg = keys[kid]
        der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        alg_text = "false" if alg is None else lua_string(alg)
        entries.append(f"[{lua_string(kid)}] = {{{_lua_bytes(der)}, {alg_text}}}")
    return "{" + ", ".join(entries) + "}"


def _lua_bytes(raw: bytes) -> str:
    return '"' + "".join(f"\\{byte:03d}" for byte in raw) + '"'
