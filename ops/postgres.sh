#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on 127.0.0.1:5432 and that `postgres`
# and `learnvault_app` can connect over loopback without a password (development
# and test machines only). Installs PostgreSQL from Debian's packages if absent,
# starts it if installed but down. Idempotent.
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
say() { printf '[postgres] %s\n' "$*" >&2; }

answers() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  say "PostgreSQL is not installed; installing it from Debian's packages"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql postgresql-client >/dev/null
fi

# learnvault's settings (ops/postgres/learnvault.conf) in the cluster's conf.d; a running
# server is restarted once when they change (shared_buffers needs a restart).
here=$(cd "$(dirname "$0")" && pwd)
version=$(ls /etc/postgresql | sort -V | tail -n 1)
conf=/etc/postgresql/$version/main/conf.d/learnvault.conf
if ! cmp -s "$here/postgres/learnvault.conf" "$conf"; then
  say "installing learnvault's settings in $conf"
  $SUDO mkdir -p "$(dirname "$conf")"
  $SUDO cp "$here/postgres/learnvault.conf" "$conf"
  if answers; then
    say "restarting PostgreSQL $version for them"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main restart
    for _ in $(seq 1 60); do answers && break; sleep 0.5; done
  fi
fi

if ! answers; then
  say "starting PostgreSQL $version"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 60); do answers && break; sleep 0.5; done
  answers || { say "PostgreSQL did not start; see /var/log/postgresql/"; exit 1; }
fi

# Loopback trust for the local roles (a fresh Debian install asks for passwords).
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
  hba=$(ls /etc/postgresql/*/main/pg_hba.conf | sort -V | tail -n 1)
  say "granting loopback trust to postgres and learnvault_app in $hba (development machine)"
  $SUDO sed -i '1i host all postgres,learnvault_app 127.0.0.1/32 trust' "$hba"
  version=$(basename "$(dirname "$(dirname "$hba")")")
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  sleep 1
fi
psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null
say "ready on 127.0.0.1:5432"
