"""Governance on the fast path: the Lua that proves a request allowed, and its tables.

The same rules as authz/governance (policy.py, endpoints.py, models.py), applied by the
fast path's Lua filter to tenants it serves, *as allow-only checks*: a request every
check proves allowed is decided by Envoy; anything else (an endpoint or model the policy
does not list, a body the scanner cannot prove to be JSON Python's decoder reads the
same way, a user or tenant whose day's tokens are used up) is left to ext_authz, in the
same pass, which answers with the contract's status, body and order. So a denial's
status and body are the service's by construction; the Lua only has to be *no wider*
than the service, never exactly as narrow.

What each table holds:
- POLICIES: one entry per distinct policy of the served tenants (a tenant's record, or
  AUTHZ_DEFAULT_POLICY), referenced by the tenant table: `endpoints` (exact
  "METHOD /v1/path" keys, "*" for any method, and prefix rules) or false for "all";
  `models` (exact names and prefixes) or false for any model.
- EXHAUSTED: client_id → true (the tenant's tokens for the day are used up) or a set
  of users whose own are; computed by the control plane from the limiter's counts each
  poll (xds.py), so a budget used up is enforced within about a second of the usage
  that used it up reaching the service (Envoy's access log, at stream end).

Request-rate and concurrency limits need a count per request: a tenant with any of them
stays on ext_authz (tenants.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from authz.fastpath.lua_text import lua_string
from authz.governance.policy import Policy

#: client_id → True (the tenant is out of tokens today) or the users that are.
Exhausted = Mapping[str, bool | frozenset[str]]

# Raw: the Lua below is exactly what Envoy runs (its backslashes are Lua's).
GOVERNANCE_LUA = r"""
-- Whether a relay path might be a chat completion's (the only endpoint whose usage the
-- service may ask for): without a %-escape its OpenAI path is the relay path as it is,
-- up to a query or fragment; with one, it might be. Cheaper than openai_path.
local CHAT = "/api/openai/v1/chat/completions"
local function maybe_chat_path(raw)
  if string.find(raw, "%", 1, true) then return true end
  if string.sub(raw, 1, #CHAT) ~= CHAT then return false end
  local after = string.sub(raw, #CHAT + 1, #CHAT + 1)
  return after == "" or after == "?" or after == "#"
end
-- The OpenAI path of a relay path (authz/governance/endpoints.py openai_path), or nil
-- when the service must work it out: any %-escape, or anything it calls odd.
local function openai_path(raw)
  local path = string.match(raw, "^[^?#]*")
  if path == "/api/openai" or path == "/api/openai/" then return "/v1/responses" end
  if string.sub(path, 1, 12) ~= "/api/openai/" then return nil end
  path = string.sub(path, 12)
  if string.find(path, "[%z\1-\32%%\\\127-\255]") or string.find(path, "//", 1, true) then
    return nil
  end
  for segment in string.gmatch(path, "[^/]+") do
    if segment == "." or segment == ".." then return nil end
  end
  return path
end

local function endpoint_allowed(rules, method, path)
  if path == nil then return false end
  if rules.exact[method .. " " .. path] or rules.exact["* " .. path] then return true end
  for _, rule in ipairs(rules.prefixes) do
    if (rule[1] == "*" or rule[1] == method) and string.sub(path, 1, #rule[2]) == rule[2] then
      return true
    end
  end
  return false
end

-- A strict JSON scanner, only to prove that Python's decoder (strict, no NaN) reads the
-- body as an object naming one top-level "model" string. Whatever it is unsure of (a
-- \u escape, nesting past MAX_DEPTH, a very long number) it refuses.
local MAX_DEPTH = 64
local LITERALS = {t = "true", f = "false", n = "null"}
local scan_value

local function skip_ws(s, i)
  return string.find(s, "[^ \t\n\r]", i) or (#s + 1)
end

-- The index after the string that starts at i (a quote), or nil.
local function scan_string(s, i)
  local j = i + 1
  while true do
    local k = string.find(s, '["\\%z\1-\31]', j)
    if k == nil then return nil end
    local c = string.byte(s, k)
    if c == 34 then return k + 1 end
    if c ~= 92 or not string.find(s, '^["\\/bfnrt]', k + 1) then return nil end
    j = k + 2
  end
end

local function scan_number(s, i)
  local _, e = string.find(s, "^-?0", i)
  if e == nil then _, e = string.find(s, "^-?[1-9]%d*", i) end
  if e == nil then return nil end
  local _, f = string.find(s, "^%.%d+", e + 1)
  if f then e = f end
  _, f = string.find(s, "^[eE][-+]?%d+", e + 1)
  if f then e = f end
  -- Python refuses integers of more than 4300 digits: long numbers go to the service.
  if e - i >= 1000 then return nil end
  return e + 1
end

scan_value = function(s, i, depth)
  local c = string.sub(s, i, i)
  if c == '"' then return scan_string(s, i) end
  if c == "{" or c == "[" then
    if depth >= MAX_DEPTH then return nil end
    local close = (c == "{") and "}" or "]"
    i = skip_ws(s, i + 1)
    if string.sub(s, i, i) == close then return i + 1 end
    while true do
      if c == "{" then
        if string.sub(s, i, i) ~= '"' then return nil end
        i = scan_string(s, i)
        if i == nil then return nil end
        i = skip_ws(s, i)
        if string.sub(s, i, i) ~= ":" then return nil end
        i = skip_ws(s, i + 1)
      end
      i = scan_value(s, i, depth + 1)
      if i == nil then return nil end
      i = skip_ws(s, i)
      local sep = string.sub(s, i, i)
      if sep == close then return i + 1 end
      if sep ~= "," then return nil end
      i = skip_ws(s, i + 1)
    end
  end
  local literal = LITERALS[c]
  if literal ~= nil then
    if string.sub(s, i, i + #literal - 1) == literal then return i + #literal end
    return nil
  end
  return scan_number(s, i)
end

-- Python decodes the body as UTF-8 first: no overlong forms, surrogates or > U+10FFFF.
local function utf8_valid(s)
  local i = string.find(s, "[\128-\255]")
  while i do
    local c = string.byte(s, i)
    local n, lo, hi
    if c >= 194 and c <= 223 then n, lo, hi = 1, 128, 191
    elseif c == 224 then n, lo, hi = 2, 160, 191
    elseif c == 237 then n, lo, hi = 2, 128, 159
    elseif c >= 225 and c <= 239 then n, lo, hi = 2, 128, 191
    elseif c == 240 then n, lo, hi = 3, 144, 191
    elseif c >= 241 and c <= 243 then n, lo, hi = 3, 128, 191
    elseif c == 244 then n, lo, hi = 3, 128, 143
    else return false end
    local b = string.byte(s, i + 1)
    if b == nil or b < lo or b > hi then return false end
    for k = i + 2, i + n do
      b = string.byte(s, k)
      if b == nil or b < 128 or b > 191 then return false end
    end
    i = string.find(s, "[\128-\255]", i + n + 1)
  end
  return true
end

-- The name in the body's one top-level "model" (a string without escapes), or nil.
local function body_model(s)
  if string.find(s, "[\128-\255]") and not utf8_valid(s) then return nil end
  local i = skip_ws(s, 1)
  if string.sub(s, i, i) ~= "{" then return nil end
  i = skip_ws(s, i + 1)
  local model, seen = nil, 0
  if string.sub(s, i, i) ~= "}" then
    while true do
      if string.sub(s, i, i) ~= '"' then return nil end
      local key_end = scan_string(s, i)
      if key_end == nil then return nil end
      -- Without \u escapes no other spelling of a key can read as "model".
      local is_model = string.sub(s, i, key_end - 1) == '"model"'
      i = skip_ws(s, key_end)
      if string.sub(s, i, i) ~= ":" then return nil end
      i = skip_ws(s, i + 1)
      local value_start = i
      i = scan_value(s, i, 1)
      if i == nil then return nil end
      if is_model then
        seen = seen + 1
        model = string.sub(s, value_start, i - 1)
      end
      i = skip_ws(s, i)
      local sep = string.sub(s, i, i)
      if sep == "}" then break end
      if sep ~= "," then return nil end
      i = skip_ws(s, i + 1)
    end
  end
  if skip_ws(s, i + 1) ~= #s + 1 or seen ~= 1 then return nil end
  return string.match(model, '^"([^"\\]*)"$')
end

local function model_allowed(models, name)
  if name == nil then return false end
  if models.exact[name] then return true end
  for _, prefix in ipairs(models.prefixes) do
    if string.sub(name, 1, #prefix) == prefix then return true end
  end
  return false
end
"""


def _policy_table(policy: Policy) -> str:
    if policy.allows_all_endpoints:
        endpoints = "false"
    else:
        exact = ", ".join(f"[{lua_string(f'{method} {path}')}] = true"
                          for method, path in sorted(policy.exact_rules))
        prefixes = ", ".join(f"{{{lua_string(rule.method)}, {lua_string(rule.path)}}}"
                             for rule in policy.prefix_rules)
        endpoints = f"{{exact = {{{exact}}}, prefixes = {{{prefixes}}}}}"
    if policy.models is None:
        models = "false"
    else:
        exact = ", ".join(f"[{lua_string(m)}] = true" for m in sorted(set(policy.models))
                          if not m.endswith("*"))
        prefixes = ", ".join(lua_string(m[:-1]) for m in policy.models if m.endswith("*"))
        models = f"{{exact = {{{exact}}}, prefixes = {{{prefixes}}}}}"
    return f"{{endpoints = {endpoints}, models = {models}}}"


def policy_tables(policies: Sequence[Policy | None]) -> tuple[list[str], list[str]]:
    """The POLICIES table's lines, and for each of `policies` its reference in the tenant
    table ("false" for none: nothing to check). Equal policies share one entry."""
    index: dict[Policy, int] = {}
    lines = ["local POLICIES = {"]
    refs = []
    for policy in policies:
        if policy is None:
            refs.append("false")
            continue
        if policy not in index:
            index[policy] = len(index) + 1
            lines.append(f"  {_policy_table(policy)},")
        refs.append(f"POLICIES[{index[policy]}]")
    lines.append("}")
    return lines, refs


def exhausted_table(exhausted: Exhausted) -> list[str]:
    lines = ["local EXHAUSTED = {"]
    for client_id in sorted(exhausted):
        value = exhausted[client_id]
        if value is True:
            lines.append(f"  [{lua_string(client_id)}] = true,")
        elif value:
            users = ", ".join(f"[{lua_string(user)}] = true" for user in sorted(value))
            lines.append(f"  [{lua_string(client_id)}] = {{{users}}},")
    lines.append("}")
    return lines
