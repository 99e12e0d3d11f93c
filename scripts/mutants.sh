#!/usr/bin/env bash
# Mutation testing of the safety code: the election loop, the term supervisor,
# Leadership and the lock trait's default methods, against the fast suites (the
# paused-clock elector tests, the lock contract suite on memory, the library's unit
# tests and the memory fault scenarios with a few seeds each).
#
#   scripts/mutants.sh            # every mutant of those files
#   scripts/mutants.sh --list     # the mutants, without running them
#
# Every mutant must be caught (a test fails or times out) or be listed in
# scripts/mutants-equivalent.txt with the reason it cannot change behaviour. The
# script exits 1 when a mutant that is not listed survives. Not part of .ci/run: it
# takes about a quarter of an hour on 2 cores. Installs cargo-mutants when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants

# A disposable checkout of HEAD, mutated in place so that its builds reuse one target
# directory across runs instead of copying the tree (and rebuilding) per mutant.
work="${MUTANTS_DIR:-$root/target/mutants-tree}"
rm -rf "$work"
git worktree prune
git worktree add --detach --force "$work" HEAD >/dev/null
trap 'git -C "$root" worktree remove --force "$work" >/dev/null 2>&1 || true' EXIT
# A target directory of its own: the mutated tree builds artifacts of the same names
# as the checkout's, so sharing one (or hard links to one) mixes mutated code into
# the checkout's own builds.
export CARGO_TARGET_DIR="${MUTANTS_TARGET_DIR:-$root/target/mutants}"

files=(src/elector.rs src/term.rs src/leadership.rs src/lock/mod.rs)
args=()
for f in "${files[@]}"; do args+=(--file "$f"); done

out="$root/target/mutants-out"
rm -rf "$out"
cd "$work"
# Default features: the memory and file locks, no Kubernetes or etcd code, so each
# mutant rebuilds in seconds. The fault suite reads its filter and seed count from
# the environment, since the same arguments go to every test binary; the hundred-
# candidate elector test is left out for its ten seconds (the memory fault
# scenarios cover crashes under the same clock).
export FAULTS_FILTER=memory FAULTS_SEEDS=5
set +e
# The library is mutated; its unit tests and the election tests of tests-integration
# (another package of the workspace) judge each mutant.
cargo mutants --in-place --package leaderelection --test-workspace=true "${args[@]}" --output "$out" \
    --timeout 10 "$@" \
    -- --lib --test elector --test contract --test faults \
    -- --skip hundred_candidates_with_random_crashes
status=$?
set -e
[ "${1:-}" = "--list" ] && exit 0

missed="$out/mutants.out/missed.txt"
[ -f "$missed" ] || { echo "mutants.sh: no results (cargo mutants exited $status)"; exit 1; }
# A listed equivalent is `path: mutant | reason`, as missed.txt names it without the line.
unlisted=$(grep -vxFf <(grep -v '^#' "$root/scripts/mutants-equivalent.txt" | sed '/^$/d' | cut -d'|' -f1 | sed 's/ *$//') \
    <(sed -E 's/^([^:]+):[0-9]+:[0-9]+: /\1: /' "$missed") || true)
echo "caught: $(wc -l < "$out/mutants.out/caught.txt"), timeouts: $(wc -l < "$out/mutants.out/timeout.txt"), missed: $(wc -l < "$missed"), unviable: $(wc -l < "$out/mutants.out/unviable.txt")"
if [ -n "$unlisted" ]; then
    echo "mutants.sh: mutants that survived and are not listed as equivalent:"
    echo "$unlisted"
    exit 1
fi
echo "mutants.sh: every mutant was caught or is a listed equivalent"
