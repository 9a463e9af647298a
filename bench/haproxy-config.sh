# HAProxy's configuration for the benchmarks, in one place for bench/run.sh and
# bench/kernel-split.sh. Sourced, not run.
#
#   haproxy_config PORT BALANCE CONNECT SERVER LIMITS SERVERS > haproxy.cfg
#
# PORT: the frontend's port on 127.0.0.1; BALANCE: roundrobin | leastconn; CONNECT and SERVER:
# the connect and server timeouts (5s and 60s, or the per-try timeout); LIMITS: 1 for the
# connection limits that 10,000 idle client connections need, 0 for none; SERVERS: the `server`
# lines, one per replica. Retries, redispatch and health checks match the other proxies' (see
# BENCHMARKS.md, "How it measures").

haproxy_config() {
  local port=$1 balance=$2 connect=$3 server=$4 limits=$5 servers=$6
  local global_limits="" frontend_limits=""
  if ((limits)); then
    # HAProxy reserves two descriptors per connection; idle client connections need only one,
    # so the machine's hard limit (20000) is enough for 10,000 of them.
    global_limits=$'  ulimit-n 20000\n  no strict-limits\n  maxconn 10200\n'
    frontend_limits=$'  maxconn 10200\n'
  fi
  cat <<CONF
global
  nbthread 1
${global_limits}defaults
  mode http
  timeout connect $connect
  timeout server $server
  timeout client 60s
  timeout http-keep-alive 60s
  timeout check 500ms
  http-reuse always
  retries 2
  option redispatch 1
  retry-on conn-failure empty-response response-timeout 503
frontend fe
  bind 127.0.0.1:$port
${frontend_limits}  default_backend be
backend be
  balance $balance
  option httpchk GET /healthz
  default-server check inter 1s fall 2 rise 2
$servers
CONF
}
