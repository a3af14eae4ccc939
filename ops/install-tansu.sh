#!/usr/bin/env bash
# Install the Kafka-protocol broker tansu (crates.io, Apache-2.0), pinned,
# built once (~10 min on 2 cores) and cached outside the repository.
# Prints the path of the binary on stdout.
set -euo pipefail
VERSION="0.6.0"
ROOT="${LEARNVAULT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/learnvault}/tansu-$VERSION"
say() { printf '[tansu] %s\n' "$*" >&2; }
if [ -x "$ROOT/bin/tansu" ]; then
  echo "$ROOT/bin/tansu"
  exit 0
fi
say "building tansu $VERSION with SQLite storage (once; cached in $ROOT)"
cargo install tansu --version "$VERSION" --locked --features libsql --root "$ROOT" >&2
echo "$ROOT/bin/tansu"
