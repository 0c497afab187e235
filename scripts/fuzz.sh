#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for a bounded time (default 30 s each) with cargo-fuzz, on the
# stable toolchain (RUSTC_BOOTSTRAP lets it pass libFuzzer's sanitizer flags), starting from the
# committed corpus in fuzz/corpus/<target>/. New inputs go to a scratch dir, so a run leaves the
# clone unchanged; --update-corpus merges them into the committed corpus, minimized (cmin).
# A crash stops the run with a non-zero exit; the input is in fuzz/artifacts/<target>/: turn it
# into a unit test next to the parser before fixing it.
# usage: bash scripts/fuzz.sh [SECONDS] [--update-corpus]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
seconds="${1:-30}"
update="${2:-}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-/var/cache/passerelle/fuzz-target}"
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  scratch="$(mktemp -d)"
  echo "fuzz: $target for ${seconds}s from $(ls "corpus/$target" | wc -l) committed inputs"
  # libFuzzer is chatty: keep its summary and anything that is not a progress line.
  if ! cargo fuzz run -O "$target" "$scratch" "corpus/$target" -- \
      -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 2>&1 \
      | grep -Ev '^#[0-9]+\s+(NEW|REDUCE|pulse|INITED)|^INFO: |^MERGE|^stat::(peak|slowest|new_units)|^\s*NEW_FUNC|^"|^###### |^\s+(Finished|Running) '; then
    echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
    rm -rf "$scratch"
    exit 1
  fi
  if [ "$update" = "--update-corpus" ]; then
    cp -n "$scratch"/* "corpus/$target/" 2>/dev/null || true
    cargo fuzz cmin -O "$target" "corpus/$target" -- -max_len=65536 >/dev/null 2>&1
    echo "fuzz: corpus/$target now holds $(ls "corpus/$target" | wc -l) inputs"
  fi
  rm -rf "$scratch"
done
echo "fuzz: every target ran ${seconds}s without a crash"
