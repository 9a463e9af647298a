"""HTTP/1.1 and WebSocket client libraries written by others (requests, httpx, aiohttp, websockets,
curl), each case run against the backend directly (``[direct]``) and through a datastream-sidecar
(``[sidecar]``), asserting the same observable behaviour: status, body, the headers that matter,
trailers, interim responses. The sidecars run with ``failover.requestTimeout: 1s`` (conftest.py).

A case's observation is the part of what the client saw that must not depend on the path (no
ports, dates, or the fields a proxy adds); ``same_as_direct`` compares them.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import time

import aiohttp
import httpx
import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

import backends
from conftest import REQUEST_TIMEOUT_S

MIB = 1024 * 1024

# ---- 1. requests: a streamed upload slower than the request timeout -----------------------------------

UPLOAD_BYTES = 2 * MIB
UPLOAD_CHUNK = 64 * 1024
UPLOAD_RATE = 1 * MIB  # bytes per second: the upload takes ~2 s, twice the sidecar's request timeout


def observe_upload(t):
    def body():
        start = time.monotonic()
        for i in range(UPLOAD_BYTES // UPLOAD_CHUNK):
            # Paced against the clock, so the whole upload takes UPLOAD_BYTES / UPLOAD_RATE.
            delay = start + i * UPLOAD_CHUNK / UPLOAD_RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield bytes([i % 251]) * UPLOAD_CHUNK

    start = time.monotonic()
    # A generator body: requests sends it with Transfer-Encoding: chunked.
    r = requests.post(t.url("/upload"), data=body(), timeout=(5, 15))
    took = time.monotonic() - start
    obs = {"status": r.status_code, "json": r.json() if r.status_code == 200 else r.text}
    return obs, took


def test_01_requests_streamed_upload(target, via, same_as_direct):
    t = target("aiohttp")
    obs, took = observe_upload(t)
    assert obs["status"] == 200, obs
    assert obs["json"]["bytes"] == UPLOAD_BYTES
    assert obs["json"]["transfer_encoding"] == "chunked" and obs["json"]["content_length"] is None
    # The upload really was slower than the request timeout (else the case proves nothing).
    assert took > 1.5 * REQUEST_TIMEOUT_S, took
    same_as_direct(obs, lambda: observe_upload(target("aiohttp", "direct"))[0])


def test_01b_request_timeout_is_enforced(target, via):
    """Control for cases 1 and 2: the sidecars' 1 s request timeout is live. A backend that takes
    1.5 s to its response headers answers 200 directly and 504 (timeout) through the sidecar."""
    t = target("aiohttp")
    r = requests.get(t.url("/slow?s=1.5"), timeout=(5, 10))
    if via == "direct":
        assert r.status_code == 200 and r.text == "slow"
    else:
        assert r.status_code == 504, (r.status_code, r.headers, r.text)
        assert r.headers.get("x-datastream-error") == "timeout"


# ---- 2. requests stream=True: server-sent events for ~3 s -----------------------------------------------


def observe_events(t):
    start = time.monotonic()
    events, arrivals, current = [], [], {}
    with requests.get(t.url("/events"), stream=True, timeout=(5, 5), headers={"Accept": "text/event-stream"}) as r:
        status, ctype = r.status_code, r.headers.get("Content-Type")
        for line in r.iter_lines(chunk_size=None, decode_unicode=True):
            if line == "":
                if current:
                    events.append(current)
                    arrivals.append(time.monotonic() - start)
                current = {}
                continue
            k, _, v = line.partition(": ")
            current[k] = v
    obs = {"status": status, "content_type": ctype, "events": events}
    return obs, arrivals


def test_02_requests_server_sent_events(target, via, same_as_direct):
    t = target("aiohttp")
    obs, arrivals = observe_events(t)
    assert obs["status"] == 200 and obs["content_type"] == "text/event-stream"
    want = [{"id": str(i), "event": "tick", "data": f"tick {i}"} for i in range(backends.SSE_EVENTS)]
    assert obs["events"] == want
    # Streamed, not buffered: the first event long before the last, and the stream outlived the
    # sidecar's request timeout.
    assert arrivals[0] < 2.0 and arrivals[-1] > 2 * REQUEST_TIMEOUT_S, (arrivals[0], arrivals[-1])
    same_as_direct(obs, lambda: observe_events(target("aiohttp", "direct"))[0])


# ---- 3. query strings with ", <, > ------------------------------------------------------------------------

QUERY_RAW = '/query?q="<x>"&q=a>b<c&q=%22enc%3C%3E%22&q=a%20b'
QUERY_DECODED = ['"<x>"', "a>b<c", '"enc<>"', "a b"]


def observe_query_httpx(t):
    # httpx percent-encodes ", <, > in a query itself (WHATWG's query set), so this is the encoded
    # form; the raw bytes are curl's case below.
    r = httpx.get(t.url(QUERY_RAW), timeout=5)
    return {"status": r.status_code, "q": r.json()["q"] if r.status_code == 200 else r.text}, r


def test_03_httpx_query_quotes_and_angles(target, via, same_as_direct):
    t = target("aiohttp")
    obs, r = observe_query_httpx(t)
    assert str(r.request.url).endswith("q=%22%3Cx%3E%22&q=a%3Eb%3Cc&q=%22enc%3C%3E%22&q=a%20b"), r.request.url
    assert obs == {"status": 200, "q": QUERY_DECODED}
    same_as_direct(obs, lambda: observe_query_httpx(target("aiohttp", "direct"))[0])


def observe_query_raw(t):
    # --path-as-is -g: curl sends the target's bytes as they are (no globbing, no normalising).
    p = subprocess.run(
        ["curl", "-sS", "--http1.1", "--path-as-is", "-g", "-m", "5", "-w", "\n%{http_code}", t.url(QUERY_RAW)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    body, _, code = p.stdout.rpartition("\n")
    seen = json.loads(body) if code == "200" else {"raw_path": None, "q": body}
    return {"status": int(code or 0), "q": seen["q"]}, seen["raw_path"], p.stderr


def test_03b_curl_raw_query_quotes_and_angles(target, via, same_as_direct, note):
    t = target("aiohttp")
    obs, raw_path, err = observe_query_raw(t)
    note("backend_raw_path", raw_path)
    assert obs == {"status": 200, "q": QUERY_DECODED}, (obs, err)
    if via == "direct":
        # What the backend got directly is what curl sent: the raw bytes.
        assert raw_path == QUERY_RAW, raw_path
    else:
        # The sidecar percent-encodes the bytes RFC 3986 does not allow in a query and leaves the
        # rest (including what was already encoded) alone; the decoded value is the same.
        assert raw_path in (QUERY_RAW, "/query?q=%22%3Cx%3E%22&q=a%3Eb%3Cc&q=%22enc%3C%3E%22&q=a%20b"), raw_path
    same_as_direct(obs, lambda: observe_query_raw(target("aiohttp", "direct"))[0])


# ---- 4. curl -v: 103 Early Hints before the 200 ---------------------------------------------------------


def observe_early_hints(t):
    p = subprocess.run(
        ["curl", "-sS", "-v", "--http1.1", "-m", "5", t.url("/early-hints")],
        capture_output=True,
        text=True,
        timeout=10,
    )
    # curl -v prints every response head it reads, interim ones included, as "< " lines.
    heads, cur = [], None
    for line in p.stderr.splitlines():
        if not line.startswith("< "):
            continue
        line = line[2:].rstrip("\r")
        if line.startswith("HTTP/"):
            cur = {"status": line.split(" ", 2)[1], "link": []}
            heads.append(cur)
        elif cur is not None and line.lower().startswith("link:"):
            cur["link"].append(line.split(":", 1)[1].strip())
    return {"rc": p.returncode, "heads": heads, "body": p.stdout}, p.stderr


def test_04_curl_early_hints(target, via, same_as_direct):
    t = target("raw")
    obs, verbose = observe_early_hints(t)
    want_heads = [
        {"status": "103", "link": [backends.EARLY_HINTS_LINK]},
        {"status": "200", "link": [backends.EARLY_HINTS_LINK]},
    ]
    assert obs == {"rc": 0, "heads": want_heads, "body": "final\n"}, verbose
    same_as_direct(obs, lambda: observe_early_hints(target("raw", "direct"))[0])


# ---- 5. curl --raw, TE: trailers: a chunked answer with trailers ------------------------------------------


def parse_chunked(raw: bytes):
    """Body and trailer fields of a chunked message body (raises on a malformed one)."""
    body, pos = b"", 0
    while True:
        eol = raw.index(b"\r\n", pos)
        size = int(raw[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            break
        body += raw[pos : pos + size]
        assert raw[pos + size : pos + size + 2] == b"\r\n", "chunk not followed by CRLF"
        pos += size + 2
    trailers = []
    while True:
        eol = raw.index(b"\r\n", pos)
        line = raw[pos:eol].decode("latin-1")
        pos = eol + 2
        if not line:
            break
        k, _, v = line.partition(":")
        trailers.append((k.strip().lower(), v.strip()))
    assert pos == len(raw), f"{len(raw) - pos} bytes after the trailer section"
    return body, trailers


def observe_trailers(t):
    p = subprocess.run(
        ["curl", "-sS", "--http1.1", "--raw", "-H", "TE: trailers", "-D", "-", "-m", "5", t.url("/trailers")],
        capture_output=True,
        timeout=10,
    )
    head, _, raw = p.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        fields.setdefault(k.strip().lower(), []).append(v.strip())
    body, trailers = parse_chunked(raw)
    obs = {
        "rc": p.returncode,
        "status": lines[0].split(" ")[1],
        "transfer_encoding": fields.get("transfer-encoding"),
        "body": body.decode(),
        "trailers": trailers,
    }
    return obs, fields, p.stderr.decode()


def test_05_curl_trailers(target, via, same_as_direct):
    t = target("raw")
    obs, fields, err = observe_trailers(t)
    assert obs["rc"] == 0 and obs["status"] == "200", (obs, err)
    assert obs["transfer_encoding"] == ["chunked"]
    assert obs["body"] == b"".join(backends.TRAILER_BODY).decode()
    assert obs["trailers"] == [(k.lower(), v) for k, v in backends.TRAILERS], (obs, fields)
    # The backend saw the client's TE: trailers (the one TE value a proxy forwards).
    assert fields.get("x-seen-te") == ["trailers"], fields
    same_as_direct(obs, lambda: observe_trailers(target("raw", "direct"))[0])


# ---- 6. websockets: echo and close handshakes ------------------------------------------------------------


def observe_websocket(t, env, tag):
    payload = bytes(range(256)) * 400  # 100 KiB, several frames' worth
    obs = {}
    # Client-initiated close with a code and reason.
    name = f"/echo/{tag}/client-close"
    with ws_connect(t.url(name, "ws"), open_timeout=5, close_timeout=5, max_size=4 << 20) as ws:
        ws.send("héllo, wörld")
        obs["text"] = ws.recv(timeout=5)
        ws.send(payload)
        got = ws.recv(timeout=5)
        obs["binary"] = [type(got).__name__, len(got), got == payload]
        ws.close(4001, "client done")
        obs["client_close"] = [ws.close_code, ws.close_reason]  # the server's answering close frame
    # Server-initiated close.
    name2 = f"/echo/{tag}/server-close"
    with ws_connect(t.url(name2, "ws"), open_timeout=5, close_timeout=5) as ws:
        ws.send("close-please")
        try:
            ws.recv(timeout=5)
            obs["server_close"] = "no close"
        except ConnectionClosed as e:
            obs["server_close"] = [e.rcvd.code, e.rcvd.reason] if e.rcvd else None
    # What the server saw of both closing handshakes (it records them once its side is closed).
    deadline = time.monotonic() + 5
    ws_seen = env.backends.seen.setdefault("ws", {})
    while time.monotonic() < deadline and not (name in ws_seen and name2 in ws_seen):
        time.sleep(0.05)
    obs["server_saw"] = [ws_seen.get(name), ws_seen.get(name2)]
    return obs


def test_06_websockets_echo_and_close(env, target, via, same_as_direct):
    t = target("websockets")
    obs = observe_websocket(t, env, via)
    assert obs["text"] == "héllo, wörld"
    assert obs["binary"] == ["bytes", 102400, True]
    assert obs["client_close"] == [4001, "client done"]
    assert obs["server_close"] == [4000, "server done"]
    assert obs["server_saw"] == [
        {"rcvd": [4001, "client done"], "sent": [4001, "client done"]},
        {"rcvd": [4000, "server done"], "sent": [4000, "server done"]},
    ]
    same_as_direct(obs, lambda: observe_websocket(target("websockets", "direct"), env, "direct-again"))


# ---- 7. aiohttp: 200 concurrent keep-alive GETs ------------------------------------------------------------

CONCURRENT = 200


async def concurrent_gets(url: str):
    created = 0

    async def on_create(session, ctx, params):
        nonlocal created
        created += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    conn = aiohttp.TCPConnector(limit=CONCURRENT, force_close=False)
    timeout = aiohttp.ClientTimeout(total=20)
    statuses, errors, new_conns = {}, [], []
    async with aiohttp.ClientSession(connector=conn, timeout=timeout, trace_configs=[trace]) as s:

        async def one():
            try:
                async with s.get(url) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
            except Exception as e:  # counted, and shown
                errors.append(repr(e))

        # Two rounds: the second must run on the first round's kept-alive connections.
        for _ in range(2):
            before = created
            await asyncio.gather(*(one() for _ in range(CONCURRENT)))
            new_conns.append(created - before)
    return {"statuses": statuses, "errors": errors[:5], "error_count": len(errors)}, new_conns


@pytest.mark.parametrize("backend", ["aiohttp", "demo-replica"])
def test_07_aiohttp_concurrent_keepalive(target, via, backend, same_as_direct):
    t = target(backend)
    path = "/hello" if backend == "aiohttp" else "/whoami"
    obs, new_conns = asyncio.run(concurrent_gets(t.url(path)))
    assert obs == {"statuses": {200: 2 * CONCURRENT}, "errors": [], "error_count": 0}
    # Keep-alive: the second round opened (almost) no new connection.
    assert new_conns[0] <= CONCURRENT and new_conns[1] <= 2, new_conns
    same_as_direct(obs, lambda: asyncio.run(concurrent_gets(target(backend, "direct").url(path)))[0])


# ---- 8. requests without Host ------------------------------------------------------------------------------


def raw_exchange(port: int, request: bytes, timeout: float = 5) -> bytes:
    """Sends request and reads until the server closes (the requests here ask it to)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def split_response(data: bytes):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        fields.setdefault(k.strip().lower(), []).append(v.strip())
    return lines[0], fields, body


