"""The request body, read at most once per check: the model allow-list and whether a
streamed chat completion needs `stream_options.include_usage` added for metering.

Envoy sends the body of every request that is not `multipart/form-data` (up to
16 MiB; a larger one arrives cut, flagged `x-envoy-auth-partial-body: true`). Rules:

- A policy with `models`: a non-empty body must be JSON (UTF-8, no NaN/Infinity) and
  must name `model` once at its top level, as a string the policy lists. Not JSON, or
  `model` named twice (a parser upstream might read the other one) → BadRequest (400);
  `model` missing, not a string, or not listed → ModelNotAllowed (403). A body Envoy
  could only send in part → ModelNotAllowed: we cannot prove which model it names.
  Multipart uploads (no body sent) are governed by the endpoint rules alone.
- Metering (every tenant): `POST /v1/chat/completions` whose JSON body has top-level
  `"stream": true` and no `stream_options` → inject_usage; Envoy's Lua filter then asks
  the upstream for the usage chunk and keeps it from the client.
"""

from __future__ import annotations

import json
from typing import Any

from authz.errors import BadRequest, ModelNotAllowed
from authz.governance.policy import EffectivePolicy

CHAT_COMPLETIONS = "/v1/chat/completions"
_NOT_PARSED = object()
_NOT_JSON = object()


class _DuplicateModel(dict[str, Any]):
    """The top-level object, when it named `model` more than once."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs) and sum(1 for key, _ in pairs if key == "model") > 1:
        return _DuplicateModel(result)
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads with any option builds a new decoder per call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_DUPLICATE_AWARE_DECODER = json.JSONDecoder(object_pairs_hook=_object,
                                            parse_constant=_no_constant)


class Body:
    """One request body, parsed lazily and at most once."""

    __slots__ = ("_parsed", "partial", "raw")

    def __init__(self, raw: bytes | None, partial: bool = False) -> None:
        self.raw = raw
        self.partial = partial
        self._parsed: Any = _NOT_PARSED

    @property
    def empty(self) -> bool:
        return not self.raw

    def json(self) -> Any:
        """The parsed body; BadRequest when it is not JSON."""
        if self._parsed is _NOT_PARSED:
            try:
                raw = self.raw or b""
                text = raw.decode("utf-8")
                if raw.count(b'"model"') <= 1 and b"\\u" not in raw:
                    # `model` cannot be named twice (only \\u escapes could spell it
                    # another way): the plain parser, without a Python call per object.
                    self._parsed = _DECODER.decode(text)
                else:
                    self._parsed = _DUPLICATE_AWARE_DECODER.decode(text)
            except (ValueError, RecursionError):
                self._parsed = _NOT_JSON
        if self._parsed is _NOT_JSON:
            raise BadRequest("request body is not JSON")
        return self._parsed

    def json_or_none(self) -> Any:
        try:
            return self.json()
        except BadRequest:
            return None


def check_model(policy: EffectivePolicy, body: Body, *, multipart: bool = False) -> None:
    """Raise unless the body names a model the policy allows (see the module doc)."""
    if not policy.governs_models or multipart:
        return
    if body.partial:
        raise ModelNotAllowed("body too large to inspect for its model")
    if body.empty:
        return
    document = body.json()
    if isinstance(document, _DuplicateModel):
        raise BadRequest("body names model more than once")
    model = document.get("model") if isinstance(document, dict) else None
    if not isinstance(model, str):
        raise ModelNotAllowed("body names no model")
    if not policy.allows_model(model):
        raise ModelNotAllowed("model not in the policy's list")


def might_need_usage_injection(method: str, body: Body) -> bool:
    """The cheap half of needs_usage_injection, before any path or JSON work: a body
    without "stream" cannot stream, unless it spells its keys with \\u escapes, which
    are then parsed too (so escapes cannot dodge metering)."""
    raw = body.raw
    if method != "POST" or not raw or body.partial:
        return False
    return b"stream" in raw or b"\\u" in raw


def needs_usage_injection(method: str, path: str | None, body: Body) -> bool:
    """A streamed chat completion that did not ask for usage (see the module doc)."""
    if path != CHAT_COMPLETIONS or not might_need_usage_injection(method, body):
        return False
    document = body.json_or_none()
    return (isinstance(document, dict) and document.get("stream") is True
            and "stream_options" not in document)
