#!/usr/bin/env bash
# Stops the local e2e cluster and removes its network namespaces. Keeps the build cache and state
# (PKI, logs); the next cluster-up starts from an empty etcd.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ "$(id -u)" == 0 ]] || { echo "cluster-down: must run as root (network namespaces)" >&2; exit 1; }

# The podlet first, so it stops its pods while the apiserver can still record it.
stop_pidfile podlet "$run_dir/podlet.pid" 30
if [[ -d "$run_dir/pods" ]]; then
  for f in "$run_dir/pods"/*; do
    [[ -f "$f" ]] || continue
    for pid in $(grep -oE '[0-9]+' "$f" 2>/dev/null || true); do
      if kill -0 "$pid" 2>/dev/null; then
        echo "killing leftover pod process $pid ($(basename "$f"))"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
    rm -f "$f"
  done
fi
stop_pidfile "control plane" "$run_dir/cluster.pid" 60
rm -f "$state/ready"

for ns in $(ip netns list | awk '{print $1}' | grep -E '^dsp-' || true) "$netns"; do
  if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
    ip netns delete "$ns" && echo "deleted netns $ns"
  fi
done
echo "cluster-down: done"
