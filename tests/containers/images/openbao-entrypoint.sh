#!/bin/sh
# `server ...` runs `bao server` with the dev settings from BAO_DEV_ROOT_TOKEN_ID and
# BAO_DEV_LISTEN_ADDRESS; anything else runs as given.
set -e
if [ "$1" = server ]; then
  shift
  set -- bao server \
    ${BAO_DEV_ROOT_TOKEN_ID:+"-dev-root-token-id=$BAO_DEV_ROOT_TOKEN_ID"} \
    "-dev-listen-address=${BAO_DEV_LISTEN_ADDRESS:-127.0.0.1:8200}" \
    "$@"
fi
exec "$@"
