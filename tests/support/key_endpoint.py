"""A key-set endpoint (Firebase certs, an OIDC JWKS) served to a KeyStore without a socket."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


class FakeKeyEndpoint:
    """Pass as `fetch=` to a KeyStore: answers with `document()` and a max-age, counts the
    fetches, and fails like a refused connection while `down` is set."""

    def __init__(self, document: Callable[[], Any], max_age: int = 3600) -> None:
        self.document = document
        self.max_age = max_age
        self.calls = 0
        self.down = False

    def __call__(self, url: str, timeout: float) -> tuple[bytes, str]:
        self.calls += 1
        if self.down:
            raise OSError("connection refused")
        return json.dumps(self.document()).encode(), f"public, max-age={self.max_age}"
