//! The proxy rules of RFC 9110 (HTTP semantics), RFC 9112 (HTTP/1.1) and RFC 9113 section 8
//! (HTTP/2 <-> HTTP/1.1) that apply to the sidecar as a gateway, one test per rule or defect,
//! against real loopback backends (hyper servers, or raw sockets where a backend must misbehave)
//! and with raw HTTP/1 bytes or hyper clients. The list of rules and the decision on each is in
//! docs/sidecar.md ("HTTP conformance").

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use support::{Backend, h2_client, raw, raw_status, sidecar};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// RFC 9110 9.3.2: a response to HEAD has no content. An HTTP/2 backend that sends some anyway
/// (hyper's HTTP/2 server does) must not turn a good answer into a reset stream: the client
/// gets the headers, the length a GET would get, and no body, as directly over HTTP/1.1.
#[tokio::test]
async fn a_head_answer_has_no_content_whatever_the_upstream_sends() {
    let backend = Backend::start("r0").await;
    let proxy = sidecar("{}", &[backend.spec()]).await;
    let client = h2_client();
    let req = Request::builder()
        .method(Method::HEAD)
        .uri(format!("http://{}/", proxy.traffic_addr()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap()
        .expect("an answer, not a reset stream");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-backend"], "r0");
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("a clean end")
        .to_bytes();
    assert!(body.is_empty());
}

// ---- raw backends ------------------------------------------------------------------------------

/// A backend that records every request head it gets and answers each with `answer`.
struct Scripted {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    async fn start(answer: &'static [u8]) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            seen.lock()
                                .push(String::from_utf8_lossy(&head).into_owned());
                            if s.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Scripted { addr, heads }
    }

    fn spec(&self) -> datastream_lb::endpoint::EndpointSpec {
        self.named("scripted")
    }

    fn named(&self, name: &str) -> datastream_lb::endpoint::EndpointSpec {
        datastream_lb::endpoint::EndpointSpec {
            addr: self.addr,
            name: name.into(),
            local: false,
            serving: true,
        }
    }

    fn last(&self) -> String {
        self.heads.lock().last().cloned().unwrap_or_default()
    }

    fn count(&self) -> usize {
        self.heads.lock().len()
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
const WAIT: Duration = Duration::from_secs(3);

/// RFC 9112 3.2: an HTTP/1.1 request without Host gets 400 and goes nowhere.
#[tokio::test]
async fn an_http11_request_without_host_is_refused() {
    let backend = Scripted::start(OK).await;
    let proxy = sidecar("{}", &[backend.spec()]).await;
    let out = raw(proxy.traffic_addr(), b"GET / HTTP/1.1\r\n\r\n", WAIT).await;
    assert_eq!(raw_status(&out), Some(400), "{out}");
    assert!(out.contains("x-datastream-error: bad-request"), "{out}");
    assert_eq!(backend.count(), 0);
}

/// RFC 9112 3.3 and 7.2: an HTTP/1.0 request without Host goes upstream as HTTP/1.1 with the
/// authority of the connection it came on (backends answer an HTTP/1.1 request without Host 400).
#[tokio::test]
async fn an_http10_request_without_host_gets_the_connections_authority() {
    let backend = Scripted::start(OK).await;
    let proxy = sidecar("{}", &[backend.spec()]).await;
    let out = raw(proxy.traffic_addr(), b"GET /p HTTP/1.0\r\n\r\n", WAIT).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let head = backend.last();
    assert!(head.starts_with("GET /p HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("host: {}\r\n", proxy.traffic_addr())),
        "{head}"
    );
}

/// RFC 9112 3.2.2: with an absolute-form target, Host is rebuilt from the target and the
/// request line takes the origin form (an empty path becomes "/").
#[tokio::test]
async fn an_absolute_form_target_sets_host() {
    let backend = Scripted::start(OK).await;
    let proxy = sidecar("{}", &[backend.spec()]).await;
    let out = raw(
        proxy.traffic_addr(),
        b"GET http://target.example:8080?x=1 HTTP/1.1\r\nHost: other.example\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let head = backend.last();
    assert!(
        head.starts_with("GET /?x=1 HTTP/1.1\r\nhost: target.example:8080\r\n"),
        "{head}"
    );
    assert!(!head.contains("other.example"), "{head}");
}

/// Query bytes that curl and others send unencoded (`"`, `<`, `>`) reach the replica
/// percent-encoded instead of being refused.
#[tokio::test]
async fn unencoded_query_bytes_are_forwarded_encoded() {
    let backend = Scripted::start(OK).await;
    let proxy = sidecar("{}", &[backend.spec()]).await;
    let out = raw(
        proxy.traffic_addr(),
        b"GET /s?q=\"a\"<b> HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        backend
            .last()
            .starts_with("GET /s?q=%22a%22%3Cb%3E HTTP/1.1\r\n")
    );
}

/// RFC 9110 7.6.3 and 10.1.4: the request carries the sidecar in Via, and a forwarded
/// `TE: trailers` is named in Connection towards an HTTP/1.1 hop; `Expect: 100-continue` is
/// answered by the sidecar and not forwarded.
#[tokio::test]
async fn via_te_and_expect_are_handled_as_an_intermediary() {
    let backend = Scripted::start(OK).await;
    let proxy = sidecar("{}", &[backend.spec()]).await;
    let out = raw(
        proxy.traffic_addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 edge\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let head = backend.last();
    // RFC 9110 5.3: lines of one field keep their order; lines of other fields may come between.
    let edge = head.find("\r\nvia: 1.1 edge\r\n");
    let own = head.find("\r\nvia: 1.1 datastream\r\n");
    assert!(matches!((edge, own), (Some(e), Some(o)) if e < o), "{head}");
    assert!(head.contains("te: trailers\r\n"), "{head}");
    assert!(head.contains("connection: te\r\n"), "{head}");
    let out = raw(
        proxy.traffic_addr(),
        b"PUT /k HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        WAIT,
    )
    .await;
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    assert!(
        !backend.last().to_ascii_lowercase().contains("expect"),
        "{}",
        backend.last()
    );
}

/// RFC 9110 7.6.2 and 9.1: OPTIONS with `Max-Forwards: 0` is answered by the sidecar, a
/// larger value is decremented; TRACE and CONNECT are not implemented (501).
#[tokio::test]
async fn max_forwards_trace_and_connect() {
    let backend = Scripted::start(OK).await;
    let proxy = sidecar("{}", &[backend.spec()]).await;
    let out = raw(
        proxy.traffic_addr(),
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(raw_status(&out), Some(200), "{out}");
    assert_eq!(backend.count(), 0);
    let out = raw(
        proxy.traffic_addr(),
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\nMax-Forwards: 3\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(raw_status(&out), Some(200), "{out}");
    let head = backend.last();
    assert!(head.starts_with("OPTIONS * HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("max-forwards: 2\r\n"), "{head}");
    for req in [
        &b"TRACE / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"[..],
        b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
    ] {
        let out = raw(proxy.traffic_addr(), req, WAIT).await;
        assert_eq!(raw_status(&out), Some(501), "{out}");
    }
    assert_eq!(backend.count(), 1);
}

/// RFC 9112 3: a request-target longer than the sidecar parses gets 414.
#[tokio::test]
async fn an_overlong_target_gets_414() {
    let backend = Scripted::start(OK).await;
    let proxy = sidecar("{}", &[backend.spec()]).await;
    let req = format!(
        "GET /{} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    let out = raw(proxy.traffic_addr(), req.as_bytes(), WAIT).await;
    assert_eq!(raw_status(&out), Some(414), "{out}");
}

/// RFC 9110 15.2: 1xx answers are forwarded to HTTP/1.1 clients, on the sidecar's own client
/// (GET) and on hyper's (a streamed POST), and never to HTTP/1.0 clients.
#[tokio::test]
async fn early_hints_are_forwarded_to_http11_clients() {
    const HINTS: &[u8] = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let backend = Scripted::start(HINTS).await;
    let proxy = sidecar("{}", &[backend.spec()]).await;
    let requests: [&[u8]; 2] = [
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    ];
    for req in requests {
        let out = raw(proxy.traffic_addr(), req, WAIT).await;
        assert!(out.starts_with("HTTP/1.1 103 Early Hints\r\n"), "{out}");
        assert!(out.contains("link: </a.css>; rel=preload\r\n"), "{out}");
        let last = out.rfind("HTTP/1.1 200 OK").expect("the final answer");
        assert!(last > 0 && out.ends_with("ok"), "{out}");
    }
    let out = raw(proxy.traffic_addr(), b"GET / HTTP/1.0\r\n\r\n", WAIT).await;
    assert!(
        out.starts_with("HTTP/1.1 200 OK"),
        "no 1xx to HTTP/1.0: {out}"
    );
}

/// RFC 9112 6.1 and 6.3: a response with Transfer-Encoding and Content-Length is forwarded
/// by its chunked coding without the length; codings the sidecar cannot re-frame, and lengths
/// that are not one plain number, are 502.
#[tokio::test]
async fn upstream_framing_is_repaired_or_refused() {
    let both = Scripted::start(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 100\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let proxy = sidecar("{}", &[both.spec()]).await;
    let out = raw(
        proxy.traffic_addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(!out.contains("content-length: 100"), "{out}");
    assert!(out.contains("hello"), "{out}");
    for bad in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nxxxx"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
        b"HTTP/1.1 600 Odd\r\ncontent-length: 2\r\n\r\nok",
    ] {
        let leaked: &'static [u8] = Box::leak(bad.to_vec().into_boxed_slice());
        let backend = Scripted::start(leaked).await;
        let proxy = sidecar("failover: { retries: { attempts: 0 } }", &[backend.spec()]).await;
        let out = raw(
            proxy.traffic_addr(),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            WAIT,
        )
        .await;
        assert_eq!(
            raw_status(&out),
            Some(502),
            "{}: {out}",
            String::from_utf8_lossy(bad)
        );
    }
}

/// Response heads as large as clients accept are relayed: 130 `Set-Cookie` fields, a 100 KiB
/// head. A head over the limit is 502 `upstream-header-too-large`, which is no failure of the
/// replica's: five of them in a row do not eject it.
#[tokio::test]
async fn large_response_heads_are_relayed_and_oversized_ones_do_not_eject() {
    let mut cookies = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..130 {
        cookies.push_str(&format!("set-cookie: c{i}=v{i}; Path=/\r\n"));
    }
    cookies.push_str("content-length: 2\r\n\r\nok");
    let cookies: &'static [u8] = Box::leak(cookies.into_bytes().into_boxed_slice());
    let backend = Scripted::start(cookies).await;
    let proxy = sidecar("{}", &[backend.spec()]).await;
    let out = raw(
        proxy.traffic_addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(out.matches("set-cookie: ").count(), 130);

    let big = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
        "v".repeat(100 * 1024)
    );
    let big: &'static [u8] = Box::leak(big.into_bytes().into_boxed_slice());
    let backend = Scripted::start(big).await;
    let proxy = sidecar("{}", &[backend.spec()]).await;
    let out = raw(
        proxy.traffic_addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "{}",
        &out[..out.len().min(200)]
    );

    let huge = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
        "v".repeat(200 * 1024)
    );
    let huge: &'static [u8] = Box::leak(huge.into_bytes().into_boxed_slice());
    let backend = Scripted::start(huge).await;
    let ok = Scripted::start(OK).await;
    // Primary routing keeps every request on the oversized replica while it is eligible.
    let proxy = sidecar(
        "routes: [{ name: all, mode: primary }]",
        &[backend.named("a-huge"), ok.named("b-ok")],
    )
    .await;
    for _ in 0..6 {
        let out = raw(
            proxy.traffic_addr(),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            WAIT,
        )
        .await;
        assert_eq!(
            raw_status(&out),
            Some(502),
            "{}",
            &out[..out.len().min(300)]
        );
        assert!(
            out.contains("x-datastream-error: upstream-header-too-large"),
            "{out}"
        );
    }
    assert_eq!(ok.count(), 0, "the replica was not ejected");
}

/// RFC 9110 6.5.1 and RFC 9112 7.1.2: trailers from an HTTP/2 upstream reach an HTTP/1.1
/// client that accepts them even when the answer also carries a length: the sidecar sends it
/// chunked (the only HTTP/1.1 framing with trailers) instead of by its `Content-Length`.
#[tokio::test]
async fn trailers_of_an_http2_answer_with_a_length_reach_http11_clients() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("x-checksum", "abc".parse().unwrap());
                    let frames = futures::stream::iter([
                        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(
                            b"hello",
                        ))),
                        Ok(Frame::trailers(trailers)),
                    ]);
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .header("content-length", "5")
                            .body(StreamBody::new(frames))
                            .unwrap(),
                    )
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
            });
        }
    });
    let spec = datastream_lb::endpoint::EndpointSpec {
        addr,
        name: "h2".into(),
        local: false,
        serving: true,
    };
    let proxy = sidecar("upstreamProtocol: http2", &[spec]).await;
    let out = raw(
        proxy.traffic_addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("transfer-encoding: chunked\r\n"), "{out}");
    assert!(!out.contains("content-length"), "{out}");
    assert!(
        out.ends_with("5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n"),
        "{out:?}"
    );
    // Without `TE: trailers` the length stays and the trailers are dropped (allowed).
    let out = raw(
        proxy.traffic_addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(out.contains("content-length: 5\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nhello"), "{out:?}");
}

/// RFC 9113 8.2.1: an HTTP/2 field value with leading or trailing whitespace (which HTTP/1
/// parsers would trim) is not forwarded: 400.
#[tokio::test]
async fn http2_values_with_outer_whitespace_are_refused() {
    let backend = Scripted::start(OK).await;
    let proxy = sidecar("{}", &[backend.spec()]).await;
    let req = Request::get(format!("http://{}/", proxy.traffic_addr()))
        .header("x-a", http::HeaderValue::from_static(" v"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h2_client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(backend.count(), 0);
}

/// RFC 9110 15.5.22: a 426 names the protocols to upgrade to; its `Upgrade` field survives the
/// hop-by-hop rules.
#[tokio::test]
async fn a_426_keeps_its_upgrade_field() {
    let backend = Scripted::start(
        b"HTTP/1.1 426 Upgrade Required\r\nupgrade: h2c\r\nconnection: upgrade\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    let proxy = sidecar("{}", &[backend.spec()]).await;
    let out = raw(
        proxy.traffic_addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(raw_status(&out), Some(426), "{out}");
    assert!(out.contains("upgrade: h2c\r\n"), "{out}");
}

/// RFC 9110 15.2 over HTTP/2: a replica's `103 Early Hints` reaches an HTTP/2 client ahead of
/// the final answer (the sidecar's own HTTP/2 server sends interim responses; hyper's could
/// not), and a client that sends `Expect: 100-continue` gets `100 Continue` once the sidecar
/// reads its body. Driven with the `h2` crate's client, which reports interim responses.
#[tokio::test]
async fn interim_answers_reach_http2_clients() {
    const HINTS: &[u8] = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let backend = Scripted::start(HINTS).await;
    let proxy = sidecar("upstreamProtocol: http1", &[backend.spec()]).await;
    let tcp = tokio::net::TcpStream::connect(proxy.traffic_addr())
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = Request::get(format!("http://{}/", proxy.traffic_addr()))
        .body(())
        .unwrap();
    let (mut resp, _) = client.send_request(req, true).unwrap();
    let hint = std::future::poll_fn(|cx| resp.poll_informational(cx))
        .await
        .expect("an interim response")
        .unwrap();
    assert_eq!(hint.status(), StatusCode::EARLY_HINTS);
    assert_eq!(hint.headers()["link"], "</a.css>; rel=preload");
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Expect: 100-continue over HTTP/2.
    let backend = Scripted::start(OK).await;
    let proxy = sidecar("upstreamProtocol: http1", &[backend.spec()]).await;
    let tcp = tokio::net::TcpStream::connect(proxy.traffic_addr())
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = Request::put(format!("http://{}/k", proxy.traffic_addr()))
        .header("expect", "100-continue")
        .header("content-length", "2")
        .body(())
        .unwrap();
    let (mut resp, mut body) = client.send_request(req, false).unwrap();
    let go = tokio::time::timeout(
        Duration::from_secs(5),
        std::future::poll_fn(|cx| resp.poll_informational(cx)),
    )
    .await
    .expect("100 Continue before the body is sent")
    .expect("an interim response")
    .unwrap();
    assert_eq!(go.status(), StatusCode::CONTINUE);
    body.send_data(Bytes::from_static(b"hi"), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
    assert!(!backend.last().to_ascii_lowercase().contains("expect"));
}

/// A replica's fields reach the client as the replica sent them, whichever way the sidecar
/// relays them: as bytes to HTTP/1.1 and HTTP/1.0 clients (the replica's spelling kept, one
/// `Content-Length`, its own `Date`, repeated fields in order, keep-alive working), through a
/// header map to HTTP/2 clients. A connection-specific field sends the answer through the map,
/// which removes it.
#[tokio::test]
async fn response_fields_reach_every_client_as_the_replica_sent_them() {
    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nX-Replica: r1\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\nDate: Mon, 07 Dec 2026 00:00:00 GMT\r\nset-cookie: b=2\r\n\r\nhello";
    let backend = Scripted::start(ANSWER).await;
    let proxy = sidecar("upstreamProtocol: http1", &[backend.spec()]).await;
    let out = raw(
        proxy.traffic_addr(),
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    let answers: Vec<&str> = out.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(answers.len(), 2, "two answers on one connection: {out}");
    for answer in answers {
        let (head, body) = answer.split_once("\r\n\r\n").expect("a whole head");
        assert_eq!(body, "hello", "{out}");
        let lines: Vec<&str> = head.split("\r\n").collect();
        let replica: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| !l.starts_with("connection:"))
            .collect();
        assert_eq!(
            replica,
            [
                "X-Replica: r1",
                "Content-Length: 5",
                "Set-Cookie: a=1",
                "Date: Mon, 07 Dec 2026 00:00:00 GMT",
                "set-cookie: b=2"
            ],
            "{out}"
        );
    }
    assert!(out.contains("\r\nconnection: close\r\n"), "{out}");

    let out = raw(
        proxy.traffic_addr(),
        b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(out.contains("\r\nX-Replica: r1\r\n"), "{out}");
    assert!(out.contains("\r\nconnection: keep-alive\r\n"), "{out}");
    assert_eq!(out.matches("Content-Length: 5").count(), 1, "{out}");
    assert!(out.ends_with("\r\n\r\nhello"), "{out}");

    let client = h2_client();
    let resp = client
        .request(
            Request::get(format!("http://{}/", proxy.traffic_addr()))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(h["x-replica"], "r1");
    assert_eq!(h["content-length"], "5");
    assert_eq!(h["date"], "Mon, 07 Dec 2026 00:00:00 GMT");
    let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "hello"
    );

    const HOP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive, x-secret\r\nx-secret: 1\r\nx-kept: 2\r\n\r\nok";
    let backend = Scripted::start(HOP).await;
    let proxy = sidecar("upstreamProtocol: http1", &[backend.spec()]).await;
    let out = raw(
        proxy.traffic_addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("\r\nx-kept: 2\r\n"), "{out}");
    for gone in ["keep-alive:", "x-secret", "connection: keep-alive"] {
        assert!(!lower.contains(gone), "{gone}: {out}");
    }
}

/// A replica that answers 503 with `Retry-After` is paused for that long: the field is read
/// from an answer whose fields were kept as bytes for an HTTP/1 client. Round robin would
/// otherwise send it every other request.
#[tokio::test]
async fn an_upstream_retry_after_pauses_its_replica() {
    const BUSY: &[u8] =
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 60\r\nContent-Length: 4\r\n\r\nbusy";
    let busy = Scripted::start(BUSY).await;
    let fine = Scripted::start(OK).await;
    let proxy = sidecar(
        "{ loadBalancing: { policy: round-robin }, failover: { retries: { attempts: 0 } } }",
        &[busy.named("busy"), fine.named("fine")],
    )
    .await;
    let request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let mut first_busy = None;
    for _ in 0..4 {
        let out = raw(proxy.traffic_addr(), request, WAIT).await;
        if raw_status(&out) == Some(503) {
            let lower = out.to_ascii_lowercase();
            assert!(lower.contains("\r\nretry-after: 60\r\n"), "{out}");
            first_busy = Some(out);
            break;
        }
    }
    assert!(first_busy.is_some(), "round robin reached the busy replica");
    assert_eq!(busy.count(), 1);
    for _ in 0..10 {
        let out = raw(proxy.traffic_addr(), request, WAIT).await;
        assert_eq!(raw_status(&out), Some(200), "{out}");
    }
    assert_eq!(busy.count(), 1, "the paused replica got no more requests");
}
