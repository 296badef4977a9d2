#!/usr/bin/env bash
# `just bench`: builds release binaries, runs each load generator against real servers and a fresh
# PostgreSQL database of its own, and assembles bench/RESULTS.md from the sections they write.
# Arguments name the steps to run (auth quota reads webhook edge gateway; default all): the other sections stay
# as their last run wrote them, so one step can be rerun alone, e.g. `deploy/dev/bench.sh edge`.
set -euo pipefail
cd "$(dirname "$0")/../.."

steps=" ${*:-auth quota reads webhook edge gateway} "
want() { [[ "$steps" == *" $1 "* ]]; }
packages=(-p bench)
want auth && packages+=(-p auth-svc)
if want quota || want reads || want edge || want gateway; then packages+=(-p quota-svc); fi
if want edge || want gateway; then packages+=(-p edge-proxy); fi
cargo build --release --locked "${packages[@]}"
bin=target/release
mkdir -p bench/results
psql_admin() { psql -h 127.0.0.1 -U postgres -d postgres -qAtc "$1"; }

if want auth; then
  # auth-svc on its own ports and database, so a running `just up` is not disturbed.
  auth_db=commerce_bench_auth
  psql_admin "DROP DATABASE IF EXISTS $auth_db WITH (FORCE)"
  psql_admin "CREATE DATABASE $auth_db"
  export AUTH_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$auth_db"
  export AUTH_LISTEN_ADDR=127.0.0.1:19001 AUTH_ADMIN_ADDR=127.0.0.1:19101
  export AUTH_MASTER_KEY="$(head -c 32 /dev/urandom | base64)"
  # The bench registers its users from one address; the sign-up limits would stop it.
  export REGISTRATIONS_PER_CLIENT_HOUR=0 REGISTRATIONS_PER_HOUR=0 AUTH_LOG_MAIL=true
  "$bin/auth-svc" migrate
  BENCH_SERVICE_KEY="$("$bin/auth-svc" service-key issue --service bench)"
  RUST_LOG=warn "$bin/auth-svc" 2>/tmp/commerce-bench-auth.log &
  auth_pid=$!
  cleanup() {
    kill -TERM "$auth_pid" 2>/dev/null || true
    wait "$auth_pid" 2>/dev/null || true
    psql_admin "DROP DATABASE IF EXISTS $auth_db WITH (FORCE)" || true
  }
  trap cleanup EXIT
  for _ in $(seq 1 100); do
    grpcurl -plaintext 127.0.0.1:19001 grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"' && break
    sleep 0.2
  done
  BENCH_SERVICE_KEY="$BENCH_SERVICE_KEY" AUTH_URL=http://127.0.0.1:19001 "$bin/auth_bench"
  cleanup
  trap - EXIT
fi

# quota-svc: the load generator starts its own servers (batched and one transaction per call).
if want quota; then "$bin/quota_bench" --quota-bin "$bin/quota-svc"; fi

# quota-svc's reads beside its health check and PostgreSQL's point select, in one run.
if want reads; then "$bin/quota_read_bench" --quota-bin "$bin/quota-svc"; fi

# billing-svc's webhook path: served in-process by the load generator over its own database.
if want webhook; then "$bin/webhook_bench"; fi

# edge-proxy against direct gRPC on one quota-svc: wrk for the closed loop (Debian's package),
# the load generator's own open loop.
if want edge; then
  if ! command -v wrk >/dev/null; then
    apt_get() { if [ "$(id -u)" = 0 ]; then apt-get "$@"; else sudo apt-get "$@"; fi; }
    export DEBIAN_FRONTEND=noninteractive
    apt_get install -y --no-install-recommends wrk || { apt_get update && apt_get install -y --no-install-recommends wrk; }
  fi
  "$bin/edge_bench" --quota-bin "$bin/quota-svc" --edge-bin "$bin/edge-proxy"
fi

# The edge's protected route against the same trivial HTTP upstream called directly.
if want gateway; then
  "$bin/gateway_bench" --quota-bin "$bin/quota-svc" --edge-bin "$bin/edge-proxy"
fi

{
  echo "# Benchmark results"
  echo
  echo "Written by \`just bench\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo),"
  echo "PostgreSQL $(psql -h 127.0.0.1 -U postgres -d postgres -qAtc 'SHOW server_version'), release build). Every comparison"
  echo "is measured in the same run; the load generator shares the machine with the servers."
  if [ "$steps" != " auth quota reads webhook edge gateway " ]; then
    echo "Only these steps ran that day:${steps% }; the other sections are from earlier runs."
  fi
  echo
  for section in bench/results/*.md; do
    cat "$section"
    echo
  done
} > bench/RESULTS.md
echo "wrote bench/RESULTS.md" >&2
