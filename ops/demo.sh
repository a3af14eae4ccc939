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
dropdb -h 127.0.0.1 -U postgres --if-exists learnvault_demo
run=$(date +%s)
chdb_dir="${TMPDIR:-/tmp}/learnvault-demo-chdb"
rm -rf "$chdb_dir" "$chdb_dir.audit-checkpoints"
# A fresh database is a new audit chain: it gets a fresh checkpoint store (an old
# store's checkpoints would rightly report the previous chain as truncated).
export LEARNVAULT_AUDIT_CHECKPOINT_DIR="$chdb_dir.audit-checkpoints"
export LEARNVAULT_DATABASE_URL="postgres://learnvault_app@127.0.0.1:5432/learnvault_demo"
export LEARNVAULT_ADMIN_DATABASE_URL="postgres://postgres@127.0.0.1:5432/learnvault_demo"
export LEARNVAULT_LISTEN="${LEARNVAULT_LISTEN:-127.0.0.1:8080}"
export LEARNVAULT_CLICKHOUSE_URL="chdb://$chdb_dir"
export LEARNVAULT_EVENTS_TOPIC="learning-events-demo-$run"
export LEARNVAULT_DLQ_TOPIC="learning-events-demo-$run.dlq"
export LEARNVAULT_CONSUMER_GROUP="learnvault-demo-$run"
export LEARNVAULT_LANDER_BATCH_MS=100
export LEARNVAULT_LOG="${LEARNVAULT_LOG:-warn}"
target/debug/learnvault demo --spine --tamper "$@"

# The live part: its own database, engine directory and topics (the walkthrough left a tampered chain).
dropdb -h 127.0.0.1 -U postgres --if-exists learnvault_demo_live
live_dir="${TMPDIR:-/tmp}/learnvault-demo-live-chdb"
rm -rf "$live_dir" "$live_dir.audit-checkpoints"
export LEARNVAULT_AUDIT_CHECKPOINT_DIR="$live_dir.audit-checkpoints"
export LEARNVAULT_DATABASE_URL="postgres://learnvault_app@127.0.0.1:5432/learnvault_demo_live"
export LEARNVAULT_ADMIN_DATABASE_URL="postgres://postgres@127.0.0.1:5432/learnvault_demo_live"
export LEARNVAULT_CLICKHOUSE_URL="chdb://$live_dir"
export LEARNVAULT_ARCHIVE_DIR="${TMPDIR:-/tmp}/learnvault-demo-live-archives"
export LEARNVAULT_EVENTS_TOPIC="learning-events-live-$run"
export LEARNVAULT_DLQ_TOPIC="learning-events-live-$run.dlq"
export LEARNVAULT_CONSUMER_GROUP="learnvault-live-$run"
echo
echo "== The whole system live, with the console, for ${LEARNVAULT_DEMO_DURATION:-as long as you like} (Ctrl-C ends it)"
sleep 2
target/debug/learnvault demo --live ${LEARNVAULT_DEMO_DURATION:+--duration "$LEARNVAULT_DEMO_DURATION"}
