#!/usr/bin/env python3
"""Turns the raw files bench/run.sh writes (key=value and JSON per measurement) into markdown."""

import json
import os
import sys

DATA = sys.argv[1]
PROXIES = ["sidecar", "nginx", "haproxy"]


def kv(name):
    path = os.path.join(DATA, name + ".kv")
    out = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                out.setdefault(k, v)
    return out


def num(d, k):
    try:
        return float(d[k])
    except (KeyError, ValueError):
        return None


def ms(us):
    return "n/a" if us is None else f"{us / 1000:.2f}"


def mib(kib):
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


def ratio(a, b):
    return "n/a" if a is None or b in (None, 0) else f"{a / b:.2f}"


def errors(d):
    keys = ["err_connect", "err_read", "err_write", "err_timeout", "err_status"]
    return int(sum(num(d, k) or 0 for k in keys))


meta = kv("meta")
print(f"# DataStream data-plane benchmark, {meta.get('date', '?')}\n")
print(f"- Machine: {meta.get('cpus')} CPUs ({meta.get('cpu_model')}), {meta.get('mem')}, Linux {meta.get('kernel')}; "
      "shared with other jobs.")
for when in ["start", "end"]:
    load = kv("load-" + when)
    print(f"- Load at {when}: `{load.get('uptime', '?').strip()}`")
print("- Scenarios 1, 2 and 4 use ordinary timeouts everywhere (5 s connect, 60 s response; no sidecar per-try "
      f"timeout); scenario 3 uses {meta.get('per_try_ms')} ms: sidecar per-try timeout, nginx "
      "`proxy_connect_timeout`/`proxy_read_timeout` with `proxy_next_upstream error timeout http_503`, HAProxy "
      "`timeout connect`/`timeout server` with `retries 2`, `option redispatch 1`, "
      "`retry-on conn-failure empty-response response-timeout 503`, checks `inter 1s fall 2`.")
print(f"- Proxies pinned to CPU {meta.get('proxy_cpu')}; wrk, load clients and the three demo replicas pinned to CPU "
      f"{meta.get('load_cpu')}; all at nice {meta.get('nice')}. Each proxy is alone on its core, single-threaded (sidecar `--threads 1`, "
      "nginx one worker, HAProxy `nbthread 1`).")
print(f"- nginx {meta.get('nginx')}, HAProxy {meta.get('haproxy')}, wrk {meta.get('wrk')}; sidecar at {meta.get('git')}, "
      f"`--policy p2c-ewma {meta.get('sidecar_timeout_args')}`.")
print(f"- wrk: 1 thread, keep-alive, {meta.get('duration')} s per measurement after a 2 s warm-up, GET /whoami "
      "(a ~20-byte body). CPU/request = (utime+stime of the proxy process during the measurement) / requests.\n")

