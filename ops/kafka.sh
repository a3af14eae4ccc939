#!/usr/bin/env bash
# Start a single-node Apache Kafka (KRaft: broker and controller in one JVM) unless something
# already listens on its port. Installs it first if needed (ops/install-kafka.sh). Waits until
# the broker answers a Metadata request naming itself, then prints the JVM's PID (nothing when a
# broker was already running), so callers stop what they started: the broker shuts down
# cleanly on SIGTERM.
#
#   LEARNVAULT_KAFKA_PORT             PLAINTEXT listener on 127.0.0.1 (9092)
#   LEARNVAULT_KAFKA_CONTROLLER_PORT  KRaft controller listener (9093)
#   LEARNVAULT_KAFKA_DATA             storage and kafka.log (~/.cache/learnvault/kafka-data[-PORT])
#   LEARNVAULT_KAFKA_FRESH=1          start from empty storage (tests)
#   LEARNVAULT_KAFKA_HEAP             JVM heap (768m)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${LEARNVAULT_KAFKA_PORT:-9092}"
CPORT="${LEARNVAULT_KAFKA_CONTROLLER_PORT:-9093}"
ROOT="${LEARNVAULT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/learnvault}"
default_data="$ROOT/kafka-data"
[ "$PORT" = 9092 ] || default_data="$ROOT/kafka-data-$PORT"
DATA="${LEARNVAULT_KAFKA_DATA:-$default_data}"
HEAP="${LEARNVAULT_KAFKA_HEAP:-768m}"
say() { printf '[kafka] %s\n' "$*" >&2; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Metadata v4 request (topics: none, no auto-creation); the answer's broker count is bytes 13-16
# (size, correlation id, throttle time, brokers). Ready when the broker lists itself.
answers_metadata() {
  local out
  out=$(timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
    printf "\x00\x00\x00\x0f\x00\x03\x00\x04\x00\x00\x00\x01\xff\xff\x00\x00\x00\x00\x00" >&3
    head -c 16 <&3 | od -An -tu1' "$PORT" 2>/dev/null) || return 1
  set -- $out
  [ $# -eq 16 ] && [ $(( ${13} * 16777216 + ${14} * 65536 + ${15} * 256 + ${16} )) -ge 1 ]
}

if listening "$PORT"; then
  say "a broker already listens on 127.0.0.1:$PORT"
  exit 0
fi
LIBS=$(ops/install-kafka.sh)
[ "${LEARNVAULT_KAFKA_FRESH:-0}" = 1 ] && rm -rf "$DATA"
mkdir -p "$DATA"
cat > "$DATA/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA/logs
num.partitions=6
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
PROPS
JAVA_OPTS=(-Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
  -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true
  -Dlog4j2.configurationFile="$PWD/ops/kafka/log4j2.properties" -cp "$LIBS/*")
if [ ! -f "$DATA/logs/meta.properties" ]; then
  cluster=$(java "${JAVA_OPTS[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  java "${JAVA_OPTS[@]}" kafka.tools.StorageTool format -t "$cluster" -c "$DATA/server.properties" \
    >"$DATA/format.log" 2>&1 || { say "storage format failed; see $DATA/format.log"; exit 1; }
fi
# setsid: the broker outlives this script and is not in the caller's process group.
setsid java "${JAVA_OPTS[@]}" kafka.Kafka "$DATA/server.properties" >"$DATA/kafka.log" 2>&1 < /dev/null &
pid=$!
for _ in $(seq 1 300); do
  answers_metadata && break
  kill -0 "$pid" 2>/dev/null || { say "the broker exited; see $DATA/kafka.log"; exit 1; }
  sleep 0.2
done
answers_metadata || { say "the broker did not answer within 60 s; see $DATA/kafka.log"; kill "$pid" 2>/dev/null; exit 1; }
say "Apache Kafka $(basename "$(dirname "$LIBS")" | sed 's/kafka-//') on 127.0.0.1:$PORT (pid $pid, data in $DATA)"
echo "$pid"
