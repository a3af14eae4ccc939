#!/usr/bin/env bash
# Make sure headless Chromium and its WebDriver (chromedriver) are installed,
# for the console's browser tests (tests/console.rs). Installs Debian's
# `chromium` and `chromium-driver` if absent. Idempotent.
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
say() { printf '[chromium] %s\n' "$*" >&2; }

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  say "chromium or chromedriver is not installed; installing them from Debian's packages"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
say "$(chromium --version 2>/dev/null || echo 'chromium: version unknown'); $(chromedriver --version 2>/dev/null | head -n 1)"
