# Shared settings for the e2e cluster scripts (sourced, not executed).
# Contract (see /work/main/e2e/README.md): netns dse2e, bridge dsbr0 10.244.0.1/16, no default route.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
state="$root/e2e/.state"
bin="$state/bin"
run_dir="$state/run"
log_dir="$state/logs"
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