print(f"## 1. Peak throughput ({meta.get('conns')} connections)\n")
print("| target | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | peak RSS MiB | errors |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
peak = {t: kv("peak-" + t) for t in ["direct"] + PROXIES}
for t, d in peak.items():
    print(f"| {t} | {num(d, 'rps') or 0:.0f} | {ms(num(d, 'p50_us'))} | {ms(num(d, 'p99_us'))} | {ms(num(d, 'p999_us'))} | "
          f"{d.get('cpu_us_per_req', 'n/a')} | {mib(num(d, 'hwm_kib'))} | {errors(d)} |")
print()
print("| ratio | req/s | p50 | p99 | p99.9 | CPU/req | peak RSS |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for other in ["haproxy", "nginx"]:
    s, o = peak["sidecar"], peak[other]
    print(f"| sidecar / {other} | " + " | ".join(ratio(num(s, k), num(o, k)) for k in
          ["rps", "p50_us", "p99_us", "p999_us", "cpu_us_per_req", "hwm_kib"]) + " |")
if any(peak[t].get("rounds") for t in PROXIES):
    print("\nEach proxy's row is its median round by req/s; every round (req/s / CPU µs per request), "
          "interleaved sidecar, nginx, HAProxy:\n")
    for t in PROXIES:
        print(f"- {t}: {peak[t].get('rounds', '').strip()}")

print(f"\n## 1b. Fixed load at half of HAProxy's peak (~{meta.get('half_target_rps')} req/s offered)\n")
print("| target | conns x delay | req/s | p50 ms | p99 ms | p99.9 ms | added p99 ms | CPU µs/req | errors |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
half = {t: kv("half-" + t) for t in ["direct"] + PROXIES}
base_p99 = num(half["direct"], "p99_us")
added = {}
for t, d in half.items():
    p99 = num(d, "p99_us")
    added[t] = None if p99 is None or base_p99 is None else p99 - base_p99
    print(f"| {t} | {d.get('conns')} x {d.get('delay_ms')} ms | {num(d, 'rps') or 0:.0f} | {ms(num(d, 'p50_us'))} | "
          f"{ms(p99)} | {ms(num(d, 'p999_us'))} | {'-' if t == 'direct' else ms(added[t])} | "
          f"{d.get('cpu_us_per_req', 'n/a')} | {errors(d)} |")
half_rounds = int(meta.get("half_rounds") or 0)
if half_rounds > 1:
    # Added p99 per round against the same round's direct p99; the verdict uses each proxy's median.
    per_round = {t: [] for t in PROXIES}
    for r in range(1, half_rounds + 1):
        direct = num(kv(f"half-direct-r{r}"), "p99_us")
        for t in PROXIES:
            p99 = num(kv(f"half-{t}-r{r}"), "p99_us")
            per_round[t].append(None if None in (p99, direct) else p99 - direct)
    print(f"\nRows are each target's median round by p99. Added p99 in each of the {half_rounds} interleaved "
          "rounds (ms; the proxy's p99 minus the direct p99 of the same round), and its median:\n")
    for t in PROXIES:
        values = [v for v in per_round[t] if v is not None]
        med = sorted(values)[len(values) // 2] if values else None
        added[t] = med
        print(f"- {t}: {', '.join(ms(v) for v in per_round[t])}; median {ms(med)}")
print()
for other in ["haproxy", "nginx"]:
    print(f"- sidecar / {other}: p99 {ratio(num(half['sidecar'], 'p99_us'), num(half[other], 'p99_us'))}, "
          f"added p99 {ratio(added['sidecar'], added[other])}, CPU/req "
          f"{ratio(num(half['sidecar'], 'cpu_us_per_req'), num(half[other], 'cpu_us_per_req'))}")

print("\n## 2. One replica 20x slower (r1, r2: 2 ms; r3: 40 ms)\n")
print("| target | policy | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | errors |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
slow = {t: kv("slow-" + t) for t in PROXIES}
policy = {"sidecar": "p2c-ewma", "nginx": "least_conn", "haproxy": "leastconn"}
for t, d in slow.items():
    print(f"| {t} | {policy[t]} | {num(d, 'rps') or 0:.0f} | {ms(num(d, 'p50_us'))} | {ms(num(d, 'p99_us'))} | "
          f"{ms(num(d, 'p999_us'))} | {d.get('cpu_us_per_req', 'n/a')} | {errors(d)} |")
print()
for other in ["nginx", "haproxy"]:
    print(f"- sidecar p99 / {other} p99: {ratio(num(slow['sidecar'], 'p99_us'), num(slow[other], 'p99_us'))}")

print("\n## 3. A replica killed / frozen (SIGSTOP) 3 s into the run (8 keep-alive clients, GET)\n")
print("Disruption = from the fault until the end of the last request that failed or took over 100 ms. "
      "'Slow before' counts such requests before the fault: the noise floor of the machine.\n")
print("'Stuck' requests failed or took at least the per-try timeout minus 10 ms (they waited on the bad replica); "
      "'last stuck start' is when, after the fault, the last of them was sent: the time to route around the replica.\n")
print("| fault | target | requests | failed | failures | disruption ms | affected | slow before | stuck after / before | last stuck start ms | p99 ms | max ms |")
print("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
faults = {}
for fault in ["kill", "freeze"]:
    for t in PROXIES:
        path = os.path.join(DATA, f"fault-{fault}-{t}.json")
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError):
            d = {}
        faults[(fault, t)] = d
        fl = ", ".join(f"{k}: {v}" for k, v in d.get("failures", {}).items()) or "-"
        print(f"| {fault} | {t} | {d.get('requests', 'n/a')} | {d.get('failed', 'n/a')} | {fl} | "
              f"{d.get('disruption_ms', 'n/a')} | {d.get('affected', 'n/a')} | {d.get('slow_before_fault', 'n/a')} | "
              f"{d.get('stuck_after_fault', 'n/a')} / {d.get('stuck_before_fault', 'n/a')} | {d.get('last_stuck_start_ms', '-')} | "
              f"{d.get('p99_ms', 'n/a')} | {d.get('max_ms', 'n/a')} |")

print("\n## 4. Memory\n")
print("| target | idle RSS MiB | RSS with 10,000 idle client connections MiB | peak MiB | opened / failed |")
print("| --- | ---: | ---: | ---: | --- |")
idle = {t: kv("idle-" + t) for t in PROXIES}
for t, d in idle.items():
    print(f"| {t} | {mib(num(d, 'idle_rss_kib'))} | {mib(num(d, 'conn_rss_kib'))} | {mib(num(d, 'conn_hwm_kib'))} | "
          f"{d.get('opened')} / {d.get('failed')} |")

print("\n## Targets\n")


def verdict(ok):
    return "n/a" if ok is None else ("met" if ok else "NOT met")


s_rps, h_rps = num(peak["sidecar"], "rps"), num(peak["haproxy"], "rps")
print(f"- Throughput >= HAProxy on the same core: {verdict(None if None in (s_rps, h_rps) else s_rps >= h_rps)} "
      f"({ratio(s_rps, h_rps)}x; CPU/req {ratio(num(peak['sidecar'], 'cpu_us_per_req'), num(peak['haproxy'], 'cpu_us_per_req'))}x HAProxy's)")
a_s, a_h = added["sidecar"], added["haproxy"]
print(f"- Added p99 at half load <= HAProxy's: {verdict(None if None in (a_s, a_h) else a_s <= a_h)} "
      f"({ms(a_s)} ms vs {ms(a_h)} ms)")
sp, np_ = num(slow["sidecar"], "p99_us"), num(slow["nginx"], "p99_us")
print(f"- Slow-replica p99 <= half of nginx's: {verdict(None if None in (sp, np_) else sp <= np_ / 2)} "
      f"({ms(sp)} ms vs {ms(np_)} ms)")
ir = num(idle["sidecar"], "idle_rss_kib")
cr = num(idle["sidecar"], "conn_rss_kib")
print(f"- Idle RSS < 20 MiB: {verdict(None if ir is None else ir < 20 * 1024)} ({mib(ir)} MiB)")
opened_all = idle["sidecar"].get("opened") == "10000"
print(f"- RSS < 64 MiB with 10,000 connections: {verdict(None if cr is None else (cr < 64 * 1024 and opened_all))} "
      f"({mib(cr)} MiB, {idle['sidecar'].get('opened')} opened)")
for fault in ["kill", "freeze"]:
    d = faults[(fault, "sidecar")]
    print(f"- Zero failed requests, {fault}: {verdict(None if 'failed' not in d else d['failed'] == 0)} "
          f"({d.get('failed', 'n/a')} failed; nginx {faults[(fault, 'nginx')].get('failed', 'n/a')}, "
          f"HAProxy {faults[(fault, 'haproxy')].get('failed', 'n/a')})")
d = faults[("freeze", "sidecar")]
per_try = num(meta, "per_try_ms")
dis = d.get("last_stuck_start_ms") or 0.0
print(f"- Frozen replica routed around within two per-try timeouts ({2 * per_try:.0f} ms): "
      f"{verdict(None if 'failed' not in d else dis <= 2 * per_try)} (last stuck request sent {dis} ms after the "
      f"freeze, {d.get('stuck_after_fault', 'n/a')} stuck; nginx "
      f"{faults[('freeze', 'nginx')].get('last_stuck_start_ms', 'n/a')} ms, HAProxy "
      f"{faults[('freeze', 'haproxy')].get('last_stuck_start_ms', 'n/a')} ms)")
