#!/usr/bin/env python3
"""Opens N keep-alive client connections to a proxy, sends one GET on each (so every connection
is a real, served HTTP/1.1 connection), then holds them all open and idle for --hold seconds.

Prints `READY <open> <failed>` once all are established, so the caller can read the proxy's
RSS while the connections are held. Needs `ulimit -n` above N.
"""

import argparse
import asyncio
import sys


async def open_one(host, port, path, sem, conns, failed):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.decode("latin-1").split("\r\n"):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            await asyncio.wait_for(reader.readexactly(length), 10)
            conns.append(writer)
        except Exception:  # noqa: BLE001 - any failure is counted, not fatal
            failed.append(1)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--path", default="/whoami")
    p.add_argument("--hold", type=float, default=5.0)
    args = p.parse_args()
    host, port = args.target.rsplit(":", 1)
    sem = asyncio.Semaphore(200)
    conns, failed = [], []
    await asyncio.gather(*(open_one(host, int(port), args.path, sem, conns, failed) for _ in range(args.connections)))
    print(f"READY {len(conns)} {len(failed)}", flush=True)
    await asyncio.sleep(args.hold)
    for w in conns:
        w.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
