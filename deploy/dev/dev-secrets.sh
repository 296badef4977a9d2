# shellcheck shell=bash
# Development secrets kept in the development database itself (sourced by up.sh, reset-dev.sh and
# test-dev-secrets.sh; not run on its own). A database's secrets belong to it: the auth master key
# that sealed its signing keys, the admin password its admin was created with, the payment
# provider keys. Kept in the table `dev.dev_secrets` of that database, every clone that uses the
# database, and a clone whose .dev/ was deleted, gets the same ones. .dev/ is only a cache written
# from the table (files 0600, directories 0700), rewritten at every `just up`.
#
# Needs DATABASE_URL and COMMERCE_DEV_DIR (an absolute path, the cache directory). A secret's name
# is its path under COMMERCE_DEV_DIR. Values travel to psql on stdin, base64-encoded inside SQL
# literals, so they never appear on a command line (visible in `ps`) and need no quoting.
# The functions return non-zero on failure without relying on `set -e`, which callers in an
# `if` or `||` would switch off.

# psql on the development database: no ~/.psqlrc, stop at the first error, bare values.
dev_psql() {
  psql "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 -t -A "$@"
}

# Names become paths under the cache: lower-case segments, no `..`, no leading slash.
dev_secret_name_ok() {
  if [[ ! "$1" =~ ^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$ || "$1" == *..* ]]; then
    echo "dev-secrets: bad secret name '$1'" >&2
    return 1
  fi
}

