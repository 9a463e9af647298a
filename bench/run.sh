#!/usr/bin/env bash
# Data-plane benchmark: datastream-sidecar against a backend directly, nginx and HAProxy, all in
# one run, same load, same backends, each proxy pinned to the same single core.
#
#   bench/run.sh                 # build release binaries, run every scenario, print the report
#   bench/run.sh --skip-build    # reuse target/release binaries
#   bench/run.sh --instructions  # only: user-space instructions per request of each proxy under
#                                # callgrind (deterministic, whatever else the machine is doing)
#   bench/run.sh --tls           # only: each proxy with plaintext and with mutual TLS to its
#                                # upstreams (sidecar peer ports), TLS_ROUNDS interleaved rounds
#   bench/run.sh --tls-report=DIR:ROUNDS  # re-renders that report from a run's raw data
#
# Environment: DURATION (s per measurement, default 10), CONNS (wrk connections, default 32),
# PEAK_ROUNDS (interleaved rounds of scenario 1, median reported; default 3), HALF_ROUNDS
# (interleaved rounds of scenario 1b, each with its own direct measurement; default PEAK_ROUNDS),
# INSTR_PROXIES (--instructions: the proxies measured, default "sidecar nginx haproxy"; A/B runs
# of two sidecar builds take "sidecar" with BENCH_BIN naming each build's directory),
# PROXY_CPU (default 1), LOAD_CPU (wrk, load clients and backends; default 0), NICE (default -10:
# on a machine shared with builds, the benchmark's processes win the CPU; 0 to leave it alone).
# Scenarios: 1 peak throughput and latency, 1b half of HAProxy's peak (added p99), 2 one replica
# 20x slower, 3 a replica killed and a replica frozen (SIGSTOP) mid-run, 4 idle RSS and RSS with
# 10,000 open idle client connections. Everything listens on 127.0.0.1 only and is bounded.
# Writes bench/results/<timestamp>.md (gitignored) and prints it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/haproxy-config.sh
source "$ROOT/bench/haproxy-config.sh"
BENCH=$ROOT/bench
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
PEAK_ROUNDS=${PEAK_ROUNDS:-3}
HALF_ROUNDS=${HALF_ROUNDS:-$PEAK_ROUNDS}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
SKIP_BUILD=0 INSTRUCTIONS=0 TLS=0 TLS_REPORT=
for arg in "$@"; do
  case $arg in
    --skip-build) SKIP_BUILD=1 ;;
    --instructions) INSTRUCTIONS=1 ;;
    --tls) TLS=1 ;;
    --tls-report=*) TLS_REPORT=${arg#--tls-report=} ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

B_PORTS=(18081 18082 18083)
# What the measured proxies forward to: the backends, or in --tls mode the upstream sidecars' peer
# ports (UPSTREAM_TLS=1: with mutual TLS, certificates in PKI).
UPSTREAM_PORTS=("${B_PORTS[@]}")
UPSTREAM_TLS=0 PKI=
SIDECAR_PORT=17080 SIDECAR_ADMIN=17082 NGINX_PORT=17180 HAPROXY_PORT=17280
PER_TRY_MS=200          # scenario 3: sidecar per-try timeout; nginx/HAProxy connect+read timeouts match it
# Scenarios 1 and 2 run every proxy with ordinary timeouts (5 s connect, 60 s response): a 200 ms
# response timeout on a shared, busy machine turns scheduling stalls into ejections (nginx then
# answers "no live upstreams" 502s), which measures the machine rather than the proxy.
TIGHT=0
SLOW_MS=2 SLOWER_MS=40  # scenario 2: two replicas answer in 2 ms, one in 40 ms (20x)

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# The --tls report from a run's raw data (DIR ROUNDS): each figure is the median over the rounds of
# that figure, errors are summed, and every round's req/s and CPU per request are listed.
tls_report() {
  local data=$1 rounds=$2 p mode round
  kv() { awk -F= -v k="$2" '$1 == k {print $2}' "$1"; }
  median() { # key mode proxy
    for ((round = 1; round <= rounds; round++)); do kv "$data/tls-$2-$3-r$round.kv" "$1"; done |
      sort -g | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'
  }
  echo "Mutual TLS to the upstreams: each proxy pinned to CPU $(kv "$data/meta.kv" proxy_cpu), $(kv "$data/meta.kv" conns) keep-alive connections, $(kv "$data/meta.kv" duration)s per run, $rounds interleaved rounds, git $(kv "$data/meta.kv" git); $(kv "$data/meta.kv" versions). Each figure is the median over the rounds."
  echo
  echo "| proxy | upstream | req/s | CPU µs/req | p50 µs | p99 µs | errors | upstream handshakes | rounds (req/s / CPU µs/req) |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  for p in sidecar nginx haproxy; do
    for mode in plain tls; do
      local list="" errors=0 e
      for ((round = 1; round <= rounds; round++)); do
        list+=$(printf '%.0f/%s ' "$(kv "$data/tls-$mode-$p-r$round.kv" rps)" "$(kv "$data/tls-$mode-$p-r$round.kv" cpu_us_per_req)")
        e=$(awk -F= '$1 ~ /^err_/ {s += $2} END {print s + 0}' "$data/tls-$mode-$p-r$round.kv")
        errors=$((errors + e))
      done
      printf '| %s | %s | %.0f | %.2f | %.0f | %.0f | %s | %.0f | %s|\n' "$p" "$mode" "$(median rps "$mode" "$p")" \
        "$(median cpu_us_per_req "$mode" "$p")" "$(median p50_us "$mode" "$p")" "$(median p99_us "$mode" "$p")" \
        "$errors" "$(median upstream_connections "$mode" "$p")" "$list"
    done
  done
  echo
  awk -v st="$(median cpu_us_per_req tls sidecar)" -v sp="$(median cpu_us_per_req plain sidecar)" \
    -v ht="$(median cpu_us_per_req tls haproxy)" -v hp="$(median cpu_us_per_req plain haproxy)" \
    -v nt="$(median cpu_us_per_req tls nginx)" -v np="$(median cpu_us_per_req plain nginx)" 'BEGIN {
    printf "- CPU per request with mutual TLS: sidecar / HAProxy %.2fx, sidecar / nginx %.2fx\n", st / ht, st / nt
    printf "- CPU per request, TLS / plaintext: sidecar %.2fx, HAProxy %.2fx, nginx %.2fx\n", st / sp, ht / hp, nt / np
  }'
}

