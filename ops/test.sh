#!/usr/bin/env bash
# The whole test suite on the real services. README's second command; .ci/run calls it.
# Sets up what is missing (system packages, PostgreSQL, the embedded ClickHouse
# engine, Apache Kafka from Maven Central), runs the policy checks, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# cargo-nextest builds from source (about 10 minutes of CPU on 2 cores): in the background
# while the set-up below mostly waits for downloads (system packages, Maven, PyPI).
if ! command -v cargo-nextest >/dev/null 2>&1; then
  nextest_log=$(mktemp)
  (cargo install cargo-nextest --locked >"$nextest_log" 2>&1) &
  nextest_pid=$!
fi
ops/deps.sh
ops/postgres.sh
ops/install-chdb.sh >/dev/null
# The console's browser tests: headless Chromium + chromedriver, and axe-core (pinned, checked).
# Without them the browser tests fail (they never pass by skipping); the rest still runs.
ops/chromium.sh || echo "[test] headless Chromium could not be installed: tests/console.rs's browser tests will fail" >&2
ops/axe-core.sh >/dev/null || echo "[test] axe-core could not be fetched: tests/console.rs's browser tests will fail" >&2
# The OpenAPI contract check (tests/contract.rs): schemathesis from PyPI, pinned with hashes.
ops/schemathesis.sh >/dev/null || echo "[test] schemathesis could not be installed: tests/contract.rs will fail" >&2
ops/keycloak.sh >/dev/null || echo "[test] Keycloak could not be fetched: the console's OpenID Connect test will fail" >&2
# Tests make topics by the hundred: the broker starts from empty storage (a broker already
# listening on 9092 is used as it is).
kafka_pid=$(LEARNVAULT_KAFKA_FRESH=1 ops/kafka.sh)
trap '[ -n "${kafka_pid:-}" ] && kill "$kafka_pid" 2>/dev/null || true' EXIT

# Each test makes its own database lv_test_<uuid>; drop those of earlier runs.
psql -h 127.0.0.1 -U postgres -d postgres -Atqc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'lv\_test\_%' OR datname LIKE 'lv\_prod\_refusal\_%'" |
  while read -r db; do dropdb -h 127.0.0.1 -U postgres --if-exists "$db" >/dev/null 2>&1 || true; done
rm -rf "${TMPDIR:-/tmp}"/lv-spine-* "${TMPDIR:-/tmp}"/lv-ch-* "${TMPDIR:-/tmp}"/lv-kafka-* "${TMPDIR:-/tmp}"/lv-pg-* 2>/dev/null || true

if [ -n "${nextest_pid:-}" ] && ! wait "$nextest_pid"; then
  cat "$nextest_log" >&2
  echo "[test] cargo install cargo-nextest failed" >&2
  exit 1
fi
cargo build --quiet
target/debug/learnvault taxonomy check
target/debug/learnvault policy check-features
status=0
cargo nextest run --no-fail-fast "$@" || status=$?
# The whole suite (no arguments, as CI runs it) also gates on the lints: `cargo clippy`
# with warnings as errors, after the tests so a lint never hides a test's result
# (about 30 s on a warm machine, 3 min on a fresh one: it checks the dependencies again).
if [ $# -eq 0 ]; then
  if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --all-targets --quiet -- -D warnings || status=1
  else
    echo "[test] cargo clippy is not installed (rustup component add clippy): the lints were NOT checked" >&2
  fi
fi
exit "$status"
