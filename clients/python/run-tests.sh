#!/usr/bin/env bash
# The Python package's tests (`just test` runs this after `cargo test`): builds the mesh binaries
# the tests start (the debug profile, as `cargo test --workspace` leaves them), builds the package
# (its gRPC stubs generated from proto/) into a temporary directory, and runs pytest with it, so
# the tests import exactly what `pip install clients/python` installs; ruff and mypy check the
# code first. Arguments go to pytest.
# Needs what deploy/dev/test-tools.sh installs (clients/python/requirements-test.txt) and
# PostgreSQL on 127.0.0.1:5432 (TEST_DATABASE_URL to change it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
(cd "$repo" && cargo build --locked --bins)
target_dir="$(cd "$repo" && cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
# No build isolation: the build needs only setuptools and grpcio-tools, both pinned and installed,
# so it works offline.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  --no-build-isolation --no-deps --target "$site" "$here"
cd "$here"
python3 -m ruff check --quiet .
python3 -m ruff format --check --quiet src tests examples setup.py
# Typed against the built package, generated stubs included.
(cd "$site" && python3 -m mypy --config-file "$here/pyproject.toml" -p commerce_mesh)
MYPYPATH="$site" python3 -m mypy --config-file pyproject.toml examples tests
COMMERCE_MESH_BIN_DIR="$target_dir/debug" PYTHONPATH="$site" \
  python3 -m pytest -p no:cacheprovider "$@"
