#!/bin/sh
# Install Debian's redis-server (the real Redis the governance tests and `AUTHZ_REDIS_URL`
# deployments use) when it is not on PATH. Needs root (apt-get); does nothing when present.
# The package does not start a server here (no systemd): tests start their own on a free
# loopback port with persistence off (tests/support/redis.py).
set -eu
if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-redis.sh: redis-server is missing; run me as root (apt-get install redis-server)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends redis-server >/dev/null
command -v redis-server >/dev/null
