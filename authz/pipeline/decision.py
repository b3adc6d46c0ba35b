"""One check, as named phases: credential → identity → tenant → key → header mutations.

Works on plain values (a header mapping in, an Allow or a Deny out); protobuf stays in
envoy_edge.py. Every failure is a RelayError that already knows its status and body.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from authz.credentials.identity import IdentityCache, TokenVerifier
from authz.errors import AuthenticationFailed, InternalError, RelayError
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


@dataclass(frozen=True)
class Allow:
    client_id: str
    token_type: str
    set_headers: tuple[tuple[str, str], ...]
    remove_headers: tuple[str, ...]


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


class Authorizer:
    def __init__(
        self, verifier: TokenVerifier, keys: KeyCache, *, identity_cache: IdentityCache
    ) -> None:
        self._verifier = verifier
        self._keys = keys
        self._identities = identity_cache

    async def check(self, headers: Mapping[str, str]) -> Decision:
        token_type = "none"
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
        )
