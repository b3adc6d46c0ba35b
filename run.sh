#!/usr/bin/env bash
# The two commands that set up a fresh machine and use it:
#   ./run.sh up [--listen HOST:PORT] [--demo] [--logs DIR]   the whole relay (authz up --help)
#   ./run.sh test [pytest args]        lint, type-check and the full test suite
# Everything installs into .venv from the package registries; nothing else is needed
# but python3 (3.11+) with venv.
set -euo pipefail
cd "$(dirname "$0")"

venv() {
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  # Reinstall only when the dependency list changed.
  local stamp=.venv/.installed-$1
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[$1]"
    touch "$stamp"
  fi
}

case "${1:-}" in
  up)
    shift
    venv test
    exec .venv/bin/authz up "$@"
    ;;
  test)
    shift
    venv test
    .venv/bin/ruff check authz tests bench scripts
    .venv/bin/mypy
    if [ $# -eq 0 ]; then
      # Everything, the ten-minute stream test beside the rest (scripts/run_tests.py).
      exec .venv/bin/python scripts/run_tests.py
    fi
    exec .venv/bin/python -m pytest "$@"
    ;;
  *)
    echo "usage: ./run.sh up [--listen HOST:PORT] [--demo] [--logs DIR] | ./run.sh test [pytest args]" >&2
    exit 2
    ;;
esac
