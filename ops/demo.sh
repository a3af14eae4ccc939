#!/usr/bin/env bash
# The README's first command: set up what is needed, then walk through the vault
# end to end on a fresh `learnvault_demo` database, printing what happens.
set -euo pipefail
cd "$(dirname "$0")/.."
ops/postgres.sh
cargo build --quiet
dropdb -h 127.0.0.1 -U postgres --if-exists learnvault_demo
export LEARNVAULT_DATABASE_URL="postgres://learnvault_app@127.0.0.1:5432/learnvault_demo"
export LEARNVAULT_ADMIN_DATABASE_URL="postgres://postgres@127.0.0.1:5432/learnvault_demo"
export LEARNVAULT_LISTEN="${LEARNVAULT_LISTEN:-127.0.0.1:8080}"
exec target/debug/learnvault demo --tamper "$@"
