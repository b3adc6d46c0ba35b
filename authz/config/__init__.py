"""Configuration primitives: the environment and its parsers (the model is authz.settings)."""