if [[ -n $TLS_REPORT ]]; then # --tls-report=DIR:ROUNDS re-renders a run's report
  tls_report "${TLS_REPORT%:*}" "${TLS_REPORT##*:}"
  exit 0
fi

# --- tools -----------------------------------------------------------------------------------
need_install=()
command -v wrk >/dev/null || need_install+=(wrk)
command -v haproxy >/dev/null || need_install+=(haproxy)
command -v nginx >/dev/null || need_install+=(nginx-light)
command -v curl >/dev/null || need_install+=(curl)
command -v python3 >/dev/null || need_install+=(python3)
command -v taskset >/dev/null || need_install+=(util-linux)
((TLS)) && ! command -v openssl >/dev/null && need_install+=(openssl)
((INSTRUCTIONS)) && ! command -v callgrind_control >/dev/null && need_install+=(valgrind)
if ((${#need_install[@]})); then
  log "installing ${need_install[*]} from Debian"
  apt-get update -qq
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_install[@]}"; then
    # nginx-light is gone from newer releases; the full package serves the same purpose.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_install[@]/nginx-light/nginx}"
  fi
fi
# 10,000 client connections need about 10,100 descriptors in the proxy and in the client.
NICE=${NICE:--10}
if [[ $NICE != 0 ]]; then
  renice -n "$NICE" -p $$ >/dev/null 2>&1 || echo "renice $NICE failed; running at normal priority" >&2
fi
ulimit -n "$(ulimit -Hn)"
(( $(ulimit -n) >= 10240 )) || { echo "open-file limit $(ulimit -n) is below 10240" >&2; exit 1; }

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BENCH_BIN:-$TARGET_DIR/release}
if ((SKIP_BUILD == 0)); then
  log "building release binaries (fat LTO: the first build takes minutes)"
  (cd "$ROOT" && cargo build --release -p datastream-sidecar -p datastream-demo-replica)
fi
for b in datastream-sidecar datastream-demo-replica; do
  [[ -x $BIN/$b ]] || { echo "missing $BIN/$b (build first)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/datastream-bench.XXXXXX)
DATA=$WORK/data
mkdir -p "$DATA" "$BENCH/results" "$WORK/bin"
# Private copies: a concurrent cargo build must not swap a binary between two scenarios.
cp "$BIN/datastream-sidecar" "$BIN/datastream-demo-replica" "$WORK/bin/"
BIN=$WORK/bin
TS=$(date -u +%Y%m%dT%H%M%SZ)
REPORT=$BENCH/results/$TS.md
CLK_TCK=$(getconf CLK_TCK)

# --- process bookkeeping: only the processes this script started are ever signalled ----------
declare -a OWN_PIDS=()
cleanup() {
  local pid
  for pid in "${OWN_PIDS[@]}"; do
    kill -CONT "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_http() { # url [tries]
  local i
  for ((i = 0; i < ${2:-100}; i++)); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "not answering: $1" >&2
  return 1
}

stop_pid() {
  local pid=$1
  kill -CONT "$pid" 2>/dev/null || true
  kill "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

declare -a BACKEND_PIDS=()
start_backends() {
  BACKEND_PIDS=()
  local i
  for i in 0 1 2; do
    taskset -c "$LOAD_CPU" "$BIN/datastream-demo-replica" --listen "127.0.0.1:${B_PORTS[$i]}" \
      --replica-id "r$((i + 1))" >"$WORK/backend-$i.log" 2>&1 &
    BACKEND_PIDS+=($!)
    OWN_PIDS+=($!)
  done
  for i in 0 1 2; do wait_http "http://127.0.0.1:${B_PORTS[$i]}/healthz"; done
}
stop_backends() {
  local pid
  for pid in "${BACKEND_PIDS[@]}"; do stop_pid "$pid"; done
  BACKEND_PIDS=()
}
set_latency() { # port ms
  curl -fsS -o /dev/null -X POST -H 'content-type: application/json' \
    --data "{\"latency_ms\":$2}" "http://127.0.0.1:$1/admin/fault"
}
clear_faults() {
  local p
  for p in "${B_PORTS[@]}"; do curl -fsS -o /dev/null -X DELETE "http://127.0.0.1:$p/admin/fault"; done
}

# --- proxies ---------------------------------------------------------------------------------
SIDECAR_TIMEOUT_ARGS=()
if "$BIN/datastream-sidecar" --help 2>/dev/null | grep -q -- '--per-try-timeout'; then
  SIDECAR_TIMEOUT_ARGS=(--per-try-timeout "${PER_TRY_MS}ms")
else
  # Older binaries take the per-try timeout from the config file's traffic policy only.
  printf 'traffic:\n  failover:\n    perTryTimeout: %sms\n' "$PER_TRY_MS" >"$WORK/sidecar.yaml"
  SIDECAR_TIMEOUT_ARGS=(--config "$WORK/sidecar.yaml")
fi

# Prefix of every proxy's command line (valgrind in --instructions mode).
PROXY_WRAP=()
PROXY_PID=
start_sidecar() {
  local extra=()
  ((TIGHT)) && extra=("${SIDECAR_TIMEOUT_ARGS[@]}")
  ((UPSTREAM_TLS)) && extra+=(--identity-dir "$PKI")
  local endpoints
  endpoints=$(printf '127.0.0.1:%s,' "${UPSTREAM_PORTS[@]}")
  taskset -c "$PROXY_CPU" "${PROXY_WRAP[@]}" "$BIN/datastream-sidecar" --listen "127.0.0.1:$SIDECAR_PORT" \
    --admin "127.0.0.1:$SIDECAR_ADMIN" --endpoints "${endpoints%,}" --policy p2c-ewma \
    "${extra[@]}" --log-level warn >"$WORK/sidecar.log" 2>&1 &
  PROXY_PID=$!
  OWN_PIDS+=($!)
  wait_http "http://127.0.0.1:$SIDECAR_ADMIN/ready"
}

start_nginx() { # balance: rr | least_conn
  local balance=""
  [[ $1 == least_conn ]] && balance="least_conn;"
  local connect=5s read=60s
  ((TIGHT)) && connect=${PER_TRY_MS}ms read=${PER_TRY_MS}ms
  local servers="" scheme=http tls=""
  local port
  for port in "${UPSTREAM_PORTS[@]}"; do
    servers+="server 127.0.0.1:$port max_fails=1 fail_timeout=10s; "
  done
  if ((UPSTREAM_TLS)); then
    # Client certificate, chain and name verified against the CA, TLS 1.3, sessions reused.
    scheme=https
    tls="proxy_ssl_certificate $PKI/tls.crt; proxy_ssl_certificate_key $PKI/tls.key;
      proxy_ssl_trusted_certificate $PKI/ca.crt; proxy_ssl_verify on; proxy_ssl_name $PKI_NAME;
      proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on;"
  fi
  mkdir -p "$WORK/nginx"
  cat >"$WORK/nginx/nginx.conf" <<CONF
# One single-process worker so that its CPU time and RSS are the whole proxy's.
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 12000; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  upstream backends {
    $balance
    $servers
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    location / {
      proxy_pass $scheme://backends;
      $tls
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_connect_timeout $connect;
      proxy_read_timeout $read;
      proxy_send_timeout $read;
      proxy_next_upstream error timeout http_503;
      proxy_next_upstream_tries 3;
    }
  }
}
CONF
  taskset -c "$PROXY_CPU" "${PROXY_WRAP[@]}" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx.log" 2>&1 &
  PROXY_PID=$!
  OWN_PIDS+=($!)
  wait_http "http://127.0.0.1:$NGINX_PORT/healthz"
}

start_haproxy() { # balance: roundrobin | leastconn
  local connect=5s server=60s
  ((TIGHT)) && connect=${PER_TRY_MS}ms server=${PER_TRY_MS}ms
  local servers="" tls="" i
  # Client certificate, chain and name verified against the CA, TLS 1.3 (sessions are reused by
  # default).
  ((UPSTREAM_TLS)) && tls="ssl verify required ca-file $PKI/ca.crt crt $PKI/client.pem verifyhost $PKI_NAME sni str($PKI_NAME) ssl-min-ver TLSv1.3 alpn http/1.1"
  for i in "${!UPSTREAM_PORTS[@]}"; do
    servers+="  server r$((i + 1)) 127.0.0.1:${UPSTREAM_PORTS[$i]} $tls"$'\n'
  done
  haproxy_config "$HAPROXY_PORT" "$1" "$connect" "$server" 1 "$servers" >"$WORK/haproxy.cfg"
  taskset -c "$PROXY_CPU" "${PROXY_WRAP[@]}" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
  PROXY_PID=$!
  OWN_PIDS+=($!)
  wait_http "http://127.0.0.1:$HAPROXY_PORT/healthz"
}

start_proxy() { # name [balance]
  case $1 in
    sidecar) start_sidecar ;;
    nginx) start_nginx "${2:-rr}" ;;
    haproxy) start_haproxy "${2:-roundrobin}" ;;
  esac
}
proxy_port() {
  case $1 in
    direct) echo "${B_PORTS[0]}" ;;
    sidecar) echo "$SIDECAR_PORT" ;;
    nginx) echo "$NGINX_PORT" ;;
    haproxy) echo "$HAPROXY_PORT" ;;
  esac
}
stop_proxy() { [[ -n $PROXY_PID ]] && stop_pid "$PROXY_PID"; PROXY_PID=; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# wrk against one target; writes DATA/<label>.kv. Args: label name conns [delay_ms]
measure() {
  local label=$1 name=$2 conns=$3 delay=${4:-0}
  local url="http://127.0.0.1:$(proxy_port "$name")/whoami"
  # Warm-up: fills upstream pools and lets balancers settle; not counted.
  taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d2s "$url" >/dev/null 2>&1 || true
  local pid=${PROXY_PID:-} before=0
  # A caller's hook sees the start of the measured run (after the warm-up).
  [[ -n ${ON_MEASURED_START:-} ]] && "$ON_MEASURED_START"
  [[ $name != direct ]] && before=$(cpu_ticks "$pid")
  local out
  out=$(WRK_DELAY_MS=$delay taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${DURATION}s" --timeout 5s \
    --latency -s "$BENCH/wrk-report.lua" "$url" 2>&1)
  {
    echo "$out" | sed -n 's/^RESULT //p'
    echo "conns=$conns"
    echo "delay_ms=$delay"
    if [[ $name != direct ]]; then
      local after requests
      after=$(cpu_ticks "$pid")
      requests=$(echo "$out" | sed -n 's/^RESULT requests=//p')
      echo "cpu_ticks=$((after - before))"
      awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" \
        'BEGIN { printf "cpu_us_per_req=%.2f\n", (n > 0 ? t / hz * 1e6 / n : 0) }'
      echo "hwm_kib=$(status_kib "$pid" VmHWM)"
      echo "rss_kib=$(status_kib "$pid" VmRSS)"
    fi
  } >"$DATA/$label.kv"
  log "$label: $(tr '\n' ' ' <"$DATA/$label.kv")"
}

load_snapshot() { # label
  {
    echo "uptime=$(uptime)"
    top -bn1 | sed -n '8,14p' | awk '{printf "top=%s %s %s %s\n", $9, $10, $11, $12}'
  } >"$DATA/load-$1.kv"
}

# --- instructions per request (--instructions) -------------------------------------------------
# Each proxy runs under callgrind; after a warm-up its counters are zeroed, DURATION seconds of the
# same fixed offered load run (INSTR_CONNS connections, each waiting INSTR_DELAY_MS between
# requests: 400 req/s by default, which every proxy sustains under valgrind, so that work done per
# unit of time, such as timers and health checks, weighs the same per request for all of them),
# and the counters are dumped. Instructions retired in user space per
# request (Ir / requests) are exact and repeatable for a given binary and load, unlike CPU time on a
# shared machine; kernel time (the loopback TCP stack, the larger share) is not in them.
if ((INSTRUCTIONS)); then
  INSTR_CONNS=${INSTR_CONNS:-8} INSTR_DELAY_MS=${INSTR_DELAY_MS:-20}
  start_backends
  {
    echo "date=$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "git=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet -- sidecar 2>/dev/null || echo '+dirty sidecar/')"
    echo "valgrind=$(valgrind --version)"
    echo "load=$INSTR_CONNS connections x ${INSTR_DELAY_MS} ms, ${DURATION}s"
  } >"$DATA/meta.kv"
  {
    echo "User-space instructions per request under callgrind, $INSTR_CONNS connections x ${INSTR_DELAY_MS} ms (fixed load), ${DURATION}s, git $(sed -n 's/^git=//p' "$DATA/meta.kv")"
    echo
    printf '| proxy | requests | instructions | instructions per request |\n| --- | ---: | ---: | ---: |\n'
  } >"$DATA/instructions.md"
  for p in ${INSTR_PROXIES:-sidecar nginx haproxy}; do
    PROXY_WRAP=(valgrind --tool=callgrind --dump-instr=no "--callgrind-out-file=$WORK/callgrind-$p.%p")
    start_proxy "$p"
    url="http://127.0.0.1:$(proxy_port "$p")/whoami"
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d3s "$url" >/dev/null 2>&1 || true
    callgrind_control --zero "$PROXY_PID" >/dev/null
    out=$(WRK_DELAY_MS=$INSTR_DELAY_MS taskset -c "$LOAD_CPU" wrk -t1 -c"$INSTR_CONNS" \
      -d"${DURATION}s" --timeout 5s -s "$BENCH/wrk-report.lua" "$url" 2>&1)
    callgrind_control --dump "$PROXY_PID" >/dev/null
    requests=$(echo "$out" | sed -n 's/^RESULT requests=//p')
    errors=$(echo "$out" | awk -F= '/^RESULT err_/ {s += $2} END {print s + 0}')
    stop_proxy
    PROXY_WRAP=()
    # The first dump (suffix .1) holds what was counted while wrk ran; "summary:" is its Ir.
    ir=$(awk '$1 == "summary:" {print $2}' "$WORK"/callgrind-"$p".*.1)
    log "instructions $p: $ir Ir for $requests requests (errors: ${errors:-0})"
    awk -v p="$p" -v n="$requests" -v ir="$ir" \
      'BEGIN { printf "| %s | %d | %d | %.0f |\n", p, n, ir, (n > 0 ? ir / n : 0) }' >>"$DATA/instructions.md"
  done
  stop_backends
  cat "$DATA/instructions.md" | tee "$REPORT"
  log "report: $REPORT"
  exit 0
fi

# --- mutual TLS to the upstreams (--tls) -----------------------------------------------------
# Each measured proxy forwards to three upstream sidecars' peer ports (each delivering to its own
# backend), once in plaintext and once with mutual TLS: a client certificate, the chain verified
# against the CA and the peer's name (the SPIFFE ID for the sidecar, the DNS name for nginx and
# HAProxy), TLS 1.3, upstream connections and TLS sessions reused. The upstream tier, the backends
# and wrk share LOAD_CPU; the measured proxy has PROXY_CPU alone. Rounds are interleaved, and
# each figure is the median round by throughput, every round listed. "handshakes" counts the
# connections the upstream tier accepted during the measured run (after the warm-up): with
# connection reuse, few whatever the number of requests; HAProxy's include its health checks (a new
# connection per check, 1 s apart, per server).
if ((TLS)); then
  TLS_ROUNDS=${TLS_ROUNDS:-5}
  PEER_PORTS=(19281 19282 19283) PEER_ADMIN=(19181 19182 19183) PEER_TRAFFIC=(19081 19082 19083)
  PKI=$WORK/pki PKI_NAME=bench-peers.bench.svc
  mkdir -p "$PKI"
  (
    cd "$PKI"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt \
      -days 2 -subj /CN=bench-anchor -addext basicConstraints=critical,CA:TRUE \
      -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out tls.key 2>/dev/null
    openssl req -new -key tls.key -subj "/CN=$PKI_NAME" -out tls.csr
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth,clientAuth" \
      "subjectAltName=URI:spiffe://cluster.local/ns/bench/sa/bench-peers,DNS:$PKI_NAME" >leaf.ext
    openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile leaf.ext \
      -out tls.crt 2>/dev/null
    cat tls.crt tls.key >client.pem
  )
  peer_pids=()
  start_peers() { # tls: 0 | 1
    local i extra=()
    (($1)) && extra=(--identity-dir "$PKI")
    for i in 0 1 2; do
      taskset -c "$LOAD_CPU" "$BIN/datastream-sidecar" --listen "127.0.0.1:${PEER_TRAFFIC[$i]}" \
        --admin "127.0.0.1:${PEER_ADMIN[$i]}" --peer-listen "127.0.0.1:${PEER_PORTS[$i]}" \
        --endpoints "127.0.0.1:${B_PORTS[$i]}" --local-endpoint "127.0.0.1:${B_PORTS[$i]}" \
        "${extra[@]}" --log-level warn >"$WORK/peer-$i.log" 2>&1 &
      peer_pids+=($!)
      OWN_PIDS+=($!)
    done
    for i in 0 1 2; do wait_http "http://127.0.0.1:${PEER_ADMIN[$i]}/ready"; done
  }
  stop_peers() {
    local pid
    for pid in "${peer_pids[@]}"; do stop_pid "$pid"; done
    peer_pids=()
  }
  peer_connections() { # accepted on the three peer listeners so far
    local i total=0 n
    for i in 0 1 2; do
      n=$(curl -fsS "http://127.0.0.1:${PEER_ADMIN[$i]}/metrics" |
        awk '/^datastream_sidecar_connections_total\{.*listener="peer"/ {s += $NF} END {print s + 0}')
      total=$((total + n))
    done
    echo "$total"
  }
  snapshot_connections() { CONNECTIONS_BEFORE=$(peer_connections); }
  {
    echo "date=$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "git=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet -- sidecar http identity 2>/dev/null || echo '+dirty')"
    echo "versions=nginx $(nginx -v 2>&1 | sed 's/.*: //'), HAProxy $(haproxy -v | head -1 | awk '{print $3}'), OpenSSL $(openssl version | awk '{print $2}')"
    echo "proxy_cpu=$PROXY_CPU"
    echo "conns=$CONNS"
    echo "duration=$DURATION"
  } >"$DATA/meta.kv"
  start_backends
  UPSTREAM_PORTS=("${PEER_PORTS[@]}")
  for ((round = 1; round <= TLS_ROUNDS; round++)); do
    for mode in plain tls; do
      [[ $mode == tls ]] && UPSTREAM_TLS=1 || UPSTREAM_TLS=0
      start_peers "$UPSTREAM_TLS"
      for p in sidecar nginx haproxy; do
        start_proxy "$p"
        ON_MEASURED_START=snapshot_connections
        measure "tls-$mode-$p-r$round" "$p" "$CONNS"
        ON_MEASURED_START=
        echo "upstream_connections=$(($(peer_connections) - CONNECTIONS_BEFORE))" >>"$DATA/tls-$mode-$p-r$round.kv"
        stop_proxy
      done
      stop_peers
    done
  done
  stop_backends
  tls_report "$DATA" "$TLS_ROUNDS" >"$DATA/tls.md"
  cp "$DATA/tls.md" "$REPORT"
  cat "$REPORT"
  log "report: $REPORT (raw data: $DATA)"
  exit 0
