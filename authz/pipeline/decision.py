"""One check, as named phases, in the contract's order (shared/DESIGN.md):

    credential (401) → clientId (500) → tenant key (500) → endpoint policy (403)
    → model (403/400) → limits and budgets (429) → header mutations

Works on plain values (a CheckInput in, an Allow or a Deny out); protobuf stays in
edge/envoy_check.py. Every failure is a RelayError that already knows its status and body.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from authz.credentials.identity import IdentityCache, TokenVerifier
from authz.errors import AuthenticationFailed, InternalError, RelayError
from authz.governance.endpoints import check_endpoint, openai_path
from authz.governance.estimate import estimate_tokens
from authz.governance.model import Limiter
from authz.governance.models import (
    Body,
    check_model,
    might_need_usage_injection,
    needs_usage_injection,
)
from authz.governance.policy import ALLOW_ALL, EffectivePolicy, Policy
from authz.tenants.key_cache import KeyCache

log = logging.getLogger(__name__)

# Headers the upstream must never see from the client. Authorization is replaced, not
# listed here; OpenAI-Organization/-Project are replaced or removed per tenant.
STRIPPED_HEADERS = frozenset({
    "cookie",
    "proxy-authorization",
    "x-api-key",
    "x-client-id",
    "x-tenant-id",
    "forwarded",
    "x-real-ip",
    # Client-IP hints beyond X-Forwarded-For (CDNs, load balancers): forgeable by anyone.
    "cf-connecting-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
})
STRIPPED_PREFIXES = ("x-forwarded-", "x-envoy-", "x-relay-")
TENANT_OPTION_HEADERS = ("openai-organization", "openai-project")

# RFC 6750 b64token, which every JWT and opaque key we accept fits.
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *")


NO_BODY = Body(None)

#: Set by Envoy on the CheckRequest when the body exceeded max_request_bytes and was cut.
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"


class CheckInput(NamedTuple):
    """What one check looks at, built at the edge from Envoy's CheckRequest (a
    NamedTuple: immutable, and cheaper to build per check than a frozen dataclass)."""

    method: str
    #: Envoy's `:path` (normalised by Envoy, query included).
    path: str
    headers: Mapping[str, str]
    #: The request body as Envoy sent it; None when it sent none (multipart, or none).
    body: bytes | None = None
    #: Envoy could send only the first max_request_bytes of the body.
    body_partial: bool = False

    @classmethod
    def of_headers(cls, headers: Mapping[str, str], method: str = "POST",
                   path: str = "/api/openai/v1/chat/completions") -> CheckInput:
        return cls(method, path, headers)


@dataclass(frozen=True)
class Allow:
    client_id: str
    token_type: str
    set_headers: tuple[tuple[str, str], ...]
    remove_headers: tuple[str, ...]
    #: The verified subject (Firebase uid, OIDC sub, client key id ck_…).
    user: str = ""
    #: The limiter's admission, when any limit applied (released at stream end).
    lease: str = ""
    reserved_tokens: int = 0
    #: Envoy's Lua filter must add stream_options.include_usage (see governance/models.py).
    inject_usage: bool = False


@dataclass(frozen=True)
class Deny:
    error: RelayError
    token_type: str = "none"


Decision = Allow | Deny


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed("no authorization header")
    match = _BEARER.fullmatch(authorization)
    if match is None:
        raise AuthenticationFailed("authorization is not a single bearer token")
    return match.group(1)


def headers_to_remove(names: Iterable[str], tenant_sets: Sequence[str]) -> tuple[str, ...]:
    """Every client header the upstream must not receive, by exact name.

    Envoy sends authz only `authorization` and strips the fixed names itself; this list
    is the same defence for whatever headers a deployment does let through, plus the
    tenant option headers the tenant does not set (a client must not choose them).
    """
    removed = [name for name in TENANT_OPTION_HEADERS if name not in tenant_sets]
    for name in names:
        if name.startswith(":") or name in removed:
            continue
        if name in STRIPPED_HEADERS or name.startswith(STRIPPED_PREFIXES):
            removed.append(name)
    return tuple(removed)


def user_of(subject: str) -> str:
    """The user limits count: the verified subject; a client key counts as its id."""
    return subject.removeprefix("client-key:")


class Authorizer:
    def __init__(
        self, verifier: TokenVerifier, keys: KeyCache, *, identity_cache: IdentityCache,
        default_policy: Policy = ALLOW_ALL, limiter: Limiter | None = None,
    ) -> None:
        self._verifier = verifier
        self._keys = keys
        self._identities = identity_cache
        self._default_policy = default_policy
        self._limiter = limiter
        # One EffectivePolicy per (tenant policy, key policy) pair of objects, built once.
        # Keyed by identity (hashing a Policy walks all its rules); each entry holds the
        # policies themselves, so their ids cannot be reused while it exists.
        self._effective: dict[tuple[int, int],
                              tuple[Policy, Policy | None, EffectivePolicy]] = {}
        self._default_effective = EffectivePolicy.of(default_policy)

    def _effective_policy(self, tenant: Policy, key: Policy | None) -> EffectivePolicy:
        entry = self._effective.get((id(tenant), id(key)))
        if entry is None or entry[0] is not tenant or entry[1] is not key:
            if len(self._effective) >= 10_000:
                self._effective.clear()
            entry = (tenant, key, EffectivePolicy.of(tenant, key))
            self._effective[(id(tenant), id(key))] = entry
        return entry[2]

    async def check(self, request: CheckInput) -> Decision:
        headers = request.headers
        token_type = "none"
        lease, reserved, inject_usage = "", 0, False
        try:
            token = bearer_token(headers.get("authorization"))
            # The hot path: a token seen before costs one digest and one dict lookup.
            digest = IdentityCache.digest(token)
            identity = self._identities.get(digest)
            if identity is None:
                identity = await self._verifier.verify(token)
                self._identities.put(digest, identity)
            token_type = identity.token_type
            key = await self._keys.get(identity.client_id)
            if key.policy is None and identity.policy is None:
                policy = self._default_effective  # the common case: no lookup, no hashing
            else:
                policy = self._effective_policy(key.policy or self._default_policy,
                                                identity.policy)
            body = NO_BODY if request.body is None else Body(request.body, request.body_partial)
            # The OpenAI path is worked out only when something needs it.
            path: str | None = None
            if policy.governs_endpoints:
                path = check_endpoint(policy, request.method, request.path)
            if policy.governs_models:
                check_model(policy, body, multipart=_is_upload(headers))
            user = user_of(identity.subject)
            if request.body and might_need_usage_injection(request.method, body):
                if path is None:
                    path = openai_path(request.path)
                inject_usage = needs_usage_injection(request.method, path, body)
            # Last: once admitted, the request holds a slot and a reservation that only
            # its end (Envoy's access log) releases, so nothing may fail after this.
            if policy.has_limits and self._limiter is not None:
                if path is None:
                    path = openai_path(request.path)
                admission = await self._limiter.admit(
                    identity.client_id, user, policy.limits, estimate_tokens(path, body))
                lease, reserved = admission.lease, admission.reserved_tokens
        except RelayError as error:
            return Deny(error, error.token_type or token_type)
        except Exception:
            # A bug must still fail closed with the contract's body; never leak why.
            log.exception("unexpected error during check")
            return Deny(InternalError("unexpected error", detail="check failed"), token_type)
        set_headers = [("authorization", f"Bearer {key.api_key}")]
        if key.organization:
            set_headers.append(("openai-organization", key.organization))
        if key.project:
            set_headers.append(("openai-project", key.project))
        tenant_sets = [name for name, _ in set_headers]
        return Allow(
            client_id=identity.client_id,
            token_type=identity.token_type,
            set_headers=tuple(set_headers),
            remove_headers=headers_to_remove(headers.keys(), tenant_sets),
            user=user,
            lease=lease,
            reserved_tokens=reserved,
            inject_usage=inject_usage,
        )


def _is_upload(headers: Mapping[str, str]) -> bool:
    """An upload whose body Envoy streams instead of sending it to us (envoy.yaml routes
    openai_multipart and openai_octet_stream): governed by the endpoint rules alone."""
    content_type = headers.get("content-type", "").lstrip().lower()
    return content_type.startswith(("multipart/", "application/octet-stream"))
