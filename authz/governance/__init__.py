"""Governance: per-tenant policy (endpoints, models), request and concurrency limits,
token budgets, and the usage metered from responses."""
