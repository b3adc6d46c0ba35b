"""Credentials: one module per token type behind the TokenVerifier interface
(`identity.py`), the dispatcher that picks one (`verifiers.py`), and JOSE beside them.

Credentials turn a bearer into an Identity; they never read tenant keys.
"""
