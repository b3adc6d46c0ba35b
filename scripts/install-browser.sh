#!/usr/bin/env bash
# Install the real browser the tests/browser suite drives: Debian's chromium and
# chromium-driver (headless; Selenium talks to chromium-driver). Idempotent: does
# nothing when both are present. Needs root (apt); the suite's set-up runs it when
# /usr/bin/chromium is missing and it is root, and fails with this command otherwise.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-browser.sh: needs root to apt-get install chromium chromium-driver" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
/usr/bin/chromium --version
