#!/usr/bin/env bash
# Where a proxy's CPU time per request goes at peak, kernel functions apart, for the sidecar and
# HAProxy in interleaved rounds: what `bench/run.sh` cannot show, since it reads one total per
# proxy from /proc/PID/stat.
#
#   bench/kernel-split.sh ROUNDS [DIR]   # DIR (default target/release) holds release builds of
#                                        # datastream-sidecar and datastream-demo-replica
#
# The setup of bench/peak-ab.sh (scenario 1 of bench/run.sh): three demo replicas and wrk (1
# thread, 32 keep-alive connections, 2 s warm-up, then DURATION s, default 10) on LOAD_CPU
# (default 0), the proxy alone on PROXY_CPU (default 1), nice -10; HAProxy with bench/run.sh's
# configuration for scenario 1 without its connection limits (32 connections need none).
# Per request, from /proc over the measured run: CPU (utime + stime), user and system time,
# context switches (the proxy sleeping in `epoll_wait`; the main thread's, so run the sidecar
# single-threaded, its default) and TCP segments (all of the machine's, /proc/net/snmp).
# During the run `perf record` (-F 4999, call graphs, itself on LOAD_CPU) samples the proxy;
# the samples' shares times the CPU per request give the kernel's share and the time under
# `sendto`, `recvfrom` and `epoll_wait`, the receiving side's TCP input that loopback runs
# inside the sender's `sendto` (`__netif_receive_skb_one_core`), and within that input the
# receiver's wake-up (`sock_def_readable`). Sampling adds kernel time to every proxy alike:
# compare proxies within a run, not these figures with bench/run.sh's. Last, the cost of a
# null system call on the proxy's core (`perf bench syscall basic`).
# Everything listens on 127.0.0.1 and is bounded in time.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/haproxy-config.sh
source "$ROOT/bench/haproxy-config.sh"
ROUNDS=${1:?rounds}
DIR=${2:-$ROOT/target/release}
DURATION=${DURATION:-10} PROXY_CPU=${PROXY_CPU:-1} LOAD_CPU=${LOAD_CPU:-0}
REPLICA=${REPLICA_BIN:-$DIR/datastream-demo-replica}
[[ -x $DIR/datastream-sidecar && -x $REPLICA ]] || {
  echo "missing $DIR/datastream-sidecar or $REPLICA (cargo build --release first)" >&2
  exit 1
}
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v haproxy >/dev/null || need+=(haproxy)
command -v perf >/dev/null || need+=(linux-perf)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
HZ=$(getconf CLK_TCK)
WORK=$(mktemp -d)
PIDS=()
PROXY_PID=""
trap 'kill $PROXY_PID "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT

for port in 18081 18082 18083; do
  taskset -c "$LOAD_CPU" "$REPLICA" --listen "127.0.0.1:$port" --replica-id "r$port" >/dev/null 2>&1 &
  PIDS+=($!)
done

# scenario 1's, without the connection limits that 32 connections do not need
haproxy_config 17080 roundrobin 5s 60s 0 \
  $'  server r1 127.0.0.1:18081\n  server r2 127.0.0.1:18082\n  server r3 127.0.0.1:18083\n' \
  >"$WORK/haproxy.cfg"

start() { # proxy: sets PROXY_PID
  case $1 in
    sidecar)
      # No drain on the stop between rounds: nothing is in flight then.
      taskset -c "$PROXY_CPU" nice -n -10 "$DIR/datastream-sidecar" --listen 127.0.0.1:17080 \
        --admin 127.0.0.1:17082 --endpoints 127.0.0.1:18081,127.0.0.1:18082,127.0.0.1:18083 \
        --policy p2c-ewma --log-level warn --drain-delay 0s --drain-timeout 1s >"$WORK/proxy.log" 2>&1 &
      ;;
    haproxy) taskset -c "$PROXY_CPU" nice -n -10 haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/proxy.log" 2>&1 & ;;
  esac
  PROXY_PID=$!
}

stop() { # within 10 s, then killed
  kill "$PROXY_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$PROXY_PID" 2>/dev/null || true
  wait "$PROXY_PID" 2>/dev/null || true
  PROXY_PID=""
}

counters() { # pid
  awk '{print "utime", $14; print "stime", $15}' "/proc/$1/stat"
  awk '/^voluntary_ctxt_switches/ {print "sleeps", $2}' "/proc/$1/status"
  awk '/^Tcp: [0-9]/ {print "segments", $12}' /proc/net/snmp
}

# Kernel functions whose inclusive ("children") share is reported, by the name printed.
FUNCTIONS='sendto=__x64_sys_sendto recvfrom=__x64_sys_recvfrom epoll_wait=__x64_sys_epoll_wait
peer_receive=__netif_receive_skb_one_core peer_wakeup=sock_def_readable'

