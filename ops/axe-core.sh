#!/usr/bin/env bash
# Fetch axe-core (the accessibility engine the console's browser tests inject)
# from the npm registry into ~/.cache/learnvault/axe-core-<ver>/axe.min.js and
# check its SHA-256 against the value pinned here. Idempotent; prints the path.
set -euo pipefail
VERSION=4.10.3
SHA256=880970c081707360e64f34cea25ff91892f5bc95675b0776925b9709dd8a68bb
. "$(dirname "$0")/lib.sh"

dir="${XDG_CACHE_HOME:-$HOME/.cache}/learnvault/axe-core-$VERSION"
file="$dir/axe.min.js"
if ! pinned "$file"; then
  command -v npm >/dev/null 2>&1 || { say "npm is needed to fetch axe-core (apt-get install npm)"; exit 1; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  say "fetching axe-core@$VERSION from the npm registry"
  (cd "$tmp" && npm pack --silent "axe-core@$VERSION" >/dev/null && tar xzf "axe-core-$VERSION.tgz")
  require_pinned "$tmp/package/axe.min.js"
  mkdir -p "$dir"
  cp "$tmp/package/axe.min.js" "$file.tmp.$$" && mv "$file.tmp.$$" "$file"   # atomic: tests may run it at once
fi
say "ready: $file"
echo "$file"
