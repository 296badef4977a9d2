#!/usr/bin/env bash
# Tests of the development secret store (dev-secrets.sh) and `just reset-dev` against throwaway
# databases on the local PostgreSQL (127.0.0.1:5432, user postgres, as ensure-postgres.sh sets up),
# with throwaway cache directories standing for two clones. Needs no build; run by `just test`.
# shellcheck disable=SC2016 # the single-quoted `bash -c` scripts expand in that shell
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=deploy/dev/dev-secrets.sh
. "$root/deploy/dev/dev-secrets.sh"

server=postgres://postgres@127.0.0.1:5432
suffix="$$_$RANDOM"
databases=("dev_secrets_test_$suffix" "dev_secrets_legacy_$suffix")
work="$(mktemp -d)"
sleeper=''
cleanup() {
  [ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null || true
  for db in "${databases[@]}"; do
    psql "$server/postgres" -X -q -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
for db in "${databases[@]}"; do psql "$server/postgres" -X -q -c "CREATE DATABASE \"$db\""; done

failures=0
ok() { echo "ok: $1"; }
fail() { echo "FAILED: $1" >&2; failures=$((failures + 1)); }
check() { # check DESCRIPTION COMMAND...: passes when COMMAND succeeds
  local description="$1"
  shift
  if "$@"; then ok "$description"; else fail "$description"; fi
}
mode() { stat -c %a "$1"; }
never() { echo "the generator ran although the database holds the secret" >&2; return 1; }
random_text() { head -c 24 /dev/urandom | base64; }
# Writes the named files into the directory given last, only those missing (like provider-sim
# keygen --dir).
fake_keygen() {
  local dir="${*: -1}" file
  for file in "${@:1:$#-1}"; do
    [ "$file" = --dir ] || [ -e "$dir/$file" ] || printf -- '-----BEGIN KEY-----\n%s\n-----END KEY-----\n' "$(head -c 90 /dev/urandom | base64 -w 0)" > "$dir/$file"
  done
}
# The `bash -c` checks (those expecting a failure) call these.
export -f dev_psql dev_secret_name_ok dev_secrets_init dev_secrets_check dev_secret_value \
  dev_secret_files dev_secrets_export dev_secrets_store_dir random_text

export DATABASE_URL="$server/${databases[0]}"
clone_a="$work/clone-a/.dev" clone_b="$work/clone-b/.dev"

echo "# a fresh database"
COMMERCE_DEV_DIR="$clone_a"
check "the table is created, twice without harm" bash -c 'dev_secrets_init && dev_secrets_init'
check "a database without auth data passes the check" dev_secrets_check
check "a secret is generated when the database has none" dev_secret_value auth-master-key random_text
check "a second call keeps it and does not generate" dev_secret_value auth-master-key never
tricky=$'it\'s "$HOME" `x` \\ é ✓\n\n'
value_of_tricky() { printf '%s' "$tricky"; }
check "a value with quotes, backslash, unicode and trailing newlines is stored" dev_secret_value odd-value value_of_tricky
check "the cache is written" dev_secrets_cache
check "the cache directory is 0700" test "$(mode "$clone_a")" = 700
check "a cached secret is 0600" test "$(mode "$clone_a/auth-master-key")" = 600
check "the cache holds the value byte for byte" cmp -s "$clone_a/odd-value" <(printf '%s' "$tricky")
check "the stored value is the cached one" test "$(dev_psql <<< "SELECT value FROM dev.dev_secrets WHERE name = 'auth-master-key'")" = "$(cat "$clone_a/auth-master-key")"
check "a generator that fails stores nothing and fails" bash -c '! dev_secret_value broken false 2>/dev/null'
check "an empty generated value is refused" bash -c '! dev_secret_value empty true 2>/dev/null'
check "a name leaving the cache is refused" bash -c '! dev_secret_value ../escape random_text 2>/dev/null'
check "so is a name with a slash at the start" bash -c '! dev_secret_value /etc/x random_text 2>/dev/null'
check "nothing of those was stored" test "$(dev_psql <<< "SELECT count(*) FROM dev.dev_secrets WHERE name IN ('broken', 'empty', '../escape', '/etc/x')")" = 0

echo "# a second clone of the repository, then the first clone after .dev/ was deleted"
COMMERCE_DEV_DIR="$clone_b"
check "the second clone finds the secret and generates none" dev_secret_value auth-master-key never
check "its cache is written" dev_secrets_cache
check "it holds the first clone's secrets" diff -r "$clone_a" "$clone_b"
COMMERCE_DEV_DIR="$clone_a"
rm -rf "$clone_a"
dev_secret_value auth-master-key never && dev_secrets_cache
check "after rm -rf .dev the cache comes back the same" diff -r "$clone_a" "$clone_b"
echo changed > "$clone_a/auth-master-key"
dev_secrets_cache
check "the database wins over a changed cache file" cmp -s "$clone_a/auth-master-key" "$clone_b/auth-master-key"

echo "# key files from a generator that writes only missing ones (provider-sim keygen --dir)"
check "the generator's files are stored under the directory's name" dev_secret_files alipay fake_keygen merchant-private.pem merchant-public.pem --dir
dev_secrets_cache
check "they are cached under .dev/alipay/, 0600 in a 0700 directory" test "$(mode "$clone_a/alipay")/$(mode "$clone_a/alipay/merchant-private.pem")" = 700/600
cp "$clone_a/alipay/merchant-private.pem" "$work/merchant-before"
check "a generator that adds a file later stores only that one" dev_secret_files alipay fake_keygen merchant-private.pem merchant-public.pem alipay-public.pem --dir
check "the stored keys did not change" test "$(dev_psql <<< "SELECT count(*) FROM dev.dev_secrets WHERE name LIKE 'alipay/%'")" = 3
rm -rf "$clone_a"
dev_secrets_cache
check "the first key comes back from the database unchanged" cmp -s "$clone_a/alipay/merchant-private.pem" "$work/merchant-before"
check "a failing generator fails" bash -c '! dev_secret_files other false 2>/dev/null'
check "and stores nothing" test "$(dev_psql <<< "SELECT count(*) FROM dev.dev_secrets WHERE name LIKE 'other/%'")" = 0

echo "# a database from before secrets were kept in it"
export DATABASE_URL="$server/${databases[1]}"
dev_psql <<'SQL'
CREATE SCHEMA auth;
CREATE TABLE auth.signing_keys (kid text PRIMARY KEY);
CREATE TABLE auth.users (username text, status text);
INSERT INTO auth.signing_keys VALUES ('k1');
SQL
dev_secrets_init
check "signing keys without a recorded master key fail the check" bash -c '! dev_secrets_check 2>/dev/null'
message="$(dev_secrets_check 2>&1 || true)"
check "the message names the way out (just reset-dev)" grep -q 'just reset-dev' <<< "$message"
check "and the signing keys" grep -q 'signing keys' <<< "$message"
dev_psql <<< "INSERT INTO dev.dev_secrets (name, value) VALUES ('auth-master-key', 'k'); INSERT INTO auth.users VALUES ('admin', 'active');"
check "an admin without a recorded password fails the check" bash -c '! dev_secrets_check 2>/dev/null'
check "and says so" grep -q 'development admin' <<< "$(dev_secrets_check 2>&1 || true)"
dev_psql <<< "INSERT INTO dev.dev_secrets (name, value) VALUES ('admin-password', 'p')"
check "with both recorded the check passes" dev_secrets_check

echo "# just reset-dev"
reset() { COMMERCE_DEV_DIR="$clone_a" "$root/deploy/dev/reset-dev.sh" "$@" 2>&1; }
export -f reset
export root clone_a
check "an unknown argument is refused" bash -c '! "$0" --yes-please </dev/null >/dev/null 2>&1' "$root/deploy/dev/reset-dev.sh"
check "without --yes and no terminal it refuses" bash -c '! reset </dev/null >/dev/null'
check "and changed nothing" test -d "$clone_a" -a "$(dev_psql <<< "SELECT count(*) FROM dev.dev_secrets")" = 2
psql "$DATABASE_URL" -X -q -c 'SELECT pg_sleep(30)' >/dev/null 2>&1 &
sleeper=$!
for _ in $(seq 1 50); do
  [ "$(dev_psql <<< "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'SELECT pg_sleep%'")" != 0 ] && break
  sleep 0.1
done
check "while something is connected it refuses, naming just up" grep -q 'stop `just up`' <<< "$(reset --yes </dev/null || true)"
# The server would sleep on after its client went away.
dev_psql <<< "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'SELECT pg_sleep%'" >/dev/null
wait "$sleeper" 2>/dev/null || true
sleeper=''
check "with --yes it drops and recreates the database" bash -c 'out="$(reset --yes </dev/null)" || { echo "$out" >&2; exit 1; }'
check "which is empty (no dev schema, no auth schema)" test "$(dev_psql <<< "SELECT count(*) FROM pg_namespace WHERE nspname IN ('dev', 'auth')")" = 0
check "and .dev/ is gone" test ! -e "$clone_a"
check "FORCE=1 works too" bash -c 'FORCE=1 reset </dev/null >/dev/null'

if [ "$failures" != 0 ]; then
  echo "$failures check(s) of the development secret store failed" >&2
  exit 1
fi
echo "development secret store: all checks passed"
