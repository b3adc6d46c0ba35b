"""The fast path (AUTHZ_FAST_PATH=on): Envoy verifies Firebase ID and OIDC tokens and injects the
tenant's key itself; this service feeds it over xDS (ADS, extension configs only).

- blocks.py: the Envoy template's fast-path blocks (plain JSON; no protobuf, so the
  renderer stays light). Off: every block renders to nothing.
- resources.py: the issuers' JWKS, the jwt_authn and Lua extension configs.
- tenants.py: which tenants the fast path serves, read from Vault.
- xds.py: the ADS server and the control loop that pushes changes.
"""