def test_08_http10_without_host(target, via, note):
    t = target("raw")
    status_line, fields, body = split_response(raw_exchange(t.port, b"GET /host HTTP/1.0\r\nUser-Agent: raw\r\n\r\n"))
    assert status_line.split(" ")[1] == "200", (status_line, fields, body)
    seen = json.loads(body)
    note("backend_saw", seen)
    if via == "direct":
        assert seen["host"] == [], seen
    else:
        # RFC 9112 3.2 / 7230 5.4: the proxy must send a Host upstream; it builds one from the
        # address the client connected to.
        assert len(seen["host"]) == 1 and seen["host"][0], seen
    # Not compared with the direct run: the Host the backend sees differs by design.


@pytest.mark.sidecar_only
def test_08b_http11_without_host_is_400(target, via):
    """RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host. Asserted of the
    sidecar only: what a backend does is its own business (this suite's raw backend does not check,
    so the direct run only reports what it answered)."""
    t = target("raw")
    data = raw_exchange(t.port, b"GET /host HTTP/1.1\r\nUser-Agent: raw\r\nConnection: close\r\n\r\n")
    status_line, fields, body = split_response(data)
    if via == "direct":
        pytest.skip(f"sidecar-only case; the raw backend answered {status_line!r} (it does not check Host)")
    assert status_line.startswith("HTTP/1.1 400"), (status_line, fields, body)
    assert fields.get("x-datastream-error") == ["bad-request"], fields


