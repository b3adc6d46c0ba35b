"""Tenants and their secrets: the clientId rule, Vault (KV v2 client and login), the
tenant-key cache and the relay-issued client-key store.

This layer takes plain values, never the settings object.
"""
