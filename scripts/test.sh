#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests start
# (etcd and etcdctl, protoc for etcd-client's build, kubectl, libfaketime, strace), builds
# once, then runs every test of every package of the workspace with every feature.
# Real etcd processes and the test kit's Kubernetes API test server are started by
# the tests themselves on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v kubectl >/dev/null || need+=(kubernetes-client)
command -v openssl >/dev/null || need+=(openssl)
command -v faketime >/dev/null || need+=(faketime)
command -v strace >/dev/null || need+=(strace)
# The fault suite's real partitions: an owner rule drops one replica user's packets.
command -v iptables >/dev/null || need+=(iptables)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo test --workspace --all-features --no-run
cargo test --workspace --all-features
