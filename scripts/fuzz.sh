#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for a bounded time (default 30 s each), with cargo-fuzz on the
# stable toolchain (RUSTC_BOOTSTRAP lets it pass libFuzzer's sanitizer flags).
# usage: bash scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
seconds="${1:-30}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-/var/cache/passerelle/fuzz-target}"
export RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list); do
  echo "fuzz: $target for ${seconds}s"
  cargo fuzz run -O "$target" -- -max_total_time="$seconds" -max_len=65536
done
