#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) with cargo-fuzz and
# libFuzzer, starting from the seed corpus in fuzz/corpus/<target>. Installs cargo-fuzz if it
# is missing. cargo-fuzz needs nightly compiler features; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain provide them.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame_decoder json_request segment_reader)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "== $t for ${seconds}s"
  cargo fuzz run --sanitizer none "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -artifact_prefix="artifacts/$t/" 2>&1 \
    | grep -E "^#[0-9]+.*DONE|Done [0-9]+ runs|ERROR|panicked|SUMMARY|crash-" || true
  if ls "artifacts/$t"/crash-* >/dev/null 2>&1; then
    echo "$t: crash found, see fuzz/artifacts/$t/"
    exit 1
  fi
done
