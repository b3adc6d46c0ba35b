"""openai-relay's ext_authz service: decides allow/deny for Envoy and returns header mutations."""

__version__ = "0.1.0"
