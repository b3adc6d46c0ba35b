"""The test tenants: a clientId and its OpenAI key (and optional organization/project)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tenant:
    client_id: str
    api_key: str
    organization: str | None = None
    project: str | None = None
