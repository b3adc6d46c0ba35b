"""The fast path's xDS resource: the Lua extension config Envoy decides with.

Protobuf lives here and in xds.py only. Every builder is a pure function of plain values
(keys, tenants, settings), so what Envoy is sent is unit-tested without an Envoy.

Parity with the authz service (authz/credentials/firebase.py, oidc.py, jose/jwt.py,
tenants/client_id.py) is kept by construction: the fast path only ever *allows*, and
only when every rule the service applies holds; on anything else it decides nothing
and ext_authz answers, with the contract's status and body, in the same pass.
What the Lua checks, per issuer (Firebase, each OIDC issuer):
- the token (jws_lua.py): a bearer header of the service's shape holding at most 16 KiB
  of token, exactly one authorization header; strict base64url and JSON; no `crit`;
  alg in the issuer's allow-list (RS256/384/512 only) and a non-empty kid naming one of
  the issuer's keys, whose own alg, when known, is the only one it verifies; the
  RSA signature, checked by Envoy's BoringSSL;
- the claims: iss; aud (Firebase: exactly the project, a string; OIDC: a string or a
  list holding one of the issuer's audiences); exp, iat (Firebase: and auth_time)
  numbers, not in the future, exp not past, nbf, and every time claim present a
  number; a non-empty sub of at most 128 (Firebase) or 255 (OIDC) bytes (the service
  counts characters: longer non-ASCII subjects go to ext_authz); and the clientId: the
  issuer's fixed one, or its claims in order (the first present decides; it must be a
  string naming a tenant in the table, whose ids are all valid).
A token that passed all of it is remembered (per Envoy worker, until the next config)
by its exact Authorization value with its exp, like the service's identity cache: a
token seen again costs one table lookup and its expiry check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from authz.credentials.firebase import ISSUER_PREFIX, FirebaseClaimsVerifier
from authz.credentials.jose.jwks import Jwk
from authz.credentials.jose.jwt import MAX_TOKEN_BYTES
from authz.credentials.oidc import MAX_SUBJECT_CHARS as OIDC_MAX_SUBJECT
from authz.credentials.oidc import OidcIssuer, OidcVerifier
from authz.fastpath.blocks import DECIDED_KEY, DECIDED_NAMESPACE, LUA_FILTER, NOOP_LUA
from authz.fastpath.governance_lua import (
    GOVERNANCE_LUA,
    Exhausted,
    exhausted_table,
    policy_tables,
)
from authz.fastpath.jws_lua import JWS_LUA, lua_keys
from authz.fastpath.lua_text import lua_string
from authz.governance.policy import Policy

# The access log reads the tenant from ext_authz's namespace; the fast path writes the
# same keys there, so one log format serves both paths.
LOG_NAMESPACE = "envoy.filters.http.ext_authz"
FIREBASE_MAX_SUBJECT = 128
# Verified tokens the Lua filter remembers per Envoy worker, in each of its two
# generations (so at most twice this many). One generation holds what the single,
# emptied-when-full table of before held: never a lower hit rate than it, at any number
# of active tokens (bench/token_cache.py measures both).
LUA_CACHE_SIZE = 10_000
# A POST body up to this size is read to see whether it might ask for a stream (the
# same bound as the ext_authz check's max_request_bytes in envoy/envoy.yaml).
MAX_CHECKED_BODY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class FastTenant:
    """A tenant the fast path serves: its key and optional OpenAI org/project."""

    client_id: str
    api_key: str = field(repr=False)
    organization: str | None = None
    project: str | None = None
    #: The policy Envoy enforces for it (governance_lua.py); None: nothing to check
    #: (the plain {"endpoints": "all"} with no models and no budgets).
    policy: Policy | None = None


@dataclass(frozen=True)
class FastIssuer:
    """One token issuer Envoy verifies, with the rules the service applies to it.

    Firebase: `firebase_issuer()`. OIDC: `oidc_issuer()` from an AUTHZ_OIDC_ISSUERS entry.
    """

    name: str  # "firebase", "oidc0", ...: for logs and tests
    issuer: str
    audiences: tuple[str, ...]
    #: True (Firebase): `aud` must be the one audience string. False (OIDC): a string
    #: or a list holding one of `audiences`.
    exact_audience: bool
    algorithms: tuple[str, ...]
    #: kid → (RSA key, the key's own alg or None).
    keys: Mapping[str, tuple[RSAPublicKey, str | None]]
    client_id_claims: tuple[str, ...]
    client_id: str | None  # every caller of this issuer is this tenant (OIDC option)
    not_after_now: tuple[str, ...]  # claims that may not lie in the future
    max_subject: int
    token_type: str


def firebase_issuer(project_id: str, keys: Mapping[str, RSAPublicKey],
                    client_id_claims: Sequence[str]) -> FastIssuer:
    return FastIssuer(
        name="firebase", issuer=ISSUER_PREFIX + project_id, audiences=(project_id,),
        exact_audience=True, algorithms=("RS256",),
        keys={kid: (key, "RS256") for kid, key in keys.items()},
        client_id_claims=tuple(client_id_claims), client_id=None,
        not_after_now=("iat", "auth_time"), max_subject=FIREBASE_MAX_SUBJECT,
        token_type=FirebaseClaimsVerifier.token_type)


def oidc_issuer(index: int, config: OidcIssuer, keys: Mapping[str, Jwk]) -> FastIssuer:
    return FastIssuer(
        name=f"oidc{index}", issuer=config.issuer, audiences=config.audiences,
        exact_audience=False, algorithms=config.algorithms,
        keys={kid: (jwk.key, jwk.alg) for kid, jwk in keys.items()},
        client_id_claims=config.client_id_claims, client_id=config.client_id,
        not_after_now=("iat",), max_subject=OIDC_MAX_SUBJECT,
        token_type=OidcVerifier.token_type)


def _lua_opt(value: str | None) -> str:
    return "false" if value is None else lua_string(value)


_LUA_BODY = """
-- Verified tokens by their exact Authorization value: a token seen again skips the
-- signature and the claim checks (as the service's identity cache does), but not its
-- expiry. The cache lives as long as this config: a push (new tenant table) starts it
-- empty. Two generations of CACHE_MAX: when the current one is full it becomes the
-- previous one (the one before is dropped), and a token found in the previous one moves
-- back. So the tokens in use stay and those no longer used age out, with no moment
-- where every token is verified again at once.
local CACHE, PREVIOUS = {}, {}
local CACHED = 0

local function remember(authorization, entry)
  if CACHED >= CACHE_MAX then
    PREVIOUS = CACHE
    CACHE = {}
    CACHED = 0
  end
  CACHE[authorization] = entry
  CACHED = CACHED + 1
end
-- Time claims that must be numbers whenever present (jose/jwt.py check_times).
local TIME_CLAIMS = {"iat", "auth_time", "nbf"}

local function claim(payload, path)
  local node = payload
  for _, part in ipairs(path) do
    if type(node) ~= "table" then return nil end
    node = node[part]
    if node == nil then return nil end
  end
  return node
end

local function num(value)
  return type(value) == "number"
end

local function audience_ok(issuer, aud)
  if type(aud) == "string" then
    if issuer.exact_audience then return aud == issuer.exact_audience end
    return issuer.audiences[aud] == true
  end
  if issuer.exact_audience or type(aud) ~= "table" then return false end
  for _, value in ipairs(aud) do
    if type(value) == "string" and issuer.audiences[value] == true then return true end
  end
  return false
end

local function decide(handle, headers, client_id, tenant, token_type, user)
  headers:replace("authorization", tenant[1])
  if tenant[2] then
    headers:replace("openai-organization", tenant[2])
  else
    headers:remove("openai-organization")
  end
  if tenant[3] then
    headers:replace("openai-project", tenant[3])
  else
    headers:remove("openai-project")
  end
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set(LOG_NAMESPACE, "client_id", client_id)
  metadata:set(LOG_NAMESPACE, "token_type", token_type)
  -- The user usage is counted under (the verified subject), as the service names it.
  metadata:set(LOG_NAMESPACE, "user", user)
  metadata:set(DECIDED_NAMESPACE, DECIDED_KEY, true)
end

-- The tenant of a verified token's payload, or nil (then ext_authz decides).
local function tenant_of(issuer, payload, now)
  if not audience_ok(issuer, payload.aud) then return nil end
  if not num(payload.exp) or payload.exp <= now + 1 - SKEW then return nil end
  for _, name in ipairs(issuer.not_after_now) do
    local value = payload[name]
    if not num(value) or value > now + SKEW then return nil end
  end
  -- A time claim that is present must be a number even where it is not needed.
  for _, name in ipairs(TIME_CLAIMS) do
    if payload[name] ~= nil and not num(payload[name]) then return nil end
  end
  if payload.nbf ~= nil and payload.nbf > now + SKEW then return nil end
  local sub = payload.sub
  if type(sub) ~= "string" or sub == "" or #sub > issuer.max_subject then return nil end
  -- The service counts a user by its subject less a "client-key:" prefix (pipeline
  -- user_of): such a subject is left to it, so both paths count the same user.
  if string.sub(sub, 1, 11) == "client-key:" then return nil end
  local client_id = issuer.client_id
  if not client_id then
    client_id = nil
    for _, path in ipairs(issuer.claims) do
      client_id = claim(payload, path)
      if client_id ~= nil then break end
    end
  end
  if type(client_id) ~= "string" then return nil end
  local tenant = TENANTS[client_id]
  if tenant == nil then return nil end
  return client_id, tenant
end

-- Uploads (multipart, octet-stream) stream past the service unread: it checks neither
-- their model nor whether they ask for a stream, so neither does this filter.
local function is_upload(headers)
  local content_type = string.lower(headers:get("content-type") or "")
  return string.find(content_type, "^%s*multipart/") ~= nil
    or string.find(content_type, "^%s*application/octet%-stream") ~= nil
end

-- The request body, whole ("" for none), or nil when the service must decide: a POST
-- of unknown length (no Content-Length), or any body of more than the 16 MiB the
-- service reads whole. Reading it waits for all of it, as the service's check would.
-- Another method without a Content-Length almost always has no body (a GET): then
-- Envoy has none to wait for; one that does is read (a body over Envoy's 17 MiB buffer
-- gets its 413 rather than the service's 403).
local function request_body(handle, headers, method)
  local length = tonumber(headers:get("content-length") or "")
  if length == nil and method == "POST" then return nil end
  if length ~= nil and length > MAX_BODY then return nil end
  if length == 0 then return "" end
  local body = handle:body()
  if body == nil then return "" end
  if body:length() > MAX_BODY then return nil end
  return body:getBytes(0, body:length())
end

-- The request's tenant, from the token cache or a verified token: client_id, tenant,
-- token type, subject; nil when the service must decide.
local function served(handle, headers)
  if headers:getNumValues("authorization") ~= 1 then return nil end
  local authorization = headers:get("authorization")
  -- os.time() is whole seconds: rounded so that each check is as strict as the service's.
  local now = os.time()
  local seen = CACHE[authorization]
  if seen == nil then
    seen = PREVIOUS[authorization]
    if seen ~= nil then
      PREVIOUS[authorization] = nil
      remember(authorization, seen)
    end
  end
  if seen ~= nil then
    if seen[3] > now + 1 - SKEW then
      return seen[1], seen[2], seen[4], seen[5]
    end
    CACHE[authorization] = nil
  end
  -- The service's shape of a bearer header: three base64url segments without padding
  -- (another spelling of the same token is not the same token), at most 16 KiB.
  local token = string.match(authorization,
    "^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9_%-]+%.[A-Za-z0-9_%-]+%.[A-Za-z0-9_%-]+) *$")
  if token == nil or #token > MAX_TOKEN then return nil end
  -- Protected: a Lua error (say, a key Envoy cannot import) must only mean "not served".
  local ok, issuer, payload = pcall(verified_token, handle, token)
  if not ok or issuer == nil then return nil end
  local client_id, tenant = tenant_of(issuer, payload, now)
  if client_id == nil then return nil end
  remember(authorization, {client_id, tenant, payload.exp, issuer.token_type, payload.sub})
  return client_id, tenant, issuer.token_type, payload.sub
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local client_id, tenant, token_type, user = served(handle, headers)
  if client_id == nil then return end
  -- Governance (governance_lua.py): every check here only proves a request allowed;
  -- whatever it cannot prove, the service answers.
  local exhausted = EXHAUSTED[client_id]
  if exhausted == true or (exhausted ~= nil and exhausted[user]) then return end
  local policy = tenant[4]
  local method = headers:get(":method")
  local raw_path = headers:get(":path")
  if policy and policy.endpoints
      and not endpoint_allowed(policy.endpoints, method, openai_path(raw_path)) then
    return
  end
  -- Only a chat completion can need usage asked for (the service's rule).
  local maybe_chat = method == "POST" and maybe_chat_path(raw_path)
  local models = policy and policy.models
  if (maybe_chat or models) and not is_upload(headers) then
    local bytes = request_body(handle, headers, method)
    if bytes == nil then return end
    -- A chat completion whose body might ask for a stream ("stream", or \\u escapes
    -- that could spell it) goes to the service: it decides whether a streamed chat
    -- completion needs usage asked for (the metering filter's `inject_usage`).
    if maybe_chat and (string.find(bytes, "stream", 1, true) ~= nil
        or string.find(bytes, "\\\\u", 1, true) ~= nil) then
      return
    end
    if models and bytes ~= "" and not model_allowed(models, body_model(bytes)) then return end
  end
  -- Fetched again: Envoy's header object does not outlive the wait for the body.
  return decide(handle, handle:headers(), client_id, tenant, token_type, user)
end
"""


def _lua_set(values: Sequence[str]) -> str:
    return "{" + ", ".join(f"[{lua_string(v)}] = true" for v in values) + "}"


def _lua_list(values: Sequence[str]) -> str:
    return "{" + ", ".join(lua_string(v) for v in values) + "}"


def _lua_issuer(issuer: FastIssuer) -> list[str]:
    return [
        "  {",
        f"    keys = {lua_keys(issuer.keys)},",
        f"    iss = {lua_string(issuer.issuer)},",
        f"    exact_audience = "
        f"{lua_string(issuer.audiences[0]) if issuer.exact_audience else 'false'},",
        f"    audiences = {_lua_set(issuer.audiences)},",
        f"    algorithms = {_lua_set(issuer.algorithms)},",
        f"    not_after_now = {_lua_list(issuer.not_after_now)},",
        f"    max_subject = {int(issuer.max_subject)},",
        f"    client_id = {_lua_opt(issuer.client_id)},",
        "    claims = {"
        + ", ".join(_lua_list(name.split(".")) for name in issuer.client_id_claims) + "},",
        f"    token_type = {lua_string(issuer.token_type)},",
        "  },",
    ]


def lua_source(issuers: Sequence[FastIssuer], tenants: Sequence[FastTenant],
               clock_skew_s: float, exhausted: Exhausted | None = None,
               invalidations: int = 0) -> str:
    """The Lua filter's code: constants, the issuers, the tenant table, the fixed logic.

    Every value is a Lua string literal built by lua_string (no text from Vault or a
    setting is ever spliced in raw). No issuer with keys: the no-op, all to ext_authz.
    `invalidations` counts `authz cache invalidate`s: a new count is a new source, so
    Envoy builds the filter again and its token cache starts empty, as the service's
    verified identities do.
    """
    served = [issuer for issuer in issuers if issuer.keys]
    if not served:
        return NOOP_LUA
    ordered = sorted(tenants, key=lambda t: t.client_id)
    policy_lines, policy_refs = policy_tables([t.policy for t in ordered])
    lines = [
        "-- Generated by authz/fastpath/resources.py: the fast path's tenant table.",
        f"local LOG_NAMESPACE = {lua_string(LOG_NAMESPACE)}",
        f"local DECIDED_NAMESPACE = {lua_string(DECIDED_NAMESPACE)}",
        f"local DECIDED_KEY = {lua_string(DECIDED_KEY)}",
        f"local SKEW = {int(clock_skew_s)}",
        f"local MAX_TOKEN = {MAX_TOKEN_BYTES}",
        f"local MAX_BODY = {MAX_CHECKED_BODY_BYTES}",
        f"local CACHE_MAX = {LUA_CACHE_SIZE}",
        f"local INVALIDATIONS = {int(invalidations)}  -- a new count: a new, empty CACHE",
        "local ISSUERS = {",
        *(line for issuer in served for line in _lua_issuer(issuer)),
        "}",
        *policy_lines,
        "local TENANTS = {",
        *(
            f"  [{lua_string(t.client_id)}] = {{{lua_string('Bearer ' + t.api_key)}, "
            f"{_lua_opt(t.organization)}, {_lua_opt(t.project)}, {ref}}},"
            for t, ref in zip(ordered, policy_refs, strict=True)
        ),
        "}",
        *exhausted_table(exhausted or {}),
    ]
    return "\n".join(lines) + GOVERNANCE_LUA + JWS_LUA + _LUA_BODY


def lua_config(source: str) -> lua_pb2.Lua:
    config = lua_pb2.Lua()
    config.default_source_code.inline_string = source
    # The headers it sets (authorization, OpenAI-Organization/-Project) choose no route:
    # the route picked before it stands, without a second match per request.
    config.clear_route_cache.value = False
    return config


def extension_config(name: str, message: Message) -> extension_pb2.TypedExtensionConfig:
    """An ECDS resource: the filter's name and its typed config."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return extension_pb2.TypedExtensionConfig(name=name, typed_config=packed)


def build_resources(
    issuers: Sequence[FastIssuer],
    tenants: Sequence[FastTenant],
    clock_skew_s: float,
    exhausted: Exhausted | None = None,
    invalidations: int = 0,
) -> dict[str, extension_pb2.TypedExtensionConfig]:
    """The ECDS resource by name. An issuer without keys is left out (its tokens go to
    ext_authz); with none left, the filter decides nothing. `exhausted`: the tenants
    and users whose tokens for the day are used up (governance_lua.py);
    `invalidations`: see lua_source."""
    source = lua_source(issuers, tenants, clock_skew_s, exhausted, invalidations)
    return {LUA_FILTER: extension_config(LUA_FILTER, lua_config(source))}
