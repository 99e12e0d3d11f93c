#!/usr/bin/env bash
# Bounded fuzz runs with cargo-fuzz (libFuzzer), on the stable toolchain:
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# runs each target (default: all of them) for SECONDS (default 60) in turn; with
# FUZZ_RUNS=N set, a target also stops after N inputs. The targets:
#   record              the record parser
#   apiserver_protobuf  the test API server's protobuf request bodies
#   apiserver_apply     its server-side apply configurations (YAML and JSON)
#   apiserver_patch     its merge, strategic merge and JSON patches
# The API server targets fail on a panic and on any refusal that is not a 4xx (but
# the 500s kube-apiserver answers the same bodies with).
#
# cargo-fuzz passes a few nightly-only flags to rustc; RUSTC_BOOTSTRAP=1 lets the
# stable compiler accept them. No sanitizer: the crates have no unsafe code on these
# paths, and without ASan the run explores several times more inputs. New inputs go to
# fuzz/corpus/<target> (not committed); the committed seeds are in fuzz/seeds/<target>,
# and fuzz/<target>.dict, where there is one, lists tokens of its format. A crash
# leaves its input in fuzz/artifacts/<target>; the script goes on with the other
# targets and fails at the end, naming the targets that crashed.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(record apiserver_protobuf apiserver_apply apiserver_patch)
fi

if ! command -v cargo-fuzz >/dev/null; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
failed=()
for target in "${targets[@]}"; do
  echo "== $target: ${secs} s${FUZZ_RUNS:+, at most $FUZZ_RUNS inputs}"
  mkdir -p "fuzz/corpus/$target"
  flags=(-max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  if [ -f "fuzz/$target.dict" ]; then
    flags+=(-dict="fuzz/$target.dict")
  fi
  if [ -n "${FUZZ_RUNS:-}" ]; then
    flags+=(-runs="$FUZZ_RUNS")
  fi
  if ! cargo fuzz run --fuzz-dir fuzz --sanitizer none "$target" \
    "fuzz/corpus/$target" "fuzz/seeds/$target" -- "${flags[@]}"; then
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
