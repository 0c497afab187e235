#!/usr/bin/env bash
# The one test command: system test dependencies, formatting, lints, then every test of the
# workspace (with cargo-nextest when it is installed).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/passerelle/target}"

bash scripts/install-test-deps.sh
bash scripts/install-desktop-deps.sh   # Tauri's GUI libraries; FreeRDP, D-Bus for the desktop tests
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The e2e tests run the broker's binary, which `cargo test` does not build for another package.
cargo build --workspace --bin passerelle
# Test processes use this binary as it is instead of each running `cargo build` (a no-op that,
# run by dozens of test processes at once, queued on cargo's lock for minutes).
export PASSERELLE_BIN="$CARGO_TARGET_DIR/debug/passerelle"
# One throwaway PostgreSQL for the run: the store's tests run on it too (PASSERELLE_TEST_PG).
# shellcheck source=lib/postgres.sh
source scripts/lib/postgres.sh
pg_test_start
trap pg_test_stop EXIT
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace
else
  cargo test --workspace
fi
# Every parser of outside input, fuzzed for a bounded time from the committed corpus.
bash scripts/fuzz.sh "${FUZZ_SECONDS:-15}"
