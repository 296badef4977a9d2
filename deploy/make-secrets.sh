#!/usr/bin/env bash
# Writes the secret files deploy/compose.yaml names into DIR (default deploy/secrets, gitignored),
# keeping any that exist: the PostgreSQL password, the database URL holding it, the auth master
# key (32 random bytes, base64) and the first admin's password. DATABASE_HOST (default
# postgres:5432, the Compose service) is where the URL points.
# Compose bind-mounts a secret file as it is, so the containers' users (65532, postgres) must be
# able to read it: the files are 0644 inside a 0700 directory, which no one else on the host can
# enter.
set -euo pipefail
dir="${1:-$(dirname "$0")/secrets}"
host="${DATABASE_HOST:-postgres:5432}"
umask 022
mkdir -p "$dir"
chmod 700 "$dir"

random() { head -c "$1" /dev/urandom | base64 | tr -d '\n'; }
# URL-safe: the password goes into the database URL as it is.
password() { random 24 | tr '+/' '-_' | tr -d '='; }

write() {
  local name="$1" value="$2"
  [ -s "$dir/$name" ] && return 0
  printf '%s\n' "$value" > "$dir/$name.tmp"
  chmod 644 "$dir/$name.tmp"
  mv -f "$dir/$name.tmp" "$dir/$name"
  echo "wrote $dir/$name" >&2
}

write postgres-password "$(password)"
write database-url "postgres://commerce:$(tr -d '\n' < "$dir/postgres-password")@$host/commerce"
write auth-master-key "$(random 32)"
write admin-password "$(password)"
