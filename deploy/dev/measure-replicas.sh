#!/usr/bin/env bash
# How many quota-svc replicas one PostgreSQL carries (docs/deploy.md, "Managed PostgreSQL"): for
# each replica count given (default 2 4 6), runs auth-svc, billing-svc, that many quota-svc
# replicas (DB_POOL_SIZE, default 16) and the edge against a fresh database on the local
# PostgreSQL, loads them through the edge with wrk (consumes, then reads, over 2,000 subjects,
# 256 connections, 10 s each), and samples the database connections each process holds
# (`ss`, every 0.2 s). Prints one line per case: calls/s, errors, the peak connections per
# quota-svc replica and in all, against max_connections. Ports 29000-29160; `just up` and the
# tests are not disturbed, but the figures are only worth anything on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ $# -gt 0 ]; then counts=("$@"); else counts=(2 4 6); fi
pool="${DB_POOL_SIZE:-16}"
db=commerce_replicas
bin="$PWD/target/release"
work="$(mktemp -d)"
command -v wrk >/dev/null || { echo "measure-replicas: needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release --locked --bins
psql_admin() { psql -h 127.0.0.1 -U postgres -d postgres -qAtc "$1"; }
max_connections="$(psql_admin 'SHOW max_connections')"
reserved="$(psql_admin 'SHOW superuser_reserved_connections')"
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; psql_admin "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true; rm -rf "$work"' EXIT

export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" DB_POOL_SIZE="$pool" RUST_LOG=warn
export AUTH_MASTER_KEY AUTH_URL=http://127.0.0.1:29001 AUTH_LOG_MAIL=true
AUTH_MASTER_KEY="$(head -c 32 /dev/urandom | base64)"
for _ in $(seq 1 2000); do cat /proc/sys/kernel/random/uuid; done > "$work/subjects"

# Peak database connections per process while the command runs: "<pid> <peak>" lines.
sample_connections() {
  local out="$1"
  shift
  "$@" &
  local load=$! sample=0
  : > "$work/samples"
  while kill -0 "$load" 2>/dev/null; do
    sample=$((sample + 1))
    ss -Htnp state established '( dport = :5432 )' | grep -o 'pid=[0-9]*' | sort | uniq -c \
      | awk -v t="$sample" '{ sub("pid=", "", $2); print t, $2, $1 }' >> "$work/samples"
    sleep 0.2
  done
  wait "$load"
  awk '{ if ($3 > peak[$2]) peak[$2] = $3; total[$1] += $3 } END {
    for (p in peak) print "pid", p, peak[p]; m = 0; for (t in total) if (total[t] > m) m = total[t]; print "total", m }' \
    "$work/samples" > "$out"
}

peak() { awk -v p="$1" '$1 == "pid" && $2 == p { print $3 }' "$work/peaks"; }

for n in "${counts[@]}"; do
  psql_admin "DROP DATABASE IF EXISTS $db WITH (FORCE)"
  psql_admin "CREATE DATABASE $db"
  "$bin/auth-svc" migrate
  BILLING_SERVICE_API_KEY="$("$bin/auth-svc" service-key issue --service billing-svc)"
  QUOTA_SERVICE_API_KEY="$("$bin/auth-svc" service-key issue --service quota-svc)"
  EDGE_SERVICE_KEY="$("$bin/auth-svc" service-key issue --service edge-proxy)"
  backend="$("$bin/auth-svc" service-key issue --service measure --scopes quota:consume,quota:read)"
  export BILLING_SERVICE_API_KEY QUOTA_SERVICE_API_KEY EDGE_SERVICE_KEY
  "$bin/billing-svc" plans apply deploy/plans.toml
  AUTH_LISTEN_ADDR=127.0.0.1:29001 AUTH_ADMIN_ADDR=127.0.0.1:29101 "$bin/auth-svc" 2>>"$work/log" &
  pids+=($!)
  auth_pid=$!
  upstreams=()
  quota_pids=()
  for i in $(seq 1 "$n"); do
    QUOTA_LISTEN_ADDR="127.0.0.1:$((29003 + 10 * i))" QUOTA_ADMIN_ADDR="127.0.0.1:$((29103 + 10 * i))" \
      "$bin/quota-svc" 2>>"$work/log" &
    pids+=($!)
    quota_pids+=($!)
    upstreams+=("http://127.0.0.1:$((29003 + 10 * i))")
  done
  BILLING_LISTEN_ADDR=127.0.0.1:29002 BILLING_ADMIN_ADDR=127.0.0.1:29102 QUOTA_URL="${upstreams[0]}" \
    "$bin/billing-svc" 2>>"$work/log" &
  pids+=($!)
  billing_pid=$!
  EDGE_LISTEN_ADDR=127.0.0.1:29000 EDGE_ADMIN_ADDR=127.0.0.1:29100 \
    EDGE_AUTH_UPSTREAM=http://127.0.0.1:29001 EDGE_BILLING_UPSTREAM=http://127.0.0.1:29002 \
    EDGE_QUOTA_UPSTREAM="$(IFS=,; echo "${upstreams[*]}")" "$bin/edge-proxy" 2>>"$work/log" &
  pids+=($!)
  for _ in $(seq 1 100); do curl -fs http://127.0.0.1:29000/readyz >/dev/null && break; sleep 0.3; done
  # The free tier reaches quota-svc through billing-svc's outbox.
  subject="$(head -n 1 "$work/subjects")"
  for _ in $(seq 1 100); do
    curl -s -X POST -H "x-api-key: $backend" -H 'Content-Type: application/json' \
      "http://127.0.0.1:29000/v1/quotas/api.requests:consume" \
      -d "{\"subject\":\"$subject\",\"idempotencyKey\":\"warm-$n\"}" | grep -q '"allowed":true' && break
    sleep 0.3
  done
  for mode in consume read; do
    sample_connections "$work/peaks" wrk -t2 -c256 -d10s -s bench/wrk/edge.lua \
      -H "x-api-key: $backend" http://127.0.0.1:29000 -- "$mode" "m$n-$RANDOM" "$work/subjects" api.requests \
      > "$work/wrk"
    line="$(grep '^edge-bench' "$work/wrk")"
    requests="$(grep -o 'requests=[0-9]*' <<< "$line" | cut -d= -f2)"
    duration="$(grep -o 'duration_us=[0-9]*' <<< "$line" | cut -d= -f2)"
    errors="$(grep -o 'errors=[0-9]*' <<< "$line" | cut -d= -f2)"
    per_replica=()
    for pid in "${quota_pids[@]}"; do per_replica+=("$(peak "$pid")"); done
    printf 'replicas=%d pool=%d mode=%s calls/s=%d errors=%d quota-peaks=%s auth=%s billing=%s total-peak=%s max_connections=%s reserved=%s\n' \
      "$n" "$pool" "$mode" "$((requests * 1000000 / duration))" "$errors" \
      "$(IFS=,; echo "${per_replica[*]}")" "$(peak "$auth_pid")" "$(peak "$billing_pid")" \
      "$(awk '$1 == "total" { print $2 }' "$work/peaks")" "$max_connections" "$reserved"
  done
  if grep -qi "too many clients\|remaining connection slots" "$work/log"; then
    echo "replicas=$n: PostgreSQL refused connections: $(grep -ci 'too many clients\|remaining connection slots' "$work/log") log lines" >&2
  fi
  stop_all
  : > "$work/log"
done
