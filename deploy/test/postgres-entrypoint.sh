#!/usr/bin/env bash
# Entry point of the test PostgreSQL image (postgres.Containerfile): makes the cluster on first
# start, as the public image does, then runs `postgres "$@"` as the postgres user.
set -euo pipefail
bin=/usr/lib/postgresql/15/bin
as_postgres() { setpriv --reuid postgres --regid postgres --init-groups "$@"; }
[ "${1:-}" = postgres ] && shift

mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  password_file="$(mktemp)"
  tr -d '\n' < "${POSTGRES_PASSWORD_FILE:?}" > "$password_file"
  chown postgres "$password_file"
  as_postgres "$bin/initdb" -D "$PGDATA" -U "${POSTGRES_USER:?}" --pwfile="$password_file" \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$password_file"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  as_postgres "$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  as_postgres psql -U "$POSTGRES_USER" -d postgres -qc "CREATE DATABASE \"${POSTGRES_DB:?}\""
  as_postgres "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec setpriv --reuid postgres --regid postgres --init-groups "$bin/postgres" -D "$PGDATA" \
  -c listen_addresses='*' "$@"