measure() { # round proxy
  local pid requests up=0
  start "$2"
  pid=$PROXY_PID
  for _ in $(seq 50); do
    curl -sf -o /dev/null http://127.0.0.1:17080/healthz && { up=1; break; }
    sleep 0.1
  done
  ((up)) || { echo "$2 did not answer on 127.0.0.1:17080:" >&2; cat "$WORK/proxy.log" >&2; exit 1; }
  taskset -c "$LOAD_CPU" wrk -t1 -c32 -d2s http://127.0.0.1:17080/whoami >/dev/null 2>&1 || true
  counters "$pid" >"$WORK/before"
  rm -f "$WORK/perf.data"
  taskset -c "$LOAD_CPU" perf record -q -F 4999 -g -p "$pid" -o "$WORK/perf.data" -- sleep "$DURATION" \
    >"$WORK/perf.log" 2>&1 &
  local perf_pid=$!
  requests=$(taskset -c "$LOAD_CPU" nice -n -10 wrk -t1 -c32 -d"${DURATION}s" \
    http://127.0.0.1:17080/whoami | awk '/requests in/ {print $1}') || true
  counters "$pid" >"$WORK/after"
  wait "$perf_pid" || true
  stop
  ((${requests:-0} > 0)) || { echo "round $1 $2: wrk served no request" >&2; exit 1; }
  [[ -s $WORK/perf.data ]] || { echo "perf record failed:" >&2; cat "$WORK/perf.log" >&2; exit 1; }
  # Per symbol its inclusive share; per kernel symbol ([k], modules included) its own share too,
  # whose sum is the kernel's share.
  perf report -i "$WORK/perf.data" --children --sort dso,sym --stdio -g none 2>"$WORK/report.log" |
    awk '!/^#/ && NF >= 5 && $1 ~ /%$/ {
      c = $1; sub("%", "", c); self = $2; sub("%", "", self)
      print c, $NF
      if ($4 == "[k]") kernel += self
    } END { print kernel, "kernel_share" }' >"$WORK/shares"
  join <(sort "$WORK/before") <(sort "$WORK/after") |
    awk -v n="$requests" '{print $1, $3 - $2, n}' >"$WORK/deltas"
  awk -v r="$1" -v p="$2" -v hz="$HZ" -v functions="$FUNCTIONS" '
    FILENAME ~ /deltas$/ { d[$1] = $2; n = $3; next }
    $NF == "kernel_share" { kshare = $1; next }
    { share[$NF] = $1 }
    END {
      cpu = (d["utime"] + d["stime"]) * 1e6 / hz / n
      printf "round %d %-8s requests=%d cpu_us=%.2f user_us=%.2f system_us=%.2f", r, p, n, cpu,
        d["utime"] * 1e6 / hz / n, d["stime"] * 1e6 / hz / n
      printf " sampled_kernel_us=%.2f", cpu * kshare / 100
      nf = split(functions, fs, /[ \n]+/)
      for (i = 1; i <= nf; i++) {
        split(fs[i], kv, "=")
        if (!(kv[2] in share)) printf "round %d %s: no samples in %s\n", r, p, kv[2] > "/dev/stderr"
        printf " %s_us=%.2f", kv[1], cpu * share[kv[2]] / 100
      }
      printf " sleeps_per_req=%.4f segments_per_req=%.3f\n", d["sleeps"] / n, d["segments"] / n
    }' "$WORK/deltas" "$WORK/shares"
}

# In this shell, not a pipeline's subshell, so that the trap knows the running proxy.
for round in $(seq 1 "$ROUNDS"); do
  measure "$round" sidecar >>"$WORK/rounds"
  tail -1 "$WORK/rounds"
  measure "$round" haproxy >>"$WORK/rounds"
  tail -1 "$WORK/rounds"
done

# Medians per proxy of every figure.
awk '{
  p = $3
  for (i = 4; i <= NF; i++) { split($i, kv, "="); v[p, kv[1], ++count[p, kv[1]]] = kv[2]; keys[kv[1]] = i }
  proxies[p] = 1
} END {
  for (p in proxies) {
    line = "median " p
    for (k in keys) order[keys[k]] = k
    for (i = 4; i in order; i++) {
      k = order[i]; m = count[p, k]
      for (a = 1; a <= m; a++) s[a] = v[p, k, a] + 0
      for (a = 1; a <= m; a++) for (b = a + 1; b <= m; b++) if (s[b] < s[a]) { t = s[a]; s[a] = s[b]; s[b] = t }
      line = line " " k "=" (m % 2 ? s[(m + 1) / 2] : (s[m / 2] + s[m / 2 + 1]) / 2)
    }
    print line
  }
}' "$WORK/rounds"

# The entry and exit of one system call on the proxy's core (getppid, 10 million times): the
# most that fewer, batched system calls (io_uring) could save per call.
taskset -c "$PROXY_CPU" perf bench syscall basic 2>/dev/null | awk '/usecs\/op/ {print "null_syscall_us=" $1}' ||
  echo "null_syscall_us=unknown (perf bench syscall failed)"