fi

# --- run ---------------------------------------------------------------------------------------
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "cpus=$(nproc)"
  echo "cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "kernel=$(uname -r)"
  echo "mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "nginx=$(nginx -v 2>&1 | sed 's/.*: //')"
  echo "haproxy=$(haproxy -v | head -1 | awk '{print $3}')"
  echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}')"
  echo "git=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet -- sidecar 2>/dev/null || echo '+dirty sidecar/')"
  echo "duration=$DURATION"
  echo "conns=$CONNS"
  echo "proxy_cpu=$PROXY_CPU"
  echo "load_cpu=$LOAD_CPU"
  echo "per_try_ms=$PER_TRY_MS"
  echo "nice=$(ps -o ni= -p $$ | tr -d ' ')"
  echo "sidecar_timeout_args=${SIDECAR_TIMEOUT_ARGS[*]}"
} >"$DATA/meta.kv"
load_snapshot start

log "scenario 1: peak throughput, $CONNS connections, ${DURATION}s each, $PEAK_ROUNDS interleaved rounds"
start_backends
measure peak-direct direct "$CONNS"
for ((round = 1; round <= PEAK_ROUNDS; round++)); do
  for p in sidecar nginx haproxy; do
    start_proxy "$p"
    measure "peak-$p-r$round" "$p" "$CONNS"
    stop_proxy
  done
