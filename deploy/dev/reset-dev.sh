#!/usr/bin/env bash
# `just reset-dev [--yes]`: drops and recreates the development database ($DATABASE_URL, by default
# the local `commerce`) and deletes .dev/, so the next `just up` starts afresh with new development
# secrets. Asks first unless given --yes or FORCE=1 (for scripts). Refuses while anything (a
# running `just up`) is connected to the database.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"

yes="${FORCE:-0}"
for arg in "$@"; do
  case "$arg" in
    --yes | -y) yes=1 ;;
    *) echo "usage: just reset-dev [--yes]   (or FORCE=1 just reset-dev)" >&2; exit 2 ;;
  esac
done

"$root/deploy/dev/ensure-postgres.sh" commerce
url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/commerce}"
dev_dir="${COMMERCE_DEV_DIR:-$root/.dev}"

# postgres://user@host:port/<database>?params: the database name, and the same URL naming the
# `postgres` database for the DROP/CREATE (a database cannot drop itself).
base="${url%%\?*}"
params="${url#"$base"}"
database="${base##*/}"
if [[ "$base" != *://*/* || ! "$database" =~ ^[A-Za-z0-9_-]+$ ]]; then
  echo "reset-dev: cannot read a database name from DATABASE_URL (postgres://user@host:port/name)" >&2
  exit 2
fi
maintenance="${base%/*}/postgres$params"

if [ "$yes" != 1 ]; then
  if [ ! -t 0 ]; then
    echo "reset-dev: would drop database '$database' and delete $dev_dir; not a terminal, so pass --yes (or FORCE=1) to do it" >&2
    exit 1
  fi
  echo "This drops the database '$database' (every development account, key, plan, subscription and"
  echo "quota in it) and deletes $dev_dir. The next \`just up\` creates new development secrets."
  read -r -p "Type 'yes' to go on: " answer
  [ "$answer" = yes ] || { echo "nothing changed" >&2; exit 1; }
fi

mpsql() { psql "$maintenance" -X -q -v ON_ERROR_STOP=1 -t -A -v db="$database"; }
others="$(mpsql <<< "SELECT count(*) FROM pg_stat_activity WHERE datname = :'db' AND pid <> pg_backend_pid()")"
if [ "$others" != 0 ]; then
  echo "reset-dev: $others connection(s) to '$database' are open: stop \`just up\` (Ctrl-C) first, then run this again" >&2
  exit 1
fi
mpsql <<'SQL'
SET client_min_messages = warning;
SELECT format('DROP DATABASE IF EXISTS %I', :'db') \gexec
SELECT format('CREATE DATABASE %I', :'db') \gexec
SQL
rm -rf "$dev_dir"
echo "recreated the empty database '$database' and deleted $dev_dir; \`just up\` sets it up again" >&2
