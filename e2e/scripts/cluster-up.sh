#!/usr/bin/env bash
# Starts the local e2e cluster in the background (idempotent): sandbox network, control plane, and
# the process kubelet when its crate exists. Safe to run again while the cluster is up.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ready_timeout="${CLUSTER_READY_TIMEOUT:-180}"
node_timeout="${NODE_READY_TIMEOUT:-120}"
t_start="$(date +%s.%N)"
elapsed() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }'; }

[[ "$(id -u)" == 0 ]] || { echo "cluster-up: must run as root (network namespaces)" >&2; exit 1; }
command -v ip >/dev/null || { echo "cluster-up: 'ip' (iproute2) is required" >&2; exit 1; }
mkdir -p "$run_dir" "$log_dir"
lock_cluster

# (`grep >/dev/null`, not `grep -q`, after a pipe: under pipefail, -q exits at the first match and
# the writer's SIGPIPE fails the pipeline, so an existing address was added again now and then.)
# Sandbox network: a namespace with only lo and a bridge. No uplink and no default route, so no
# packet sent to a 10.x (or any other non-local) address can leave the machine.
if ! ip netns list | grep -w "^$netns" >/dev/null; then
  ip netns add "$netns"
fi
in_netns ip link set lo up
if ! in_netns ip link show "$bridge" >/dev/null 2>&1; then
  in_netns ip link add "$bridge" type bridge
fi
in_netns ip addr show dev "$bridge" | grep "inet $bridge_cidr" >/dev/null || in_netns ip addr add "$bridge_cidr" dev "$bridge"
in_netns ip link set "$bridge" up
if in_netns ip route show default | grep . >/dev/null; then
  echo "cluster-up: netns $netns has a default route; refusing to run (packets could leave the machine)" >&2
  exit 1
fi

"$root/e2e/scripts/build-cluster.sh"

show_logs() {
  for f in "$log_dir/cluster.log" "$log_dir"/kube-apiserver.log "$log_dir"/kube-controller-manager.log \
           "$log_dir"/kube-scheduler.log "$log_dir"/etcd.log "$log_dir/podlet.log"; do
    [[ -f "$f" ]] || continue
    echo "----- tail $f"
    tail -n 25 "$f"
  done
}

if pid_alive "$run_dir/cluster.pid" && [[ -f "$state/ready" ]]; then
  echo "cluster-up: control plane already running (pid $(cat "$run_dir/cluster.pid"))"
else
  if pid_alive "$run_dir/cluster.pid"; then
    echo "cluster-up: control plane (pid $(cat "$run_dir/cluster.pid")) is starting; waiting for it"
  else
    rm -f "$state/ready"
    echo "cluster-up: starting the control plane (log $log_dir/cluster.log)"
    start_in_netns "$run_dir/cluster.pid" "$log_dir/cluster.log" "$bin/k8s-e2e" up --state "$state" \
      --advertise-address "$advertise" --pid-file "$run_dir/cluster.pid"
  fi
  for ((i = 0; i < ready_timeout * 4; i++)); do
    [[ -f "$state/ready" ]] && break
    if ! pid_alive "$run_dir/cluster.pid"; then
      echo "cluster-up: the control plane exited during start-up" >&2
      show_logs >&2
      exit 1
    fi
    sleep 0.25
  done
  if [[ ! -f "$state/ready" ]]; then
    echo "cluster-up: control plane not ready within ${ready_timeout}s" >&2
    show_logs >&2
    exit 1
  fi
  echo "cluster-up: control plane ready after $(elapsed)"
fi

# The process kubelet (another crate) runs pods as local processes in their own netns.
if [[ -f "$root/e2e/podlet/Cargo.toml" && -z "${CLUSTER_NO_PODLET:-}" ]]; then
  if pid_alive "$run_dir/podlet.pid"; then
    echo "cluster-up: podlet already running (pid $(cat "$run_dir/podlet.pid"))"
  else
    echo "cluster-up: building the podlet and the images it runs (make images)"
    (cd "$root" && cargo build -p datastream-podlet && scripts/build-images.sh --test-images)
    echo "cluster-up: starting the podlet (log $log_dir/podlet.log)"
    # Relative paths as in the shared contract, so run from the repository root.
    cd "$root"
    start_in_netns_host_mounts "$run_dir/podlet.pid" "$log_dir/podlet.log" target/debug/datastream-podlet \
      --kubeconfig e2e/.state/kubeconfig --node-name "$node_name" --bridge "$bridge" \
      --pod-cidr 10.244.1.0/24 --state-dir e2e/.state --images target/images
  fi
  ok=
  for ((i = 0; i < node_timeout * 2; i++)); do
    status="$(in_netns "$bin/kubectl" --kubeconfig "$kubeconfig" get node "$node_name" \
      -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)"
    [[ "$status" == True ]] && { ok=1; break; }
    pid_alive "$run_dir/podlet.pid" || break
    sleep 0.5
  done
  if [[ -z "$ok" ]]; then
    echo "cluster-up: node $node_name not Ready within ${node_timeout}s (or the podlet exited)" >&2
    in_netns "$bin/kubectl" --kubeconfig "$kubeconfig" get nodes -o wide >&2 || true
    show_logs >&2
    exit 1
  fi
  echo "cluster-up: node $node_name Ready after $(elapsed)"
else
  echo "cluster-up: podlet not started (e2e/podlet absent or CLUSTER_NO_PODLET set); no node will run pods"
fi

cat <<MSG
cluster-up: done in $(elapsed)
  kubeconfig: $kubeconfig (server https://$advertise:6443, reachable only inside netns $netns)
  kubectl:    ip netns exec $netns $bin/kubectl --kubeconfig $kubeconfig get nodes
              or: e2e/scripts/kubectl get nodes
  any tool:   e2e/scripts/in-cluster-netns <command>   (KUBECONFIG is set)
  logs:       $log_dir/{cluster,kube-apiserver,kube-controller-manager,kube-scheduler,etcd,audit,podlet}.log
  pod logs:   e2e/scripts/logs <namespace> <pod> [container] [-f]
  volumes:    StorageClasses standard (default) and standard-expandable; data in $volumes_dir
              (the provisioner's $hostpath_pv links there; cluster-down deletes it)
  stop:       make cluster-down
MSG
