#!/usr/bin/env bash
# A bounded fuzz run of the record parser with cargo-fuzz (libFuzzer), on the stable
# toolchain: scripts/fuzz.sh [SECONDS] (default 60).
#
# cargo-fuzz passes a few nightly-only flags to rustc; RUSTC_BOOTSTRAP=1 lets the
# stable compiler accept them. No sanitizer: the crate has no unsafe code on this path,
# and without ASan the run explores several times more inputs. New inputs go to
# fuzz/corpus/record (not committed); the committed seeds are in fuzz/seeds/record.
# A crash leaves its input in fuzz/artifacts/record and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"

if ! command -v cargo-fuzz >/dev/null; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/corpus/record
cargo fuzz run --fuzz-dir fuzz --sanitizer none record \
  fuzz/corpus/record fuzz/seeds/record \
  -- -dict=fuzz/record.dict -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
