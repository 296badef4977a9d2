# commerce-mesh tasks. `just up` runs the mesh, `just test` runs every test.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Runs the whole mesh (auth 9001, billing 9002, quota 9003, edge 9000, payment simulator 9080) until Ctrl-C.
up:
    deploy/dev/up.sh

# Drops and recreates the development database and deletes .dev/ (asks first; --yes or FORCE=1 skips that).
reset-dev *args:
    deploy/dev/reset-dev.sh {{args}}

# Runs every check CI runs: format, lints, and all tests against the local PostgreSQL.
test:
    deploy/dev/ensure-postgres.sh commerce
    deploy/dev/test-tools.sh
    deploy/dev/test-dev-secrets.sh
    deploy/dev/validate-k8s.sh
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
    cargo test --workspace --locked
    clients/python/run-tests.sh

# Builds the container images and runs deploy/compose.yaml with podman (as root; not part of `test`): docs/deploy.md.
deploy-test:
    deploy/test-compose.sh

# Formats the code.
fmt:
    cargo fmt --all

# Lints with warnings as errors.
lint:
    cargo clippy --workspace --all-targets --locked -- -D warnings

# Applies every service's pending migrations to $DATABASE_URL (default: the local `commerce` database).
migrate:
    deploy/dev/ensure-postgres.sh commerce
    cargo build --release --locked --bins
    for svc in auth billing quota; do target/release/$svc-svc migrate; done

# Runs the benchmarks and writes bench/RESULTS.md.
bench:
    deploy/dev/ensure-postgres.sh commerce
    deploy/dev/bench.sh
