#!/usr/bin/env bash
# schemathesis (the OpenAPI contract check run by tests/contract.rs), from PyPI,
# pinned with hashes in ops/schemathesis/requirements.txt (pip --require-hashes),
# installed into a venv under ~/.cache/learnvault/schemathesis-$VERSION. Needs
# Python 3.9+ with venv. Offline once installed: the venv is reused while its
# schemathesis is $VERSION and it was built from the committed requirements (their
# SHA-256 is stamped in it, last). Idempotent; prints the path of `st`.
set -euo pipefail
VERSION=4.32.5
say() { printf '[schemathesis] %s\n' "$*" >&2; }

req="$(cd "$(dirname "$0")" && pwd)/schemathesis/requirements.txt"
cache="${LEARNVAULT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/learnvault}"
dir="$cache/schemathesis-$VERSION"
stamp="$dir/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
installed() { "$dir/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true; }
if ! { [ -x "$dir/bin/st" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && [ "$(installed)" = "$VERSION" ]; }; then
  command -v python3 >/dev/null 2>&1 || { say "python3 with venv and pip is needed (apt-get install python3-venv)"; exit 1; }
  say "installing schemathesis $VERSION from PyPI into $dir (hashes checked)"
  rm -rf "$dir"
  mkdir -p "$cache"
  python3 -m venv "$dir" >&2
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes --only-binary=:all: -r "$req" >&2 ||
    { rm -rf "$dir"; say "pip install failed"; exit 1; }
  [ "$(installed)" = "$VERSION" ] || { say "installed $(installed), want $VERSION"; rm -rf "$dir"; exit 1; }
  echo "$want" >"$stamp"
fi
say "ready: $dir/bin/st"
echo "$dir/bin/st"