done
# Each proxy's reported round is its median by requests per second; every round's figures are
# kept beside it so the report can show the spread.
for p in sidecar nginx haproxy; do
  median=$(for ((round = 1; round <= PEAK_ROUNDS; round++)); do
    echo "$(awk -F= '$1 == "rps" {print $2}' "$DATA/peak-$p-r$round.kv") $round"
  done | sort -n | awk -v n="$PEAK_ROUNDS" 'NR == int((n + 1) / 2) {print $2}')
  cp "$DATA/peak-$p-r$median.kv" "$DATA/peak-$p.kv"
  {
    printf 'rounds='
    for ((round = 1; round <= PEAK_ROUNDS; round++)); do
      awk -F= '$1 == "rps" {r = $2} $1 == "cpu_us_per_req" {c = $2} END {printf "%d/%s ", r, c}' \
        "$DATA/peak-$p-r$round.kv"
    done
    echo
  } >>"$DATA/peak-$p.kv"
done

# Half of HAProxy's peak as a fixed offered load: each connection waits DELAY ms between requests.
half=$(awk -F= '$1 == "rps" {printf "%d", $2 / 2}' "$DATA/peak-haproxy.kv")
delay=$(awk -v r="$half" 'BEGIN { d = int(64 * 1000 / r + 0.5); if (d < 1) d = 1; print d }')
hconns=$(awk -v r="$half" -v d="$delay" 'BEGIN { c = int(r * d / 1000 + 0.5); if (c < 1) c = 1; print c }')
echo "half_target_rps=$half" >>"$DATA/meta.kv"
echo "half_rounds=$HALF_ROUNDS" >>"$DATA/meta.kv"
log "scenario 1b: fixed load ~$half req/s ($hconns connections, ${delay} ms between requests), $HALF_ROUNDS interleaved rounds"
# Each round measures the backends directly too: the added p99 of a proxy is its p99 minus the
# direct p99 of the same round, so that a slow minute of the machine does not count against
# whichever proxy it fell on. The report gives the median of each proxy's rounds.
for ((round = 1; round <= HALF_ROUNDS; round++)); do
  measure "half-direct-r$round" direct "$hconns" "$delay"
  for p in sidecar nginx haproxy; do
    start_proxy "$p"
    measure "half-$p-r$round" "$p" "$hconns" "$delay"
    stop_proxy
  done
