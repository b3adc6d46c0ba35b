"""The tenant (clientId) of a verified identity, and the rule for what a clientId may be.

The clientId comes only from verified token claims, never from anything else the
client sends. It is placed into a Vault path, so it must be a single safe path
segment: no "/", no "..", no escapes, no control characters, bounded length.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from authz.errors import ClientIdNotFound

# One path segment of letters, digits, '.', '_', '-'; starts with a letter or digit,
# so "." and ".." can never be a clientId.
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# A claim name, dots separating nested claims (firebase.tenant): the one rule, used by the
# settings (AUTHZ_CLIENT_ID_CLAIMS) and by each OIDC issuer's client_id_claims.
CLAIM_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")


def is_valid_client_id(value: str) -> bool:
    return _CLIENT_ID.fullmatch(value) is not None and ".." not in value


def validate_client_id(value: str) -> str:
    """Return value if it is a safe clientId, else raise ValueError (used by the CLI)."""
    if not is_valid_client_id(value):
        raise ValueError(
            f"{value!r} is not a valid client id: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, with no '..'"
        )
    return value


def tenant_folder(path_template: str) -> str | None:
    """The folder holding one record per clientId for a Vault path template (its
    parent, "" for the mount's root); None when the template does not end in
    /{client_id}, so its tenants cannot be listed."""
    parent, _, leaf = path_template.rpartition("/")
    if leaf != "{client_id}" or "{client_id}" in parent:
        return None
    return parent


def _claim(claims: Mapping[str, Any], dotted: str) -> Any:
    node: Any = claims
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def client_id_from_claims(claims: Mapping[str, Any], claim_names: Sequence[str]) -> str:
    """The first configured claim that holds a valid clientId string.

    A claim that is present but not a string (a number, a list, an object) or not a safe
    segment is refused outright rather than skipped: a token that tries to smuggle a path
    must not fall through to a weaker claim.
    """
    for name in claim_names:
        value = _claim(claims, name)
        if value is None:
            continue
        if not isinstance(value, str) or not is_valid_client_id(value):
            raise ClientIdNotFound(f"claim {name} holds no valid client id")
        return value
    raise ClientIdNotFound("no client id claim in token")
