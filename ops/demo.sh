#!/usr/bin/env bash
# The README's first command: set up what is needed (PostgreSQL, the embedded
# ClickHouse engine, Apache Kafka), then walk through learnvault end to end
# on fresh state: the vault and its audit log, a cohort's events through Kafka
# and the governed lander into ClickHouse; then the whole system live (API,
# gateway, lander, engine) fed by a simulated cohort in real time, with a
# refreshing dashboard. Stops what it started.
# The live part serves the console (its URL and a one-time sign-in link per role on
# the dashboard) with the simulated cohort flowing until Ctrl-C;
# LEARNVAULT_DEMO_DURATION (e.g. 60s) ends it by itself (automated runs).
set -euo pipefail
cd "$(dirname "$0")/.."
ops/deps.sh
ops/postgres.sh
ops/install-chdb.sh >/dev/null
kafka_pid=$(ops/kafka.sh)
trap '[ -n "${kafka_pid:-}" ] && kill "$kafka_pid" 2>/dev/null || true' EXIT
cargo build --quiet
run=$(date +%s)
# Fresh state for one part of the demo, in the environment: database $1, engine directory
# $2, topics $3-$run and consumer group $4-$run. A fresh database is a new audit chain: it
# gets a fresh checkpoint store (an old store's checkpoints would rightly report the
# previous chain as truncated).
fresh_state() {
  local db=$1 dir=$2 topics=$3 group=$4
  dropdb -h 127.0.0.1 -U postgres --if-exists "$db"
  rm -rf "$dir" "$dir.audit-checkpoints"
  export LEARNVAULT_AUDIT_CHECKPOINT_DIR="$dir.audit-checkpoints"
  export LEARNVAULT_DATABASE_URL="postgres://learnvault_app@127.0.0.1:5432/$db"
  export LEARNVAULT_ADMIN_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
  export LEARNVAULT_CLICKHOUSE_URL="chdb://$dir"
  export LEARNVAULT_EVENTS_TOPIC="$topics-$run"
  export LEARNVAULT_DLQ_TOPIC="$topics-$run.dlq"
  export LEARNVAULT_CONSUMER_GROUP="$group-$run"
}
fresh_state learnvault_demo "${TMPDIR:-/tmp}/learnvault-demo-chdb" learning-events-demo learnvault-demo
export LEARNVAULT_LISTEN="${LEARNVAULT_LISTEN:-127.0.0.1:8080}"
export LEARNVAULT_LANDER_BATCH_MS=100
export LEARNVAULT_LOG="${LEARNVAULT_LOG:-warn}"
target/debug/learnvault demo --spine --tamper "$@"

# The live part: its own database, engine directory and topics (the walkthrough left a tampered chain).
fresh_state learnvault_demo_live "${TMPDIR:-/tmp}/learnvault-demo-live-chdb" learning-events-live learnvault-live
export LEARNVAULT_ARCHIVE_DIR="${TMPDIR:-/tmp}/learnvault-demo-live-archives"
echo
echo "== The whole system live, with the console, for ${LEARNVAULT_DEMO_DURATION:-as long as you like} (Ctrl-C ends it)"
sleep 2
target/debug/learnvault demo --live ${LEARNVAULT_DEMO_DURATION:+--duration "$LEARNVAULT_DEMO_DURATION"}
