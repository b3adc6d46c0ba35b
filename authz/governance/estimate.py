"""The token estimate a request reserves against its budgets at admission.

Rule (documented in README, "Governance"): no body, 0; else input ≈ ceil(body bytes / 4) (about four
bytes per token for English JSON; generous for other text, which only reserves more),
plus the output the body caps itself at (`max_tokens`, `max_completion_tokens` or
`max_output_tokens`, the first that is a positive integer), else DEFAULT_OUTPUT_TOKENS
for endpoints that generate text, 0 for embeddings and moderations. The reservation is
swapped for the upstream's reported usage when the request ends, so the estimate only
bounds how far parallel requests can overshoot a budget, never what is charged.
"""

from __future__ import annotations

from authz.governance.models import Body

DEFAULT_OUTPUT_TOKENS = 1024
_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_NO_OUTPUT = frozenset({"/v1/embeddings", "/v1/moderations"})


def estimate_tokens(path: str | None, body: Body) -> int:
    raw = body.raw or b""
    if not raw:
        return 0  # no body (GET, DELETE): nothing for a model to read or write
    input_tokens = (len(raw) + 3) // 4
    if path in _NO_OUTPUT:
        return input_tokens
    output = DEFAULT_OUTPUT_TOKENS
    if b"max_" not in raw and b"\\u" not in raw:
        # No cap can be named without these bytes (only \u escapes spell keys otherwise):
        # the default, without parsing the body.
        return input_tokens + output
    document = None if body.partial else body.json_or_none()
    if isinstance(document, dict):
        for name in _OUTPUT_FIELDS:
            value = document.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                output = value
                break
    return input_tokens + output
