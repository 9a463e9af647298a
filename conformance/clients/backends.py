"""Backends of the clients suite, all on 127.0.0.1 with ports the kernel picks, served by one asyncio
loop in a background thread (the tests run their clients in the main thread):

- ``aiohttp``: an aiohttp web application (a server written by others) for the upload, server-sent
  events, query, keep-alive and timeout cases.
- ``raw``: a deliberately small HTTP/1.1 server written here on asyncio streams, for what no
  library server sends on request: a ``103 Early Hints`` before the final answer, a chunked answer
  with trailers, 150 ``Set-Cookie`` fields, a 100 KiB field, and an echo of the ``Host`` it got.
- ``websockets``: the websockets library's asyncio server, echoing messages.

Each backend records what it saw (decoded query values, received close frames) in ``Backends.seen``
so that a test can compare what reached the backend directly and through the sidecar.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

from aiohttp import web
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

# ---- the raw HTTP/1.1 server -------------------------------------------------------------------------

EARLY_HINTS_LINK = "</style.css>; rel=preload; as=style"
TRAILERS = [("X-Checksum", "sha256-abc123"), ("X-Chunk-Count", "3")]
TRAILER_BODY = [b"hello ", b"trailer ", b"world\n"]
COOKIES = 150
BIG_HEADER_BYTES = 100 * 1024


def big_header_value() -> str:
    # Varied (not one repeated byte), so that a truncation or a copy error shows in the comparison.
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(alphabet[(i * 7) % len(alphabet)] for i in range(BIG_HEADER_BYTES))


def _head(status: str, fields: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _fixed(status: str, fields: list[tuple[str, str]], body: bytes) -> bytes:
    return _head(status, fields + [("Content-Length", str(len(body)))]) + body


_raw_writers: set[asyncio.StreamWriter] = set()


async def _raw_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    _raw_writers.add(writer)
    try:
        while True:
            try:
                async with asyncio.timeout(30):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                writer.write(_fixed("400 Bad Request", [("Connection", "close")], b"bad request line\n"))
                await writer.drain()
                return
            method, target, version = parts
            fields = []
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    fields.append((name.strip().lower(), value.strip()))
            hdr = {}
            for k, v in fields:
                hdr.setdefault(k, []).append(v)
            length = int(hdr.get("content-length", ["0"])[0])
            if length:
                await reader.readexactly(length)
            conn = ",".join(hdr.get("connection", [])).lower()
            keep = ("close" not in conn) if version == "HTTP/1.1" else ("keep-alive" in conn)
            path = target.split("?", 1)[0]
            extra = [] if keep else [("Connection", "close")]

            if path == "/early-hints":
                writer.write(_head("103 Early Hints", [("Link", EARLY_HINTS_LINK)]))
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(
                    _fixed("200 OK", [("Content-Type", "text/plain"), ("Link", EARLY_HINTS_LINK)] + extra, b"final\n")
                )
            elif path == "/trailers":
                # Sent whatever the request's TE says (RFC 9110 6.5 lets a sender send trailers; the
                # proxy must not drop them for a client that accepts them). The TE that reached us is
                # echoed, to show what the sidecar forwarded.
                te = ",".join(hdr.get("te", [])) or "-"
                out = _head(
                    "200 OK",
                    [
                        ("Content-Type", "text/plain"),
                        ("Transfer-Encoding", "chunked"),
                        ("Trailer", ", ".join(k for k, _ in TRAILERS)),
                        ("X-Seen-TE", te),
                    ]
                    + extra,
                )
                for chunk in TRAILER_BODY:
                    out += b"%x\r\n%s\r\n" % (len(chunk), chunk)
                out += b"0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in TRAILERS).encode() + b"\r\n"
                writer.write(out)
            elif path == "/cookies":
                cookies = [("Set-Cookie", f"c{i:03d}=v{i:03d}; Path=/") for i in range(COOKIES)]
                writer.write(_fixed("200 OK", [("Content-Type", "text/plain")] + cookies + extra, b"cookies\n"))
            elif path == "/big-header":
                writer.write(
                    _fixed("200 OK", [("Content-Type", "text/plain"), ("X-Big", big_header_value())] + extra, b"big\n")
                )
            elif path == "/host":
                body = json.dumps({"host": hdr.get("host", []), "version": version}).encode()
                writer.write(_fixed("200 OK", [("Content-Type", "application/json")] + extra, body))
            else:
                writer.write(_fixed("404 Not Found", extra, b"no such path\n"))
            await writer.drain()
            if not keep:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        _raw_writers.discard(writer)
        writer.close()


# ---- the aiohttp application ---------------------------------------------------------------------------

SSE_EVENTS = 30
SSE_INTERVAL = 0.1  # 30 events over ~3 s: longer than the sidecar's 1 s request timeout


def _aiohttp_app(seen: dict) -> web.Application:
    routes = web.RouteTableDef()

    @routes.post("/upload")
    async def upload(request: web.Request) -> web.Response:
        n = 0
        async for chunk in request.content.iter_any():
            n += len(chunk)
        return web.json_response(
            {
                "bytes": n,
                "transfer_encoding": request.headers.get("Transfer-Encoding"),
                "content_length": request.headers.get("Content-Length"),
            }
        )

    @routes.get("/events")
    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for i in range(SSE_EVENTS):
            await resp.write(f"id: {i}\nevent: tick\ndata: tick {i}\n\n".encode())
            await asyncio.sleep(SSE_INTERVAL)
        await resp.write_eof()
        return resp

    @routes.get("/query")
    async def query(request: web.Request) -> web.Response:
        obs = {
            "raw_path": request.raw_path,
            "query_string": request.query_string,
            "q": request.query.getall("q", []),
        }
        seen.setdefault("query", []).append(obs)
        return web.json_response(obs)

    @routes.get("/hello")
    async def hello(request: web.Request) -> web.Response:
        await asyncio.sleep(0.02)  # so that the requests of a burst really overlap
        return web.Response(text="hello")

    @routes.get("/slow")
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "1.5")))
        return web.Response(text="slow")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes(routes)
    return app


# ---- the websockets server -------------------------------------------------------------------------------


async def _ws_handler(ws, seen: dict) -> None:
    # The path names the connection, so that a test can read what this server saw of its close.
    name = ws.request.path
    try:
        async for message in ws:
            if message == "close-please":
                await ws.close(4000, "server done")
                break
            await ws.send(message)
    except ConnectionClosed:
        pass
    await ws.wait_closed()
    rcvd, sent = ws.protocol.close_rcvd, ws.protocol.close_sent
    seen.setdefault("ws", {})[name] = {
        "rcvd": None if rcvd is None else [rcvd.code, rcvd.reason],
        "sent": None if sent is None else [sent.code, sent.reason],
    }


# ---- the loop ------------------------------------------------------------------------------------------


@dataclass
class Backends:
    """The running backends: ``ports["aiohttp" | "raw" | "websockets"]``."""

    ports: dict = field(default_factory=dict)
    seen: dict = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _stop: asyncio.Event | None = None

    def start(self, timeout: float = 10) -> "Backends":
        ready = threading.Event()
        errors = []

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                runner = web.AppRunner(_aiohttp_app(self.seen), access_log=None, shutdown_timeout=1)
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
                await site.start()
                self.ports["aiohttp"] = site._server.sockets[0].getsockname()[1]

                # limit: the 100 KiB field must fit in one StreamReader line (the request heads are small).
                raw = await asyncio.start_server(_raw_connection, "127.0.0.1", 0, limit=1 << 20, backlog=1024)
                self.ports["raw"] = raw.sockets[0].getsockname()[1]

                wss = await ws_serve(lambda ws: _ws_handler(ws, self.seen), "127.0.0.1", 0, max_size=4 << 20)
                self.ports["websockets"] = next(iter(wss.sockets)).getsockname()[1]
            except Exception as e:  # reported to start()'s caller
                errors.append(e)
                ready.set()
                return
            ready.set()
            await self._stop.wait()
            wss.close()
            raw.close()
            await runner.cleanup()
            # Connections a client still keeps alive: closed, so that their handlers end.
            for w in list(_raw_writers):
                w.close()
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if rest:
                await asyncio.wait(rest, timeout=2)

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            self.loop.run_until_complete(main())
            self.loop.close()

        self._thread = threading.Thread(target=run, name="backends", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("backends did not start")
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self.loop and self._stop and self._thread and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