done
# The table's row of each target is its median round by p99.
for t in direct sidecar nginx haproxy; do
  median=$(for ((round = 1; round <= HALF_ROUNDS; round++)); do
    echo "$(awk -F= '$1 == "p99_us" {print $2}' "$DATA/half-$t-r$round.kv") $round"
  done | sort -n | awk -v n="$HALF_ROUNDS" 'NR == int((n + 1) / 2) {print $2}')
  cp "$DATA/half-$t-r$median.kv" "$DATA/half-$t.kv"
done

log "scenario 2: r3 answers in ${SLOWER_MS} ms, r1 and r2 in ${SLOW_MS} ms"
set_latency "${B_PORTS[0]}" "$SLOW_MS"
set_latency "${B_PORTS[1]}" "$SLOW_MS"
set_latency "${B_PORTS[2]}" "$SLOWER_MS"
start_proxy sidecar; measure slow-sidecar sidecar "$CONNS"; stop_proxy
start_proxy nginx least_conn; measure slow-nginx nginx "$CONNS"; stop_proxy
start_proxy haproxy leastconn; measure slow-haproxy haproxy "$CONNS"; stop_proxy
clear_faults
stop_backends

log "scenario 3: r3 killed / frozen 3 s into a ${DURATION}s run, 8 keep-alive clients"
TIGHT=1
for fault in kill freeze; do
  for p in sidecar nginx haproxy; do
    start_backends
    start_proxy "$p"
    sleep 1.5
    victim=${BACKEND_PIDS[2]}
    if [[ $fault == kill ]]; then cmd="kill -KILL $victim"; else cmd="kill -STOP $victim"; fi
    taskset -c "$LOAD_CPU" python3 "$BENCH/faultload.py" --target "127.0.0.1:$(proxy_port "$p")" \
      --duration "$DURATION" --concurrency 8 --fault-at 3 --fault-cmd "$cmd" --stuck-ms $((PER_TRY_MS - 10)) \
      >"$DATA/fault-$fault-$p.json"
    log "fault $fault $p: $(cat "$DATA/fault-$fault-$p.json")"
    stop_proxy
    stop_backends
  done
