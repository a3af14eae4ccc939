#!/usr/bin/env bash
# System packages the build and the local services need: cmake and libcurl headers (librdkafka
# is built from source by rdkafka's cmake-build, with zstd; Debian's librdkafka 2.0 is too old),
# npm (fetches the pinned chDB engine), Java 17 and Maven (assemble and run Apache Kafka from
# Maven Central). Idempotent; installs only what is missing.
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
dpkg -s zlib1g-dev >/dev/null 2>&1 || missing+=(zlib1g-dev)
dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || missing+=(libcurl4-openssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  printf '[deps] installing %s\n' "${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
