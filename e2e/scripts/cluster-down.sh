#!/usr/bin/env bash
# Stops the local e2e cluster, removes its network namespaces and deletes the persistent volumes'
# data (e2e/.state/volumes, linked from /tmp/hostpath_pv). Keeps the build cache and the rest of the
# state (PKI, logs); the next cluster-up starts from an empty etcd.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ "$(id -u)" == 0 ]] || { echo "cluster-down: must run as root (network namespaces)" >&2; exit 1; }
lock_cluster

# The podlet first, so it stops its pods while the apiserver can still record it.
stop_pidfile podlet "$run_dir/podlet.pid" 30
# Pods the podlet could not stop (it was killed, or crashed): it records each container as
# run/pods/<pod uid>/<container>.pid holding "<pid> <start time>"; the start time (field 22 of
# /proc/<pid>/stat) guards against killing an unrelated process that reused the pid.
proc_start_time() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  awk '{ print $20 }' <<<"$stat"
}
if [[ -d "$run_dir/pods" ]]; then
  while IFS= read -r -d '' f; do
    read -r pid recorded _ <"$f" || true
    [[ "$pid" =~ ^[0-9]+$ ]] || continue
    if [[ -n "${recorded:-}" && "$(proc_start_time "$pid" || true)" == "$recorded" ]]; then
      # The container's init: killing it ends every process of its PID namespace.
      echo "killing leftover container $pid (${f#"$run_dir/pods/"})"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done < <(find "$run_dir/pods" -name '*.pid' -type f -print0)
fi
# Containers runc still knows of (run/runc), then the overlay root file systems under run/pods.
if [[ -d "$run_dir/runc" ]] && command -v runc >/dev/null; then
  for id in $(runc --root "$run_dir/runc" list -q 2>/dev/null || true); do
    runc --root "$run_dir/runc" delete --force "$id" 2>/dev/null && echo "deleted leftover container $id" || true
  done
fi
if [[ -d "$run_dir/pods" ]]; then
  awk -v dir="$run_dir/pods/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
  rm -rf "${run_dir:?}/pods"
fi
# The unpacked images (one rootfs per digest; every commit has new digests, and the podlet does
# no image garbage collection): unpacked again on demand at the next start.
rm -rf "${state:?}/images"
stop_pidfile "control plane" "$run_dir/cluster.pid" 60
rm -f "$state/ready"

# Persistent volumes (e2e/cluster/storage.go): the HostPath provisioner writes under the hard-coded
# /tmp/hostpath_pv, a link to $state/volumes while the cluster runs. The supervisor removes the link
# when it stops; a killed one leaves it, so remove it here too, but only when it is ours. Every pod
# process is gone by now, so nothing holds the data.
if [[ -L "$hostpath_pv" && "$(readlink "$hostpath_pv")" == "$volumes_dir" ]]; then
  rm -f "$hostpath_pv"
fi
if [[ -d "$volumes_dir" ]]; then
  rm -rf "${volumes_dir:?}"
  echo "deleted persistent volume data ($volumes_dir)"
fi

for ns in $(ip netns list | awk '{print $1}' | grep -E '^dsp-' || true) "$netns"; do
  if ip netns list | awk '{print $1}' | grep -x "$ns" >/dev/null; then
    ip netns delete "$ns" && echo "deleted netns $ns"
  fi
done
echo "cluster-down: done"
