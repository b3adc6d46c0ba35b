#!/bin/sh
# One-shot set-up of the compose stack's Vault (or OpenBao), run by the vault-init
# service with the dev root token. Safe to run again.
#   - KV v2 at secret/ (dev servers already have it; a real server may not)
#   - policy relay-reader: read the tenants' secrets, the client-key index and the
#     client-key pepper (client keys are on by default), nothing else
#   - AppRole "relay" with that policy; its role_id and a fresh secret_id are written to
#     /vault-auth for the authz service (uid AUTHZ_UID), which logs in with them
#   - the demo tenant DEMO_CLIENT_ID with OPENAI_API_KEY
set -eu

if command -v vault >/dev/null 2>&1; then cli=vault; else cli=bao; fi
out=/vault-auth
uid=${AUTHZ_UID:-10001}
client_id=${DEMO_CLIENT_ID:-demo}

# Vault answers before it is ready for writes only in rare cases; poll briefly anyway.
tries=0
until $cli status >/dev/null 2>&1; do
  tries=$((tries + 1))
  [ "$tries" -lt 150 ] || { echo "vault-init: Vault at $VAULT_ADDR is not answering" >&2; exit 1; }
  sleep 0.2  # readiness poll interval
done

if ! $cli secrets list -format=json | grep -q '"secret/"'; then
  $cli secrets enable -path=secret -version=2 kv
fi
if ! $cli auth list -format=json | grep -q '"approle/"'; then
  $cli auth enable approle
fi

$cli policy write relay-reader - >/dev/null <<'HCL'
path "secret/data/openai/clients/*" { capabilities = ["read"] }
path "secret/data/openai/client-keys/*" { capabilities = ["read"] }
path "secret/data/openai/relay/client-key-pepper" { capabilities = ["read"] }
HCL
$cli write auth/approle/role/relay \
  token_policies=relay-reader token_ttl=1h token_max_ttl=24h \
  secret_id_ttl=0 secret_id_num_uses=0 >/dev/null

umask 077
$cli read -field=role_id auth/approle/role/relay/role-id >"$out/role-id"
$cli write -f -field=secret_id auth/approle/role/relay/secret-id >"$out/secret-id"
chown "$uid:$uid" "$out/role-id" "$out/secret-id"
chmod 0400 "$out/role-id" "$out/secret-id"
echo "vault-init: AppRole relay ready (policy relay-reader)"

if [ -n "${OPENAI_API_KEY:-}" ]; then
  printf '%s' "$OPENAI_API_KEY" | $cli kv put -mount=secret "openai/clients/$client_id" api_key=- >/dev/null
  echo "vault-init: tenant $client_id stored"
else
  echo "vault-init: OPENAI_API_KEY is empty: set it in .env to store tenant $client_id" >&2
  exit 1
fi
