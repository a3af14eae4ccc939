#!/usr/bin/env bash
# Install the embedded ClickHouse engine (chDB's libchdb.so) from the npm
# registry, pinned and checksummed, cached outside the repository.
# Prints the path of libchdb.so on stdout.
set -euo pipefail
VERSION="26.7.3-stable.1"
PACKAGE="@chdb/lib-linux-x64-gnu"
INTEGRITY="sha512-XP97mMqnc5tZpKQywR8N7cLTsHNiTmHr30pC5mzo3jWmukjKn2IBa60c2B/gWUNcuFjOMjWoorQICCqBVj5wpw=="
CACHE="${LEARNVAULT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/learnvault}/chdb/$VERSION"
say() { printf '[chdb] %s\n' "$*" >&2; }

if [ -s "$CACHE/libchdb.so" ] && [ -f "$CACHE/.verified" ]; then
  echo "$CACHE/libchdb.so"
  exit 0
fi
command -v npm >/dev/null 2>&1 || { say "npm is required (apt-get install npm)"; exit 1; }
mkdir -p "$CACHE"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
say "fetching $PACKAGE@$VERSION (~560 MB, once)"
(cd "$tmp" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
tgz=$(ls "$tmp"/*.tgz)
actual="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
if [ "$actual" != "$INTEGRITY" ]; then
  say "integrity mismatch for $tgz: got $actual"
  exit 1
fi
tar -xzf "$tgz" -C "$tmp"
cp "$tmp/package/libchdb.so" "$CACHE/libchdb.so.part"
[ -f "$tmp/package/chdb.h" ] && cp "$tmp/package/chdb.h" "$CACHE/chdb.h"
mv "$CACHE/libchdb.so.part" "$CACHE/libchdb.so"
echo "$INTEGRITY" > "$CACHE/.verified"
say "installed $CACHE/libchdb.so"
echo "$CACHE/libchdb.so"
