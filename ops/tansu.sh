#!/usr/bin/env bash
# Start the local Kafka-protocol broker (tansu, SQLite storage) on
# 127.0.0.1:9092 unless something already listens there. Installs it first if
# needed (ops/install-tansu.sh). Prints the broker's PID when it started one
# (empty when it was already running), so callers can stop what they started.
# LEARNVAULT_TANSU_FRESH=1 starts from empty storage (ops/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[tansu] %s\n' "$*" >&2; }
listening() { (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; }
if listening; then
  say "a broker already listens on 127.0.0.1:9092"
  exit 0
fi
bin=$(ops/install-tansu.sh)
state="${LEARNVAULT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/learnvault}/tansu-data"
mkdir -p "$state"
# Tests make topics by the hundred: a test run starts from empty storage.
[ "${LEARNVAULT_TANSU_FRESH:-0}" = 1 ] && rm -f "$state"/tansu.db*
(cd "$state" && exec "$bin" broker --storage-engine sqlite://tansu.db \
   --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
   >"$state/tansu.log" 2>&1) &
pid=$!
for _ in $(seq 1 100); do listening && break; sleep 0.1; done
listening || { say "tansu did not start; see $state/tansu.log"; exit 1; }
say "started (pid $pid, state in $state)"
echo "$pid"
