#!/usr/bin/env bash
# The one-shot `init` job of deploy/compose.yaml (image target `init` of deploy/Containerfile):
# applies every service's migrations, creates the first administrator, applies the plans, and
# issues the service keys the servers read from the `service-keys` volume. Safe to run again: an
# existing admin is kept, and a service key is issued only when its file is missing, so running
# servers keep working; ROTATE_SERVICE_KEYS=1 issues new keys (revoking the old ones), after which
# the servers must be restarted (docs/deploy.md, "Secrets and key rotation").
set -euo pipefail
keys="${SERVICE_KEYS_DIR:-/run/service-keys}"
plans="${PLANS_FILE:-/etc/commerce/plans.toml}"

# Migrations first: a new version's servers start only after this job (docs/deploy.md, upgrades).
# The database may still be starting where Compose cannot wait for its health (podman < 4.6).
for attempt in $(seq 1 30); do
  auth-svc migrate && break
  [ "$attempt" = 30 ] && exit 1
  sleep 2
done
billing-svc migrate
quota-svc migrate

# The first administrator; its password comes from ADMIN_PASSWORD_FILE (a Compose secret).
if output="$(auth-svc admin create --email "${ADMIN_EMAIL:?}" --username "${ADMIN_USERNAME:-admin}" 2>&1)"; then
  echo "created the administrator '${ADMIN_USERNAME:-admin}'" >&2
elif grep -qi already <<< "$output"; then
  echo "the administrator '${ADMIN_USERNAME:-admin}' exists already" >&2
else
  printf '%s\n' "$output" >&2
  exit 1
fi

billing-svc plans apply "$plans"

for service in billing-svc quota-svc edge-proxy; do
  if [ -s "$keys/$service" ] && [ "${ROTATE_SERVICE_KEYS:-0}" != 1 ]; then
    continue
  fi
  # Assigned before writing: a failed issue must not leave an empty key file behind.
  key="$(auth-svc service-key issue --service "$service" --revoke-previous)"
  (umask 077 && printf '%s\n' "$key" > "$keys/$service.tmp")
  mv -f "$keys/$service.tmp" "$keys/$service"
  echo "issued the service key of $service" >&2
done

# Development only (the `dev` profile): the simulated Alipay's and the merchant's key pairs, for
# provider-sim and billing.dev.env. keygen keeps the files that exist.
if [ "${DEV_PROVIDER_SIM:-0}" = 1 ]; then
  provider-sim keygen --dir "$keys/sim/alipay"
fi