# Creates the table (idempotent). Only this script creates the `dev` schema: production databases
# never have it.
dev_secrets_init() {
  dev_psql <<'SQL'
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS dev;
COMMENT ON SCHEMA dev IS 'development only: made by deploy/dev/up.sh (just up), never by the services';
CREATE TABLE IF NOT EXISTS dev.dev_secrets (
    name text PRIMARY KEY,
    value text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE dev.dev_secrets IS 'development secrets of this database; .dev/<name> is a cache of value';
SQL
}

# Fails, with the way out, when the database holds auth data made with secrets it has no record of:
# signing keys sealed under an unknown AUTH_MASTER_KEY (auth-svc could not start), or a development
# admin whose password is unknown. Such a database predates this table (its secrets were only in
# some clone's .dev/). Run after dev_secrets_init, before any secret is generated.
dev_secrets_check() {
  local has_auth orphans
  has_auth="$(dev_psql -c "SELECT to_regclass('auth.signing_keys') IS NOT NULL AND to_regclass('auth.users') IS NOT NULL")" || return 1
  [ "$has_auth" = t ] || return 0
  orphans="$(dev_psql <<'SQL'
SELECT concat_ws(E'\n',
    CASE WHEN EXISTS (SELECT 1 FROM auth.signing_keys)
          AND NOT EXISTS (SELECT 1 FROM dev.dev_secrets WHERE name = 'auth-master-key')
        THEN '  - token signing keys sealed with an AUTH_MASTER_KEY' END,
    CASE WHEN EXISTS (SELECT 1 FROM auth.users WHERE username = 'admin' AND status <> 'deleted')
          AND NOT EXISTS (SELECT 1 FROM dev.dev_secrets WHERE name = 'admin-password')
        THEN '  - a development admin with a password' END);
SQL
)" || return 1
  [ -z "$orphans" ] && return 0
  local database
  database="$(dev_psql -c 'SELECT current_database()')" || database='the development database'
  cat >&2 <<EOF
The database '$database' holds data made with development secrets it has no record of:
$orphans
It was set up by an older \`just up\`, which kept these secrets only in one clone's .dev/, so which
ones belong to it is unknown here (auth-svc would not start with another master key).

Way out: \`just reset-dev\` drops and recreates the database '$database' (every development
account, key, subscription and quota in it) and clears .dev/. The next \`just up\` then makes
new secrets and keeps them in the database (table dev.dev_secrets).
EOF
  return 1
}

# dev_secret_value NAME GENERATOR...: makes sure the database holds secret NAME, storing
# GENERATOR's standard output (byte for byte) the first time. GENERATOR runs only when the database
# has no such secret; when two runs race, the first stored value wins for both.
dev_secret_value() {
  local name="$1" value
  shift
  dev_secret_name_ok "$name" || return 1
  [ "$(dev_psql -v name="$name" <<< "SELECT count(*) FROM dev.dev_secrets WHERE name = :'name'")" = 1 ] && return 0
  # As base64, so a trailing newline survives the command substitution.
  if ! value="$(set -o pipefail; "$@" | base64 | tr -d '\n')" || [ -z "$value" ]; then
    echo "dev-secrets: generating $name failed" >&2
    return 1
  fi
  dev_psql -v name="$name" <<SQL
INSERT INTO dev.dev_secrets (name, value)
VALUES (:'name', convert_from(decode('$value', 'base64'), 'UTF8'))
ON CONFLICT (name) DO NOTHING;
SQL
}

# dev_secret_files DIR GENERATOR...: runs `GENERATOR... <tmpdir>` with <tmpdir> holding the secrets
# stored under DIR/, then stores every file GENERATOR added (DIR/<file>). For generators that, like
# `provider-sim keygen --dir`, write only the files that are missing: they run at every start and
# add only what the database lacks (key pairs are written together, so they stay pairs).
dev_secret_files() {
  local dir="$1" tmp status=0
  shift
  dev_secret_name_ok "$dir" || return 1
  tmp="$(mktemp -d)" || return 1
  # The stored files, then the generator, then the new ones in one transaction: a concurrent run
  # that stored a set first wins as a whole (both insert the same names in the same order).
  if dev_secrets_export "$dir/" "$tmp" && "$@" "$tmp"; then
    dev_secrets_store_dir "$dir" "$tmp" || status=1
  else
    echo "dev-secrets: generating $dir/ failed" >&2
    status=1
  fi
  rm -rf "$tmp"
  return "$status"
}

# Inserts every regular file of TMP as DIR/<file> unless that name is stored already.
dev_secrets_store_dir() {
  local dir="$1" tmp="$2" file base sql=''
  for file in "$tmp"/*; do
    [ -f "$file" ] || continue
    base="${file##*/}"
    dev_secret_name_ok "$dir/$base" || return 1
    sql+="INSERT INTO dev.dev_secrets (name, value) VALUES ('$dir/$base', convert_from(decode('$(base64 < "$file" | tr -d '\n')', 'base64'), 'UTF8')) ON CONFLICT (name) DO NOTHING;"$'\n'
  done
  [ -n "$sql" ] || return 0
  dev_psql <<< "BEGIN; $sql COMMIT;"
}

# dev_secrets_export PREFIX DEST: writes every secret whose name starts with PREFIX to
# DEST/<name without PREFIX> (files 0600, directories 0700), replacing what is there.
dev_secrets_export() {
  local prefix="$1" dest="$2" rows name value path
  rows="$(dev_psql -F ' ' -v prefix="$prefix" <<'SQL'
SELECT substr(name, length(:'prefix') + 1), translate(encode(convert_to(value, 'UTF8'), 'base64'), E'\n', '')
FROM dev.dev_secrets
WHERE starts_with(name, :'prefix')
ORDER BY name;
SQL
)" || return 1
  [ -n "$rows" ] || return 0
  while read -r name value; do
    dev_secret_name_ok "$name" || return 1
    path="$dest/$name"
    (umask 077 && mkdir -p "${path%/*}") || return 1
    # A temporary file and a rename: a reader never sees half a key.
    (umask 077 && printf '%s' "$value" | base64 -d > "$path.tmp") || return 1
    chmod 600 "$path.tmp" && mv -f "$path.tmp" "$path" || return 1
  done <<< "$rows"
}

# Rewrites the cache COMMERCE_DEV_DIR from the database (every secret, files 0600).
dev_secrets_cache() {
  (umask 077 && mkdir -p "$COMMERCE_DEV_DIR") && chmod 700 "$COMMERCE_DEV_DIR" || return 1
  dev_secrets_export '' "$COMMERCE_DEV_DIR"
}
