# Shared settings for the e2e cluster scripts (sourced, not executed).
# Contract (see /work/main/e2e/README.md): netns dse2e, bridge dsbr0 10.244.0.1/16, no default route.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
state="$root/e2e/.state"
bin="$state/bin"
run_dir="$state/run"
log_dir="$state/logs"
# Persistent volume data, and the path the HostPath provisioner hard-codes (a link to it while the
# control plane runs; see e2e/cluster/storage.go).
volumes_dir="$state/volumes"
hostpath_pv=/tmp/hostpath_pv
netns=dse2e
bridge=dsbr0
bridge_cidr=10.244.0.1/16
advertise=10.244.0.1
kubeconfig="$state/kubeconfig"
node_name=e2e-node-0

# pid_alive PIDFILE: true when the pidfile names a live process.
pid_alive() {
  [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# stop_pidfile NAME PIDFILE GRACE_SECONDS: SIGTERM, bounded wait, then SIGKILL.
stop_pidfile() {
  local name="$1" file="$2" grace="$3" pid i
  if ! pid_alive "$file"; then rm -f "$file"; return 0; fi
  pid="$(cat "$file")"
  echo "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$file"; return 0; }
    sleep 0.1
  done
  echo "$name did not exit within ${grace}s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
}

in_netns() { ip netns exec "$netns" "$@"; }

# lock_cluster: serialise cluster-up and cluster-down (several agents or CI jobs may call them at
# once); the lock is released when the calling script exits. Bounded, so a stuck holder is reported.
lock_cluster() {
  mkdir -p "$run_dir"
  exec 8>"$run_dir/cluster.lock"
  if ! flock -w "${CLUSTER_LOCK_TIMEOUT:-900}" 8; then
    echo "$(basename "$0"): another cluster-up/cluster-down holds $run_dir/cluster.lock" >&2
    exit 1
  fi
}

# start_in_netns PIDFILE LOGFILE CMD...: starts CMD inside the netns, detached from the caller
# (nohup, stdin from /dev/null, output to LOGFILE) and records its pid. `ip netns exec` and nohup
# both exec, so $! is the pid of CMD itself. The lock fd is closed so a long-running child never
# holds the cluster lock.
start_in_netns() {
  local pidfile="$1" logfile="$2"
  shift 2
  ip netns exec "$netns" nohup "$@" >>"$logfile" 2>&1 </dev/null 8>&- &
  echo $! >"$pidfile"
}

# start_in_netns_host_mounts PIDFILE LOGFILE CMD...: as start_in_netns, but only the network
# namespace changes. `ip netns exec` remounts /sys for the namespace, which hides the cgroup
# hierarchies under /sys/fs/cgroup that runc needs (the podlet's containers get cgroups there).
start_in_netns_host_mounts() {
  local pidfile="$1" logfile="$2"
  shift 2
  nsenter --net="/var/run/netns/$netns" nohup "$@" >>"$logfile" 2>&1 </dev/null 8>&- &
  echo $! >"$pidfile"
}
