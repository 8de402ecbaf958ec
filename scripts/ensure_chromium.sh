#!/usr/bin/env bash
# Install Debian's chromium + chromium-driver when missing (the dashboard's browser tests
# drive them through selenium). Under CI=true a failed install fails; elsewhere it warns
# and the browser tests skip.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "chromium: $(chromium --version 2>/dev/null || echo present), chromedriver present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo -n"
fi
install() {
  command -v apt-get >/dev/null 2>&1 || { echo "apt-get not found"; return 1; }
  $SUDO apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
      chromium chromium-driver >/dev/null
}
if install && command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "chromium installed: $(chromium --version 2>/dev/null)"
elif [ "${CI:-}" = "true" ]; then
  echo "error: could not install chromium + chromium-driver (needed by the browser tests)" >&2
  exit 1
else
  echo "warning: chromium + chromium-driver missing; the browser tests will skip" >&2
fi
