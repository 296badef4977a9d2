#!/usr/bin/env bash
# Makes sure the local PostgreSQL answers on 127.0.0.1:5432 (starting the Debian cluster if it is
# installed but stopped) and that the database named in $1 (default: commerce) exists.
set -euo pipefail
database="${1:-commerce}"
host=127.0.0.1 port=5432

listening() { pg_isready -q -h "$host" -p "$port" 2>/dev/null; }

if ! command -v pg_isready >/dev/null || ! command -v psql >/dev/null; then
  echo "PostgreSQL client tools are missing. Install PostgreSQL 15 or newer, e.g.:" >&2
  echo "  sudo apt-get install postgresql postgresql-client   # Debian/Ubuntu" >&2
  echo "  brew install postgresql@15 && brew services start postgresql@15   # macOS" >&2
  exit 1
fi

if ! listening; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    echo "starting PostgreSQL $version ..." >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
  else
    echo "PostgreSQL is not listening on $host:$port and no Debian cluster was found to start." >&2
    echo "Start your PostgreSQL (trust auth for user postgres on $host:$port), or set DATABASE_URL." >&2
    exit 1
  fi
  for _ in $(seq 1 50); do listening && break; sleep 0.2; done
  listening || { echo "PostgreSQL did not come up on $host:$port" >&2; exit 1; }
fi

exists="$(psql -h "$host" -p "$port" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'")"
if [ "$exists" != "1" ]; then
  psql -h "$host" -p "$port" -U postgres -d postgres -qc "CREATE DATABASE \"$database\"" >/dev/null
  echo "created database $database" >&2
fi
