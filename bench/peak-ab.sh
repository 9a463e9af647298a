#!/usr/bin/env bash
# Peak CPU per request of sidecar builds against each other, in interleaved rounds, with user
# and system time apart: what `bench/run.sh` cannot show, since it measures one build against
# nginx and HAProxy.
#
#   bench/peak-ab.sh ROUNDS DIR_A [DIR_B ...]   # each DIR holds a release datastream-sidecar
#
# The same setup as scenario 1 of bench/run.sh: three demo replicas, wrk (1 thread, 32 keep-alive
# connections, 2 s warm-up, then DURATION s, default 10) and the replicas on LOAD_CPU (default
# 0), the sidecar alone on PROXY_CPU (default 1, `--policy p2c-ewma`), nice -10. Per run:
# requests, CPU µs per request (utime + stime of the sidecar over the measured run), and the
# user and system parts. Everything listens on 127.0.0.1 and is bounded in time.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${1:?rounds}
shift
(($# > 0)) || { echo "usage: $0 ROUNDS DIR_A [DIR_B ...]" >&2; exit 2; }
DURATION=${DURATION:-10} PROXY_CPU=${PROXY_CPU:-1} LOAD_CPU=${LOAD_CPU:-0}
REPLICA=${REPLICA_BIN:-$ROOT/target/release/datastream-demo-replica}
[[ -x $REPLICA ]] || REPLICA=$1/datastream-demo-replica
HZ=$(getconf CLK_TCK)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT

for port in 18081 18082 18083; do
  taskset -c "$LOAD_CPU" "$REPLICA" --listen "127.0.0.1:$port" --replica-id "r$port" >/dev/null 2>&1 &
  PIDS+=($!)
done
sleep 1

ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }

for round in $(seq 1 "$ROUNDS"); do
  for dir in "$@"; do
    taskset -c "$PROXY_CPU" nice -n -10 "$dir/datastream-sidecar" --listen 127.0.0.1:17080 \
      --admin 127.0.0.1:17082 --endpoints 127.0.0.1:18081,127.0.0.1:18082,127.0.0.1:18083 \
      --policy p2c-ewma --log-level warn >/dev/null 2>&1 &
    sidecar=$!
    for _ in $(seq 50); do curl -sf http://127.0.0.1:17082/ready >/dev/null && break; sleep 0.1; done
    taskset -c "$LOAD_CPU" wrk -t1 -c32 -d2s http://127.0.0.1:17080/whoami >/dev/null 2>&1 || true
    read -r u0 s0 < <(ticks "$sidecar")
    requests=$(taskset -c "$LOAD_CPU" nice -n -10 wrk -t1 -c32 -d"${DURATION}s" \
      http://127.0.0.1:17080/whoami | awk '/requests in/ {print $1}')
    read -r u1 s1 < <(ticks "$sidecar")
    awk -v r="$round" -v d="$dir" -v n="$requests" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$HZ" \
      'BEGIN { us = 1e6 / hz / n; printf "round %d %s requests=%d cpu_us_per_req=%.2f user_us=%.2f system_us=%.2f\n", r, d, n, (u + s) * us, u * us, s * us }'
    kill "$sidecar"
    wait "$sidecar" 2>/dev/null || true
  done
done
