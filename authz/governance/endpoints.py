"""Which OpenAI endpoint a request reaches, as policy rules see it.

Envoy has already normalised `:path` (normalize_path, merge_slashes, escaped slashes
rejected) before ext_authz runs, so `..`, `%2e%2e` and `//` never reach us from the
real listener. This is defence in depth for everything else (another proxy in front,
a config change): the path is reduced to the OpenAI path Envoy forwards, with only
unreserved characters percent-decoded (`%76` is `v`, as any server would read it), and
anything still ambiguous (a remaining `%`, `.`/`..` segments, `//`, a backslash,
non-ASCII or control characters) yields None, which no allow rule matches.
"""

from __future__ import annotations

import re

from authz.errors import EndpointNotAllowed
from authz.governance.policy import EffectivePolicy

PREFIX = "/api/openai"
#: What `/api/openai` and `/api/openai/` are forwarded as (shared/DESIGN.md).
EMPTY_PATH = "/v1/responses"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# Visible ASCII except backslash and %: what a plain, decoded path may contain.
_PLAIN = re.compile(r"[\x21-\x24\x26-\x5b\x5d-\x7e]*")


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0)


# Recent answers of openai_path: a few paths make most traffic. Cleared when full (paths
# that carry ids, /v1/responses/resp_..., would otherwise fill it); long paths are not
# kept, so it holds at most about a megabyte.
_RECENT: dict[str, str | None] = {}
_RECENT_MAX = 4096
_RECENT_PATH_MAX = 256


def openai_path(raw_path: str) -> str | None:
    """The OpenAI path a relay path is forwarded to (`/v1/...`, no query), or None when
    it is not under /api/openai/ or still looks odd after decoding."""
    try:
        return _RECENT[raw_path]
    except KeyError:
        pass
    path = _openai_path(raw_path)
    if len(raw_path) <= _RECENT_PATH_MAX:
        if len(_RECENT) >= _RECENT_MAX:
            _RECENT.clear()
        _RECENT[raw_path] = path
    return path


def _openai_path(raw_path: str) -> str | None:
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    if path in (PREFIX, PREFIX + "/"):
        return EMPTY_PATH
    if not path.startswith(PREFIX + "/"):
        return None
    path = path[len(PREFIX):]
    if "%" in path:
        path = _ESCAPE.sub(_decode_unreserved, path)
    if _PLAIN.fullmatch(path) is None or "//" in path:
        return None
    if any(segment in (".", "..") for segment in path.split("/")):
        return None
    return path


def check_endpoint(policy: EffectivePolicy, method: str, raw_path: str) -> str | None:
    """Raise EndpointNotAllowed unless the policy allows method and path; returns the
    normalised OpenAI path (None when odd, which only "all" lets through)."""
    path = openai_path(raw_path)
    if not policy.allows_endpoint(method, path):
        raise EndpointNotAllowed(f"{method} {path or '(unrecognised path)'} not allowed")
    return path
