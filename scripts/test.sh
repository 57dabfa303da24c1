#!/usr/bin/env bash
# Runs every test of the workspace: parity against the reference fixtures, the control plane
# against SQLite and PostgreSQL (TEST_DATABASE_URL, default the local `test` database).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/ensure-postgres.sh
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
# Tests that need a GPU are ignored unless one is here.
if nvidia-smi -L >/dev/null 2>&1; then set -- --run-ignored all "$@"; fi
cargo nextest run --workspace --no-fail-fast "$@"
