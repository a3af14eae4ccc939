#!/usr/bin/env bash
# System packages the build needs: cmake and libcurl headers (librdkafka is built from source by
# rdkafka's cmake-build; Debian's librdkafka 2.0 cannot talk to tansu) and npm
# (fetches the pinned chDB engine). Idempotent; installs only what is missing.
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
dpkg -s zlib1g-dev >/dev/null 2>&1 || missing+=(zlib1g-dev)
dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || missing+=(libcurl4-openssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  printf '[deps] installing %s\n' "${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
