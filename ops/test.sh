#!/usr/bin/env bash
# The whole test suite on the real services. README's second command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
ops/postgres.sh

# Each test makes its own database lv_test_<uuid>; drop those of earlier runs.
psql -h 127.0.0.1 -U postgres -d postgres -Atqc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'lv\_test\_%' OR datname LIKE 'lv\_prod\_refusal\_%'" |
  while read -r db; do dropdb -h 127.0.0.1 -U postgres --if-exists "$db" >/dev/null 2>&1 || true; done

command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
cargo nextest run --no-fail-fast "$@"
