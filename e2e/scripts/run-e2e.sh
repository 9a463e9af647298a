#!/usr/bin/env bash
# Runs every end-to-end suite on the local cluster: builds the images the process kubelet runs,
# brings the cluster up (or reuses a running one), runs the suites inside its network namespace,
# and stops the cluster again unless it was already running (or E2E_KEEP_CLUSTER=1).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
source e2e/scripts/lib.sh

t0=$(date +%s)
was_running=0
if [[ -f "$state/ready" ]] && pid_alive "$run_dir/cluster.pid"; then was_running=1; fi

cargo build -p datastream-operator -p datastream-sidecar -p datastream-demo-replica -p datastream-podlet
# Pods run from the release images (`make images`), under runc; the suites' own operators and
# sidecars outside pods are the debug binaries above.
scripts/build-images.sh --test-images
cargo test --no-run -p datastream-e2e
cargo test --no-run -p datastream-podlet --features cluster-tests
cargo test --no-run -p datastream-sidecar --test kubernetes

teardown() {
  local code=$?
  if [[ "$was_running" == 0 && "${E2E_KEEP_CLUSTER:-0}" != 1 ]]; then
    e2e/scripts/cluster-down.sh || true
  fi
  echo "e2e: finished in $(( $(date +%s) - t0 ))s (exit $code)"
  exit $code
}
trap teardown EXIT

e2e/scripts/cluster-up.sh
t1=$(date +%s)
echo "e2e: cluster ready after $(( t1 - t0 ))s"

export KUBECONFIG="$state/kubeconfig"
# The cluster starts with an empty etcd: install the CRD as a user would (kubectl apply -f crds/)
# before any suite, since some (the sidecar's discovery test) need it and do not install it.
in_netns "$bin/kubectl" --kubeconfig "$KUBECONFIG" apply --server-side --force-conflicts -f crds/datastream.yaml
in_netns "$bin/kubectl" --kubeconfig "$KUBECONFIG" wait --for condition=Established --timeout=60s crd/datastreams.datastream.dev
# Cargo's test harness prints one "test result" line per binary; the suites run one test at a
# time because they share the node and its pod IP range.
in_netns env "PATH=$PATH" "HOME=$HOME" cargo test -p datastream-podlet --features cluster-tests -- --test-threads=1
# The sidecar's Kubernetes discovery test is #[ignore]d in `make unit` (it needs this cluster).
in_netns env "PATH=$PATH" "HOME=$HOME" "KUBECONFIG=$KUBECONFIG" cargo test -p datastream-sidecar --test kubernetes -- --ignored
# Every suite runs even after one fails, so that one run (and CI) reports all of them.
in_netns env "PATH=$PATH" "HOME=$HOME" cargo test --no-fail-fast -p datastream-e2e -- --test-threads=1
echo "e2e: suites ran in $(( $(date +%s) - t1 ))s"
