#!/usr/bin/env bash
# `just up`: builds the mesh, prepares the local PostgreSQL and development secrets, runs the four
# servers and the payment provider simulator with their logs on this terminal, and stops them all
# on Ctrl-C. What it does step by step: docs/development.md.
# shellcheck disable=SC2317 # functions run indirectly: by traps and by dev_secret_value
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/dev/ensure-postgres.sh commerce
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/commerce}"
# Absolute paths: the servers get files of .dev/ by name.
COMMERCE_DEV_DIR="${COMMERCE_DEV_DIR:-$PWD/.dev}"
# shellcheck source=deploy/dev/dev-secrets.sh
. deploy/dev/dev-secrets.sh

# Development secrets live in the database they belong to (table dev.dev_secrets, see
# docs/development.md); .dev/ is a cache of them. A database that holds auth data made with secrets
# it has no record of stops here, before minutes of building, with the way out (`just reset-dev`).
dev_secrets_init
dev_secrets_check || exit 1

cargo build --release --locked --bins
bin="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)"
dev="$COMMERCE_DEV_DIR"

# Made once per database, only when it has none; production sets its own.
new_master_key() { head -c 32 /dev/urandom | base64; }
new_admin_password() { echo "dev-$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"; }
dev_secret_value auth-master-key new_master_key
dev_secret_value admin-password new_admin_password
# The payment providers' development key pairs (ours, the merchant's, and the simulated Alipay's),
# for billing-svc and provider-sim. keygen writes only missing files, so it adds what the database
# lacks.
dev_secret_files alipay "$bin/provider-sim" keygen --dir
# WeChat Pay's: the merchant and "platform" key pairs with their serials, and the APIv3 key.
dev_secret_files wechatpay "$bin/provider-sim" keygen --provider wechatpay --dir
dev_secrets_cache
master_key="$(cat "$dev/auth-master-key")"
export AUTH_MASTER_KEY="$master_key"
unset master_key

"$bin/auth-svc" migrate
# The development admin: created once per database with the database's admin password.
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
"$bin/billing-svc" migrate
# The plans on sale and the free tier, as deploy/plans.toml says (idempotent).
"$bin/billing-svc" plans apply deploy/plans.toml
# Each service gets a fresh service API key per start; the previous ones are revoked.
# (Assigned before export: `export X="$(cmd)"` would hide a failing cmd from `set -e`.)
BILLING_SERVICE_API_KEY="$("$bin/auth-svc" service-key issue --service billing-svc --revoke-previous)"
QUOTA_SERVICE_API_KEY="$("$bin/auth-svc" service-key issue --service quota-svc --revoke-previous)"
# The edge's key vouches for the client address it forwards to auth-svc.
EDGE_SERVICE_KEY="$("$bin/auth-svc" service-key issue --service edge-proxy --revoke-previous)"
# The key the edge charges quotas with on its protected routes (deploy/routes.toml): a service
# account's key with quota:consume and nothing else, apart from the edge's service key, which
# quota-svc must never see.
EDGE_QUOTA_API_KEY="$("$bin/auth-svc" service-key issue --service edge-gateway \
  --scopes quota:consume --revoke-previous)"
export BILLING_SERVICE_API_KEY QUOTA_SERVICE_API_KEY EDGE_SERVICE_KEY EDGE_QUOTA_API_KEY
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

sim_addr=127.0.0.1:9080
# No SMTP in development: mail is kept in the outbox table and its links go to this log.
run auth env AUTH_LOG_MAIL=true "$bin/auth-svc"
# The payment provider simulator stands in for Alipay and WeChat Pay: billing-svc's calls go to it,
# and it signs with the development "Alipay" and "platform" keys and checks our requests with the
# merchant's public keys.
run sim env PROVIDER_SIM_ADDR="$sim_addr" \
  SIM_ALIPAY_PRIVATE_KEY_FILE="$dev/alipay/alipay-private.pem" \
  SIM_MERCHANT_PUBLIC_KEY_FILE="$dev/alipay/merchant-public.pem" \
  SIM_WECHATPAY_KEY_DIR="$dev/wechatpay" \
  "$bin/provider-sim"
wechatpay_merchant_serial="$(cat "$dev/wechatpay/merchant-serial")"
wechatpay_platform_serial="$(cat "$dev/wechatpay/platform-serial")"
run billing env AUTH_URL=http://127.0.0.1:9001 QUOTA_URL=http://127.0.0.1:9003 \
  BILLING_PUBLIC_URL=http://127.0.0.1:9000 \
  ALIPAY_GATEWAY_URL="http://$sim_addr/gateway.do" ALIPAY_APP_ID=2021000000000001 \
  ALIPAY_PRIVATE_KEY_FILE="$dev/alipay/merchant-private.pem" \
  ALIPAY_PUBLIC_KEY_FILE="$dev/alipay/alipay-public.pem" \
  WECHATPAY_BASE_URL="http://$sim_addr" WECHATPAY_MCHID=1900000109 \
  WECHATPAY_APPID=wxd678efh567hg6787 \
  WECHATPAY_PRIVATE_KEY_FILE="$dev/wechatpay/merchant-private.pem" \
  WECHATPAY_MERCHANT_SERIAL="$wechatpay_merchant_serial" \
  WECHATPAY_APIV3_KEY_FILE="$dev/wechatpay/apiv3-key" \
  WECHATPAY_PLATFORM_PUBLIC_KEY_FILE="$dev/wechatpay/platform-public.pem" \
  WECHATPAY_PLATFORM_SERIAL="$wechatpay_platform_serial" \
  "$bin/billing-svc"
run quota "$bin/quota-svc"
# A small HTTP backend the edge protects under /demo (deploy/routes.toml), for the README's tour.
run demo env DEMO_BACKEND_ADDR=127.0.0.1:9090 "$bin/demo-backend"
run edge env EDGE_ROUTES=deploy/routes.toml "$bin/edge-proxy"

echo "mesh up: edge http://localhost:9000 (demo backend behind /demo), auth :9001, billing :9002," \
  "quota :9003, payment simulator http://$sim_addr (Ctrl-C stops)" >&2
wait -n "${pids[@]}" || true
echo "a server exited; stopping the others" >&2
exit 1
