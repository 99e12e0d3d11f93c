#!/usr/bin/env bash
# Runs tests-integration/tests/kind.rs against a fresh kind cluster:
#   1. creates a kind cluster (named $KIND_CLUSTER, default leaderelection-test),
#   2. applies the namespace and RBAC from deploy/,
#   3. runs `cargo test -p leaderelection-tests-integration --no-default-features --features kube --test kind` with KUBECONFIG pointing at
#      the cluster and LEADERELECTION_SA_TOKEN set to a token of deploy/'s
#      ServiceAccount (so one test checks that its Role is enough to lead),
#   4. deletes the cluster, also when a step fails.
# Needs kind, kubectl, a container engine (docker or podman) and cargo.
# Set KEEP_CLUSTER=1 to keep the cluster afterwards.
set -euo pipefail

cd "$(dirname "$0")/.."
cluster="${KIND_CLUSTER:-leaderelection-test}"

for tool in kind kubectl cargo; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "kind.sh: $tool is not installed; it is needed to run the kind tests" >&2
        exit 1
    fi
done

kubeconfig="$(mktemp -t "kubeconfig-$cluster.XXXXXX")"
cleanup() {
    status=$?
    if [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then
        kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
        rm -f "$kubeconfig"
    else
        echo "kind.sh: keeping cluster $cluster (KUBECONFIG=$kubeconfig)"
    fi
    exit "$status"
}
trap cleanup EXIT

echo "kind.sh: creating cluster $cluster"
kind create cluster --name "$cluster" --kubeconfig "$kubeconfig" --wait 120s
export KUBECONFIG="$kubeconfig"

echo "kind.sh: applying deploy/namespace.yaml and deploy/rbac.yaml"
kubectl apply -f deploy/namespace.yaml -f deploy/rbac.yaml
# The ServiceAccount's token for the RBAC test (kubectl 1.24 and later).
LEADERELECTION_SA_TOKEN="$(kubectl -n leaderelection-demo create token example-scheduler --duration=1h)"
export LEADERELECTION_SA_TOKEN
export LEADERELECTION_SA_NAMESPACE=leaderelection-demo
export LEADERELECTION_SA_LEASE=example-scheduler

echo "kind.sh: running the kind tests"
cargo test -p leaderelection-tests-integration --no-default-features --features kube --test kind -- --ignored --nocapture
