#!/usr/bin/env bash
# Where a proxy's CPU time per request goes at peak, kernel functions apart, for the sidecar and
# HAProxy in interleaved rounds: what `bench/run.sh` cannot show, since it reads one total per
# proxy from /proc/PID/stat.
#
#   bench/kernel-split.sh ROUNDS [SIDECAR_DIR]   # SIDECAR_DIR holds a release datastream-sidecar
#
# The setup of bench/peak-ab.sh (scenario 1 of bench/run.sh): three demo replicas and wrk (1
# thread, 32 keep-alive connections, 2 s warm-up, then DURATION s, default 10) on LOAD_CPU
# (default 0), the proxy alone on PROXY_CPU (default 1), nice -10; HAProxy with bench/run.sh's
# configuration for scenario 1. During the measured run `perf record` samples the proxy
# (-F 4999, call graphs); the samples' shares, times the proxy's utime + stime per request over
# the same run, give µs per request for: user space, the kernel in all, each system call, and,
# inside `sendto`, the receiving side's TCP run in the sender's context (loopback delivers in
# the sender's softirq) and the receiver's wake-up. Also per request: context switches (the
# proxy sleeping in `epoll_wait`) and TCP segments (all of the machine's, /proc/net/snmp).
# Last, the cost of a null system call on the proxy's core (`perf bench syscall basic`).
# Everything listens on 127.0.0.1 and is bounded in time.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
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
command -v haproxy >/dev/null || need+=(haproxy)
command -v perf >/dev/null || need+=(linux-perf)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
HZ=$(getconf CLK_TCK)
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT

for port in 18081 18082 18083; do
  taskset -c "$LOAD_CPU" "$REPLICA" --listen "127.0.0.1:$port" --replica-id "r$port" >/dev/null 2>&1 &
  PIDS+=($!)
done

cat >"$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout server 60s
  timeout client 60s
  timeout http-keep-alive 60s
  timeout check 500ms
  http-reuse always
  retries 2
  option redispatch 1
  retry-on conn-failure empty-response response-timeout 503
frontend fe
  bind 127.0.0.1:17080
  default_backend be
backend be
  balance roundrobin
  option httpchk GET /healthz
  default-server check inter 1s fall 2 rise 2
  server r1 127.0.0.1:18081
  server r2 127.0.0.1:18082
  server r3 127.0.0.1:18083
CONF

start() { # proxy -> pid on stdout
  case $1 in
    sidecar)
      taskset -c "$PROXY_CPU" nice -n -10 "$DIR/datastream-sidecar" --listen 127.0.0.1:17080 \
        --admin 127.0.0.1:17082 --endpoints 127.0.0.1:18081,127.0.0.1:18082,127.0.0.1:18083 \
        --policy p2c-ewma --log-level warn >/dev/null 2>&1 &
      ;;
    haproxy) taskset -c "$PROXY_CPU" nice -n -10 haproxy -db -f "$WORK/haproxy.cfg" >/dev/null 2>&1 & ;;
  esac
  echo $!
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
  local pid requests
  pid=$(start "$2")
  PIDS+=("$pid")
  for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:17080/healthz && break; sleep 0.1; done
  taskset -c "$LOAD_CPU" wrk -t1 -c32 -d2s http://127.0.0.1:17080/whoami >/dev/null 2>&1 || true
  counters "$pid" >"$WORK/before"
  perf record -q -F 4999 -g -p "$pid" -o "$WORK/perf.data" -- sleep "$DURATION" >/dev/null 2>&1 &
  local perf_pid=$!
  requests=$(taskset -c "$LOAD_CPU" nice -n -10 wrk -t1 -c32 -d"${DURATION}s" \
    http://127.0.0.1:17080/whoami | awk '/requests in/ {print $1}')
  counters "$pid" >"$WORK/after"
  wait "$perf_pid" || true
  kill "$pid"
  # Not this shell's child (started in a command substitution): wait for the port to be free.
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  perf report -i "$WORK/perf.data" --children --sort dso,sym --stdio -g none 2>/dev/null |
    awk '!/^#/ && NF >= 4 {c = $1; sub("%", "", c); print c, $2 == "0.00%" ? 0 : 1, $3, $NF}' >"$WORK/shares"
  perf report -i "$WORK/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
    awk '!/^#/ && NF >= 2 && /kernel/ {k = $1; sub("%", "", k); print "kernel_share", k}' >>"$WORK/shares"
  join <(sort "$WORK/before") <(sort "$WORK/after") |
    awk -v n="$requests" '{print $1, $3 - $2, n}' >"$WORK/deltas"
  awk -v r="$1" -v p="$2" -v hz="$HZ" -v functions="$FUNCTIONS" '
    FILENAME ~ /deltas$/ { d[$1] = $2; n = $3; next }
    $1 == "kernel_share" { kshare = $2; next }
    { share[$NF] = $1 }
    END {
      cpu = (d["utime"] + d["stime"]) * 1e6 / hz / n
      printf "round %d %-8s requests=%d cpu_us=%.2f user_us=%.2f system_us=%.2f", r, p, n, cpu,
        d["utime"] * 1e6 / hz / n, d["stime"] * 1e6 / hz / n
      printf " sampled_kernel_us=%.2f", cpu * kshare / 100
      nf = split(functions, fs, /[ \n]+/)
      for (i = 1; i <= nf; i++) {
        split(fs[i], kv, "=")
        printf " %s_us=%.2f", kv[1], cpu * share[kv[2]] / 100
      }
      printf " sleeps_per_req=%.4f segments_per_req=%.3f\n", d["sleeps"] / n, d["segments"] / n
    }' "$WORK/deltas" "$WORK/shares"
}

for round in $(seq 1 "$ROUNDS"); do
  measure "$round" sidecar
  measure "$round" haproxy
done | tee "$WORK/rounds"

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
      for (a = 1; a <= m; a++) s[a] = v[p, k, a]
      for (a = 1; a <= m; a++) for (b = a + 1; b <= m; b++) if (s[b] < s[a]) { t = s[a]; s[a] = s[b]; s[b] = t }
      line = line " " k "=" (m % 2 ? s[(m + 1) / 2] : (s[m / 2] + s[m / 2 + 1]) / 2)
    }
    print line
  }
}' "$WORK/rounds"

# The entry and exit of one system call on the proxy's core (getppid, 10 million times): the
# most that fewer, batched system calls (io_uring) could save per call.
taskset -c "$PROXY_CPU" perf bench syscall basic 2>/dev/null | awk '/usecs\/op/ {print "null_syscall_us=" $1}'
