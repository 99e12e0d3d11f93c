#!/usr/bin/env bash
# Coordinated leader election, shown as a rolling upgrade of a control plane: the
# test kit's API server runs kube-apiserver's coordinated election controller
# (--feature-gates CoordinatedLeaderElection=true); three example schedulers on 1.34
# publish their LeaseCandidates, and are replaced one at a time by schedulers on 1.35.
# The controller keeps a 1.34 replica leading while one runs, then names a 1.35 one.
#
# The scheduler's --demo runs on a file lock with no server; this needs the API test
# server, a build of its own (--features testkit), so it is a script.
#
#   scripts/coordinated-demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p leaderelection-examples --features testkit --bin apiserver --bin scheduler
bin=target/debug
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$bin/apiserver" --kubeconfig "$work/kubeconfig" \
    --feature-gates CoordinatedLeaderElection=true >"$work/apiserver.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do
    [ -s "$work/apiserver.out" ] && break
    sleep 0.1
done
url=$(head -1 "$work/apiserver.out")
echo "API test server at $url, coordinated leader election on"

declare -A replica
start() { # start ID BINARY EMULATION
    "$bin/scheduler" --leader-elect-resource-lock=leases --kubeconfig "$work/kubeconfig" \
        --identity "$1" --leader-elect-coordinated --binary-version "$2" --emulation-version "$3" \
        --leader-elect-lease-duration 3s --leader-elect-renew-deadline 2s \
        --leader-elect-retry-period 500ms --port 0 >"$work/$1.out" 2>"$work/$1.err" &
    replica[$1]=$!
    pids+=($!)
    echo "  started $1 (binary $2, emulation $3)"
}
stop() { # stop ID
    kill -TERM "${replica[$1]}"
    wait "${replica[$1]}" 2>/dev/null || true
    echo "  stopped $1"
}
holder() {
    curl -s "$url/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-scheduler" |
        grep -o '"holderIdentity":"[^"]*"' | cut -d'"' -f4
}
show() { # show STEP
    # kube-apiserver pings the candidates and waits 5 s for their answers.
    sleep 8
    printf '%-44s holder: %s\n' "$1" "$(holder)"
}

start a 1.34 1.34
start b 1.34 1.34
start c 1.34 1.34
show "three replicas on 1.34"
for id in a b c; do
    stop "$id"
    start "$id-1.35" 1.35 1.35
    show "$id replaced by $id-1.35"
done

echo
echo "Who assigned pods (only a leader does), in order:"
for id in a b c a-1.35 b-1.35 c-1.35; do
    n=$(grep -c ASSIGN "$work/$id.out" || true)
    printf '  %-8s %3s assignments\n' "$id" "$n"
done
last=$(holder)
case "$last" in
*-1.35) echo "A 1.35 replica leads once no 1.34 replica is left: $last" ;;
*) echo "unexpected holder at the end: $last" >&2; exit 1 ;;
esac