# ---- 9. many and large response fields -------------------------------------------------------------------


@pytest.fixture
def big_heads(monkeypatch):
    # http.client (under requests/urllib3) refuses a response with more than 100 fields
    # (_MAXHEADERS: "got more than 100 headers") and a field line over 64 KiB (_MAXLINE:
    # LineTooLong) by itself, before any proxy is involved. These are limits of the client
    # library, raised here so that the case tests the sidecar, not http.client.
    monkeypatch.setattr(http.client, "_MAXHEADERS", 1000)
    monkeypatch.setattr(http.client, "_MAXLINE", 1 << 20)


def observe_cookies(t):
    r = requests.get(t.url("/cookies"), timeout=5)
    return {
        "status": r.status_code,
        "set_cookie": r.raw.headers.getlist("Set-Cookie"),
        "jar": sorted(r.cookies.keys()),
        "body": r.text,
    }


def test_09_requests_150_set_cookie(big_heads, target, via, same_as_direct):
    t = target("raw")
    obs = observe_cookies(t)
    want = [f"c{i:03d}=v{i:03d}; Path=/" for i in range(backends.COOKIES)]
    assert obs["status"] == 200, obs
    assert obs["set_cookie"] == want
    assert obs["jar"] == sorted(f"c{i:03d}" for i in range(backends.COOKIES))
    same_as_direct(obs, lambda: observe_cookies(target("raw", "direct")))


def observe_big_header(t):
    r = requests.get(t.url("/big-header"), timeout=5)
    value = r.headers.get("X-Big", "")
    return {
        "status": r.status_code,
        "x_big_len": len(value),
        "x_big_ok": value == backends.big_header_value(),
        "body": r.text,
    }


def test_09b_requests_100k_header(big_heads, target, via, same_as_direct):
    t = target("raw")
    obs = observe_big_header(t)
    assert obs == {"status": 200, "x_big_len": backends.BIG_HEADER_BYTES, "x_big_ok": True, "body": "big\n"}, obs
    same_as_direct(obs, lambda: observe_big_header(target("raw", "direct")))
