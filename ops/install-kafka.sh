#!/usr/bin/env bash
# Install Apache Kafka's broker from Maven Central (not a tarball): ops/kafka/pom.xml names
# kafka_2.13 and the log4j2 pieces; Maven copies their runtime jars into the user cache and
# every jar is checked against ops/kafka/jars.sha256 (the exact set: a missing, extra or
# altered jar fails). Offline after the first fetch. Prints the libs directory on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' ops/kafka/pom.xml)
ROOT="${LEARNVAULT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/learnvault}"
LIBS="$ROOT/kafka-$VERSION/libs"
SUMS="$PWD/ops/kafka/jars.sha256"
say() { printf '[kafka] %s\n' "$*" >&2; }

verify() { # the directory holds exactly the listed jars, each with its checksum
  [ -d "$1" ] || return 1
  (cd "$1" && sha256sum --quiet --strict -c "$SUMS" >/dev/null 2>&1) || return 1
  [ "$(ls "$1" | grep -c '\.jar$')" = "$(grep -c . "$SUMS")" ]
}

if [ -f "$LIBS/.verified" ] && cmp -s "$LIBS/.verified" "$SUMS"; then
  echo "$LIBS"
  exit 0
fi
command -v mvn >/dev/null 2>&1 || { say "Maven is required (apt-get install maven)"; exit 1; }
command -v java >/dev/null 2>&1 || { say "Java 17 is required (apt-get install openjdk-17-jre-headless)"; exit 1; }
say "fetching Apache Kafka $VERSION from Maven Central (~60 MB, once)"
tmp="$ROOT/kafka-$VERSION/libs.part"
rm -rf "$tmp"
mkdir -p "$tmp"
mvn -q -B -f ops/kafka/pom.xml -Dmaven.repo.local="$ROOT/m2" \
  dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >&2
if ! verify "$tmp"; then
  say "the fetched jars do not match ops/kafka/jars.sha256:"
  (cd "$tmp" && sha256sum -c "$SUMS" 2>&1 | grep -v ': OK$' >&2) || true
  exit 1
fi
rm -rf "$LIBS"
mv "$tmp" "$LIBS"
cp "$SUMS" "$LIBS/.verified"
say "installed $LIBS"
echo "$LIBS"