done

TIGHT=0
log "scenario 4: idle RSS, then RSS with 10,000 open idle client connections"
start_backends
for p in sidecar nginx haproxy; do
  start_proxy "$p"
  sleep 2
  idle=$(status_kib "$PROXY_PID" VmRSS)
  : >"$WORK/idle-$p.out"
  taskset -c "$LOAD_CPU" python3 "$BENCH/idleconns.py" --target "127.0.0.1:$(proxy_port "$p")" \
    --connections 10000 --hold 8 >"$WORK/idle-$p.out" &
  client=$!
  OWN_PIDS+=($client)
  for ((i = 0; i < 600; i++)); do grep -q READY "$WORK/idle-$p.out" && break; sleep 0.1; done
  sleep 1
  {
    echo "idle_rss_kib=$idle"
    echo "conn_rss_kib=$(status_kib "$PROXY_PID" VmRSS)"
    echo "conn_hwm_kib=$(status_kib "$PROXY_PID" VmHWM)"
    echo "opened=$(awk '/READY/ {print $2}' "$WORK/idle-$p.out")"
    echo "failed=$(awk '/READY/ {print $3}' "$WORK/idle-$p.out")"
  } >"$DATA/idle-$p.kv"
  wait "$client" || true
  log "idle $p: $(tr '\n' ' ' <"$DATA/idle-$p.kv")"
  stop_proxy
done
stop_backends
load_snapshot end

python3 "$BENCH/report.py" "$DATA" >"$REPORT"
cat "$REPORT"
log "report: $REPORT (raw data: $DATA)"
