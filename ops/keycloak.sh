#!/usr/bin/env bash
# Keycloak (the OpenID Connect provider the console's sign-in test runs against),
# from Maven Central: org.keycloak:keycloak-quarkus-dist:$VERSION:zip fetched with
# Maven into learnvault's own Maven repository (~/.cache/learnvault/m2, as ops/install-kafka.sh:
# not ~/.m2, which is Java's user.home and may not be $HOME), its SHA-256 checked against the value pinned here, unpacked under
# ~/.cache/learnvault/keycloak-$VERSION. Needs Java 17+ (ops/deps.sh). Idempotent;
# prints the directory. The test starts it (start-dev, in-memory database) with
# ops/keycloak/learnvault-realm.json imported.
set -euo pipefail
VERSION=26.0.7
SHA256=25353b74613bcf72db67f8addbd88d832c705a69333091a16573d249d665fe21
. "$(dirname "$0")/lib.sh"

cache="${LEARNVAULT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/learnvault}"
dir="$cache/keycloak-$VERSION"
if [ ! -x "$dir/bin/kc.sh" ]; then
  repo="$cache/m2"
  zip="$repo/org/keycloak/keycloak-quarkus-dist/$VERSION/keycloak-quarkus-dist-$VERSION.zip"
  if [ ! -f "$zip" ]; then
    say "fetching keycloak-quarkus-dist $VERSION from Maven Central"
    mvn -q -B -Dmaven.repo.local="$repo" dependency:get -Dartifact="org.keycloak:keycloak-quarkus-dist:$VERSION:zip" -Dtransitive=false >&2
  fi
  require_pinned "$zip"
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/keycloak-unpack.XXXXXX")
  (cd "$tmp" && unzip -q "$zip")
  mv "$tmp/keycloak-$VERSION" "$dir" 2>/dev/null || true   # another run may have won
  rm -rf "$tmp"
fi
say "ready: $dir"
echo "$dir"
