#!/usr/bin/env bash
# `just deploy-test`: the Compose deployment, tested with podman on this machine (as root; no
# Docker engine, no image registry). Builds the base images from Debian packages (mmdebstrap), the
# binaries on the host, and the shipped images from deploy/Containerfile on those; brings
# deploy/compose.yaml up with podman-compose (with deploy/test/compose.test.yaml: host networking
# on ports 19000-19113 and 55432), waits for every health check, runs a smoke flow through the
# edge (register, log in, plans, consume), restarts one quota-svc replica under a consume load and
# checks that no consume failed or counted twice, and brings everything down (volumes too).
# What it needs and why: docs/deploy.md, "The deployment test".
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
state="$root/.deploy-test"
project=commerce-deploy-test
podman_compose_version=1.6.0
edge=http://127.0.0.1:19000
# This machine's podman settings (no systemd, no raising ulimits), without touching /etc.
export CONTAINERS_CONF="$root/deploy/test/containers.conf"

log() { printf '[deploy-test] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || fail "podman runs as root here; run as root"
mkdir -p "$state"

# --- Tools: podman, runc and mmdebstrap from Debian; podman-compose from PyPI, pinned (Debian's
# 1.0.3 ignores profiles and dependency conditions, and runs CMD health checks through /bin/sh,
# which the runtime images do not have).
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v mmdebstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends podman runc mmdebstrap uidmap
fi
if [ "$("$state/venv/bin/podman-compose" --version 2>/dev/null | grep -o 'podman-compose version [0-9.]*')" \
  != "podman-compose version $podman_compose_version" ]; then
  python3 -m venv "$state/venv"
  "$state/venv/bin/pip" install --quiet --disable-pip-version-check "podman-compose==$podman_compose_version"
fi
compose() {
  "$state/venv/bin/podman-compose" -p "$project" \
    -f deploy/compose.yaml -f deploy/test/compose.test.yaml --profile dev "$@"
}
# Containers of this project, by Compose service name.
container() {
  podman ps -a --filter "label=io.podman.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -n 1
}

# --- Base images from Debian packages, since no registry can be reached: one for the runtime
# (and init) images, one with PostgreSQL for the test's database image.
base_image() {
  local name="$1" tar="$state/$1-rootfs.tar"
  shift
  podman image exists "localhost/commerce-test/$name:bookworm" && return 0
  if [ ! -s "$tar" ]; then
    log "making the $name base image with mmdebstrap"
    mmdebstrap --quiet --variant=minbase --format=tar "$@" bookworm "$tar.tmp"
    mv -f "$tar.tmp" "$tar"
  fi
  podman import --quiet "$tar" "localhost/commerce-test/$name:bookworm" >/dev/null
}
base_image runtime --include=ca-certificates
base_image postgres --include=postgresql-15
runtime=localhost/commerce-test/runtime:bookworm

# --- The binaries, built on the host (the Containerfile's Rust stage would need the rust image),
# handed to the Containerfile as an image holding them in /out/.
log "building the release binaries"
cargo build --release --locked --bins
bins=(auth-svc billing-svc quota-svc edge-proxy provider-sim)
rm -rf "$state/binaries" && mkdir -p "$state/binaries/out"
for bin in "${bins[@]}"; do cp "${CARGO_TARGET_DIR:-target}/release/$bin" "$state/binaries/out/"; done
printf 'FROM scratch\nCOPY out/ /out/\n' > "$state/binaries/Containerfile"
podman build --quiet -t localhost/commerce-test/binaries:latest "$state/binaries" >/dev/null

log "building the images of deploy/Containerfile"
for target in "${bins[@]}" init; do
  podman build --quiet --format docker -f deploy/Containerfile --target "$target" \
    --build-arg RUNTIME_IMAGE="$runtime" --build-arg INIT_IMAGE="$runtime" \
    --build-arg BINARIES=localhost/commerce-test/binaries:latest \
    -t "localhost/commerce-mesh/$target:test" . >/dev/null
done
podman build --quiet --format docker -f deploy/test/postgres.Containerfile \
  --build-arg PG_BASE=localhost/commerce-test/postgres:bookworm \
  -t localhost/commerce-test/postgres:15 . >/dev/null
for target in "${bins[@]}"; do
  user="$(podman image inspect --format '{{.Config.User}}' "localhost/commerce-mesh/$target:test")"
  [ "$user" = 65532:65532 ] || fail "the $target image runs as '$user', not 65532:65532"
done
health="$(podman image inspect --format '{{.Config.Healthcheck.Test}}' localhost/commerce-mesh/quota-svc:test)"
[[ "$health" == *"quota-svc healthcheck"* ]] || fail "the quota-svc image has no HEALTHCHECK ($health)"
log "images built; they run as 65532:65532, quota-svc's HEALTHCHECK is $health"

# --- Secrets as files, as an operator makes them (the URL points at the test's PostgreSQL port).
rm -rf "$state/secrets"
DATABASE_HOST=127.0.0.1:55432 deploy/make-secrets.sh "$state/secrets" 2>/dev/null
export IMAGE_PREFIX=localhost/commerce-mesh IMAGE_TAG=test
export POSTGRES_IMAGE=localhost/commerce-test/postgres:15 SECRETS_DIR="$state/secrets"
export DEV_PROVIDER_SIM=1 BILLING_ENV_FILE=./billing.dev.env AUTH_LOG_MAIL=true

ticker=''
finish() {
  local status=$?
  [ -n "$ticker" ] && kill "$ticker" 2>/dev/null
  if [ "$status" != 0 ]; then
    for service in postgres init auth billing quota-a quota-b edge provider-sim; do
      name="$(container "$service")"
      [ -n "$name" ] || continue
      log "--- last log lines of $service"
      podman logs --tail 25 "$name" 2>&1 | sed "s/^/[$service] /" >&2 || true
    done
  fi
  log "bringing the stack down (volumes too)"
  compose down -v -t 10 >/dev/null 2>&1 || true
  exit "$status"
}
trap finish EXIT
compose down -v -t 10 >/dev/null 2>&1 || true

# Up in the order the dependency conditions say, one step at a time: podman 4.3 cannot wait for
# `service_healthy`, and its `--requires` links (podman-compose's depends_on) fail to start a
# server whose dependency is the exited init job. Docker Compose orders them itself.
up() {
  compose up -d --no-deps "$@" >>"$state/compose-up.log" 2>&1 \
    || { cat "$state/compose-up.log" >&2; fail "compose up $*"; }
}
: > "$state/compose-up.log"
log "compose up: postgres"
up postgres

# podman runs health checks from systemd timers, and this machine has no systemd: run them here,
# every 2 s, as the timers would.
(
  while true; do
    for name in $(podman ps --filter "label=io.podman.compose.project=$project" --format '{{.Names}}'); do
      podman healthcheck run "$name" >/dev/null 2>&1 || true
    done
    sleep 2
  done
) &
ticker=$!

wait_healthy() {
  local service="$1" name status=''
  for _ in $(seq 1 90); do
    name="$(container "$service")"
    status=''
    if [ -n "$name" ]; then
      status="$(podman inspect --format '{{.State.Health.Status}}' "$name" 2>/dev/null || true)"
    fi
    [ "$status" = healthy ] && return 0
    sleep 1
  done
  fail "$service is not healthy after 90 s (health: '${status:-none}')"
}
wait_healthy postgres
log "compose up: init (migrations, admin, plans, service keys)"
up init
init_exit="$(podman wait "$(container init)")"
[ "$init_exit" = 0 ] || fail "the init job exited with $init_exit"
log "compose up: auth billing quota-a quota-b edge provider-sim"
up auth billing quota-a quota-b edge provider-sim
for service in auth billing quota-a quota-b edge; do wait_healthy "$service"; done
log "healthy: postgres auth billing quota-a quota-b edge (each by its own health check); init exited 0"
curl -fsS "$edge/readyz" >/dev/null || fail "the edge is not ready"
# provider-sim (the dev profile) has no health check: any HTTP answer will do.
sim_status="$(curl -sS -o /dev/null -w '%{http_code}' http://127.0.0.1:19080/ || true)"
[ "${sim_status:-000}" != 000 ] || fail "provider-sim does not answer"

# --- Smoke flow through the edge.
# field BODY PYTHON-EXPRESSION: a field of a JSON answer (d), or the whole answer in the failure.
field() {
  python3 -c 'import json, sys; d = json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null \
    || fail "unexpected answer: $1"
}
post() { curl -sS -X POST -H 'Content-Type: application/json' "$@"; }
user="deploy$(date +%s)"
password="Dt-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')-q9"
answer="$(post "$edge/v1/auth/register" -d "{\"email\":\"$user@example.com\",\"username\":\"$user\",\"password\":\"$password\"}")"
user_id="$(field "$answer" 'd["user"]["userId"]')"
answer="$(post "$edge/v1/auth/login" -d "{\"usernameOrEmail\":\"$user\",\"password\":\"$password\"}")"
token="$(field "$answer" 'd["accessToken"]')"
answer="$(curl -sS -H "Authorization: Bearer $token" "$edge/v1/plans")"
plans="$(field "$answer" 'len(d["plans"])')"
[ "$plans" -ge 1 ] || fail "no plans listed: $answer"
# The free tier reaches quota-svc through billing-svc's outbox: until it has, a consume is denied.
allowed=''
for _ in $(seq 1 60); do
  answer="$(post -H "Authorization: Bearer $token" "$edge/v1/quotas/api.requests:consume" \
    -d '{"idempotencyKey":"smoke-1"}')"
  allowed="$(field "$answer" 'd.get("allowed", False)')"
  [ "$allowed" = True ] && break
  sleep 1
done
[ "$allowed" = True ] || fail "the smoke consume was never allowed: $answer"
log "smoke: registered $user ($user_id), logged in, $plans plans listed, 1 unit of api.requests consumed"

# --- A quota-svc replica restarted under load.
used() { field "$(curl -sS -H "Authorization: Bearer $token" "$edge/v1/quotas/api.requests")" 'd["quota"].get("used", 0)'; }
consume_calls() { # Consume calls a quota-svc replica answered OK since it started.
  curl -sS "http://127.0.0.1:$1/metrics" | awk '/^rpc_requests_total\{/ && /Consume"/ && /code="Ok"/ { n += $2 } END { print n + 0 }'
}
count=900
python3 deploy/test/consume-load.py "$edge" "$token" api.requests "$count" 6 20 > "$state/load.json" &
load=$!
sleep 5
quota_a="$(container quota-a)"
started_before="$(podman inspect --format '{{.State.StartedAt}}' "$quota_a")"
before_a="$(consume_calls 19103)"
log "restarting quota-a under load (it had answered $before_a consumes)"
podman restart -t 10 "$quota_a" >/dev/null
wait_healthy quota-a
started_after="$(podman inspect --format '{{.State.StartedAt}}' "$quota_a")"
[ "$started_after" != "$started_before" ] || fail "quota-a was not restarted"
log "quota-a healthy again (started $started_before, then $started_after)"
wait "$load" || fail "the load generator failed"
after_a="$(consume_calls 19103)"
calls_b="$(consume_calls 19113)"
report="$(cat "$state/load.json")"
final_used="$(used)"
log "load: $report"
log "quota-a answered $after_a consumes after its restart; quota-b $calls_b in all"
read -r sent succeeded failed denied replayed <<< "$(python3 -c 'import json, sys
d = json.load(sys.stdin)
print(d["sent"], d["first_try"] + d["after_retry"], d["failed"], d["denied"], d["replayed"])' <<< "$report")"
log "consumes sent $sent, succeeded $succeeded, failed $failed, denied $denied, replayed on retry $replayed; counted used $final_used (expected $((count + 1)): $count + the smoke consume)"
[ "$sent" = "$count" ] || fail "sent $sent of $count"
[ "$failed" = 0 ] || fail "$failed consumes failed"
[ "$denied" = 0 ] || fail "$denied consumes were denied"
[ "$succeeded" = "$count" ] || fail "$succeeded of $count consumes succeeded"
[ "$final_used" = "$((count + 1))" ] || fail "used is $final_used, not $((count + 1)): a consume was lost or counted twice"
[ "$after_a" -gt 0 ] || fail "quota-a answered no consume after its restart: the edge did not come back to it"
log "PASS"
