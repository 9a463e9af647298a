#!/usr/bin/env python3
"""Bounded keep-alive GET load that injects a fault mid-run and measures what clients saw.

Each of --concurrency workers keeps one HTTP/1.1 connection to --target and sends GETs back to
back for --duration seconds. At --fault-at seconds, --fault-cmd runs (e.g. `kill -STOP PID`).
Printed as JSON: requests, failures by reason (non-2xx status, connection errors, client
timeouts), latency percentiles, answers per replica (x-replica-id) before and after the fault,
the disruption window: from the fault until the end of the last request that failed or took
longer than --slow-ms (requests in flight at the fault count; zero means clients never noticed),
and "stuck" requests (failed, or at least --stuck-ms, just under a per-try timeout: they waited
on the bad replica): how many before and after the fault, and when after the fault the last one
started, which is when the proxy last sent a client's request to the bad replica.
"""

import argparse
import asyncio
import json
import subprocess
import time


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers


async def worker(args, host, port, stop_at, records):
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.target}\r\nUser-Agent: faultload\r\n\r\n"
    ).encode()
    conn = None
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        try:
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection(host, port), args.timeout)
            reader, writer = conn
            writer.write(request)
            status, headers = await asyncio.wait_for(read_response(reader), args.timeout)
            t1 = time.monotonic()
            ok = 200 <= status < 300
            records.append((t0, t1, "ok" if ok else f"status {status}", headers.get("x-replica-id", "?")))
            if headers.get("connection", "").lower() == "close":
                writer.close()
                conn = None
        except asyncio.TimeoutError:
            records.append((t0, time.monotonic(), "client timeout", None))
            conn = drop(conn)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            records.append((t0, time.monotonic(), f"socket error ({type(e).__name__})", None))
            conn = drop(conn)
            await asyncio.sleep(0.005)
    drop(conn)


def drop(conn):
    if conn is not None:
        conn[1].close()
    return None


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--path", default="/whoami")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--fault-at", type=float, default=3.0)
    p.add_argument("--fault-cmd", default="")
    p.add_argument("--slow-ms", type=float, default=100.0)
    p.add_argument("--stuck-ms", type=float, default=190.0)
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args()
    host, port = args.target.rsplit(":", 1)

    records = []
    start = time.monotonic()
    stop_at = start + args.duration
    tasks = [asyncio.create_task(worker(args, host, int(port), stop_at, records)) for _ in range(args.concurrency)]
    fault_t = None
    if args.fault_cmd:
        await asyncio.sleep(args.fault_at)
        fault_t = time.monotonic()
        subprocess.run(args.fault_cmd, shell=True, check=True)
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start

    lat = sorted(r[1] - r[0] for r in records)

    def pct(q):
        return round(lat[min(len(lat) - 1, int(len(lat) * q))] * 1000, 2) if lat else 0.0

    failures = {}
    for r in records:
        if r[2] != "ok":
            failures[r[2]] = failures.get(r[2], 0) + 1
    before, after, last2s = {}, {}, {}
    window = 0.0
    affected = 0
    slow_before = 0
    stuck_before = stuck_after = 0
    last_stuck_start = None
    for t0, t1, outcome, replica in records:
        if outcome == "ok":
            side = before if fault_t is None or t0 < fault_t else after
            side[replica] = side.get(replica, 0) + 1
            if t0 >= stop_at - 2:
                last2s[replica] = last2s.get(replica, 0) + 1
        stuck = outcome != "ok" or (t1 - t0) * 1000 >= args.stuck_ms
        if fault_t is not None and stuck:
            if t1 < fault_t:
                stuck_before += 1
            else:
                stuck_after += 1
                start = max(0.0, t0 - fault_t)
                last_stuck_start = start if last_stuck_start is None else max(last_stuck_start, start)
        if fault_t is not None and t1 < fault_t and (outcome != "ok" or (t1 - t0) * 1000 > args.slow_ms):
            slow_before += 1
        if fault_t is not None and t1 >= fault_t and (outcome != "ok" or (t1 - t0) * 1000 > args.slow_ms):
            affected += 1
            window = max(window, t1 - fault_t)
    print(json.dumps({
        "requests": len(records),
        "rps": round(len(records) / elapsed, 1),
        "failed": sum(failures.values()),
        "failures": failures,
        "p50_ms": pct(0.50), "p99_ms": pct(0.99), "p999_ms": pct(0.999), "max_ms": pct(1.0),
        "slow_ms": args.slow_ms,
        "affected": affected,
        "slow_before_fault": slow_before,
        "disruption_ms": round(window * 1000, 1),
        "stuck_ms": args.stuck_ms,
        "stuck_before_fault": stuck_before,
        "stuck_after_fault": stuck_after,
        "last_stuck_start_ms": None if last_stuck_start is None else round(last_stuck_start * 1000, 1),
        "replicas_before_fault": before,
        "replicas_after_fault": after,
        "replicas_last_2s": last2s,
    }))


if __name__ == "__main__":
    asyncio.run(main())
