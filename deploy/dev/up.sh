#!/usr/bin/env bash
# `just up`: builds the mesh, prepares the local PostgreSQL and development secrets, runs the four
# servers with their logs on this terminal, and stops them all on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/dev/ensure-postgres.sh commerce
cargo build --release --locked --bins

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/commerce}"
bin=target/release
dev=.dev
mkdir -p "$dev"
chmod 700 "$dev"

# Development secrets, made once and kept in .dev/ (git-ignored). Production sets its own.
if [ ! -s "$dev/auth-master-key" ]; then
  head -c 32 /dev/urandom | base64 > "$dev/auth-master-key"
fi
export AUTH_MASTER_KEY="$(cat "$dev/auth-master-key")"

"$bin/auth-svc" migrate
# The development admin: created once per database, its password kept in .dev/.
if [ ! -s "$dev/admin-password" ]; then
  echo "dev-$(head -c 18 /dev/urandom | base64 | tr -d '/+=')" > "$dev/admin-password"
fi
admin_password="$(cat "$dev/admin-password")"
if ADMIN_PASSWORD="$admin_password" "$bin/auth-svc" admin create \
    --email admin@localhost --username admin --display-name "Development admin" \
    >/dev/null 2>"$dev/admin-create.log"; then
  echo "created the development admin: username 'admin', password '$admin_password'" >&2
elif grep -qi "already" "$dev/admin-create.log"; then
  echo "development admin: username 'admin', password '$admin_password' (from $dev/admin-password)" >&2
else
  cat "$dev/admin-create.log" >&2
  exit 1
fi
# Each service gets a fresh service API key per start; the previous ones are revoked.
# (Assigned before export: `export X="$(cmd)"` would hide a failing cmd from `set -e`.)
BILLING_SERVICE_API_KEY="$("$bin/auth-svc" service-key issue --service billing-svc --revoke-previous)"
QUOTA_SERVICE_API_KEY="$("$bin/auth-svc" service-key issue --service quota-svc --revoke-previous)"
export BILLING_SERVICE_API_KEY QUOTA_SERVICE_API_KEY
# A development backend's key, for the README's examples (`$(cat .dev/backend-api-key)`): it
# charges users' quotas (quota:consume, quota:read) but, without the `service` scope, cannot call
# the internal RPCs. Fresh per start too.
backend_key="$("$bin/auth-svc" service-key issue --service dev-backend \
  --scopes quota:consume,quota:read --revoke-previous)"
(umask 077 && printf '%s\n' "$backend_key" > "$dev/backend-api-key")
chmod 600 "$dev/backend-api-key"
unset backend_key
echo "development backend API key (quota:consume, quota:read): $dev/backend-api-key" >&2
pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping the mesh ..." >&2
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  exit "$1"
}
trap 'stop 0' INT TERM
trap 'stop $?' EXIT

# Runs one server with its name in front of every log line.
run() {
  local name="$1"; shift
  # The prefixer ignores Ctrl-C so the servers' last lines (draining, stopped) still show.
  "$@" > >(trap '' INT TERM; exec sed -u "s/^/[$name] /") 2>&1 &
  pids+=("$!")
}

run auth "$bin/auth-svc"
run billing "$bin/billing-svc"
run quota "$bin/quota-svc"
run edge "$bin/edge-proxy"

echo "mesh up: edge http://localhost:9000, auth :9001, billing :9002, quota :9003 (Ctrl-C stops)" >&2
wait -n "${pids[@]}" || true
echo "a server exited; stopping the others" >&2
exit 1
