#!/usr/bin/env bash
# Refresh the committed offline query data (.sqlx/) after changing a checked
# query or a migration. Builds need no database thanks to it.
set -euo pipefail
cd "$(dirname "$0")/.."
ops/postgres.sh
db=${LEARNVAULT_SQLX_DB:-learnvault_sqlx}  # set it when two worktrees prepare at once
dropdb -h 127.0.0.1 -U postgres --if-exists "$db"
createdb -h 127.0.0.1 -U postgres "$db"
for f in migrations/postgres/*.sql; do
  psql -q -h 127.0.0.1 -U postgres -d "$db" -v ON_ERROR_STOP=1 -f "$f"
done
rm -rf .sqlx && mkdir .sqlx
touch src/lib.rs
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$PWD/.sqlx" DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" cargo check --quiet
echo "wrote $(ls .sqlx | wc -l) query files to .sqlx/"
