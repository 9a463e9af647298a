//! Timeouts that fit streams, and the caller's deadline, against real loopback backends: a
//! request timeout that counts from the end of the request body (uploads and client streams
//! slower than it complete), streaming responses that outlive it, the stream idle timeout that
//! bounds a stall instead, the caller's `grpc-timeout` forwarded as the caller's, and the
//! sidecar's own errors answered to gRPC clients in gRPC's terms. Each case that can also runs
//! directly against the backend, so a difference is the proxy's.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use datastream_resilience::deadline::parse_grpc_timeout;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::{Backend, h1_client, h2_client, refusing_addr, sidecar, try_get};
use tokio::time::Instant;

type StreamingClient = Client<HttpConnector, BoxBody<Bytes, Infallible>>;

fn streaming_client(h2: bool) -> StreamingClient {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build(c)
}

/// A body of `chunks` chunks of `size` bytes, `gap` apart, then (if `stall`) silence.
fn slow_body(chunks: usize, size: usize, gap: Duration, stall: bool) -> BoxBody<Bytes, Infallible> {
    let frames = futures::stream::unfold(0usize, move |i| async move {
        if i == chunks {
            if stall {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            return None;
        }
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        Some((Ok(Frame::data(Bytes::from(vec![b'x'; size]))), i + 1))
    });
    BodyExt::boxed(StreamBody::new(frames))
}

/// Uploads a slow body to `addr` and returns the status, headers and answer.
async fn upload(
    client: &StreamingClient,
    addr: SocketAddr,
    body: BoxBody<Bytes, Infallible>,
) -> (StatusCode, HeaderMap, String) {
    let req = Request::post(format!("http://{addr}/upload"))
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("an answer within 30 s")
        .expect("an HTTP answer");
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// An upload that takes four times the request timeout completes, over HTTP/1.1 and HTTP/2,
/// exactly as it does directly: the request timeout starts at the end of the body.
#[tokio::test]
async fn uploads_slower_than_the_request_timeout_complete() {
    let backend = Backend::start("r0").await;
    let proxy = sidecar(
        "failover: { requestTimeout: 300ms, connectTimeout: 200ms, streamIdleTimeout: 5s }",
        &[backend.spec()],
    )
    .await;
    for h2 in [false, true] {
        let client = streaming_client(h2);
        let body = || slow_body(8, 64 * 1024, Duration::from_millis(150), false);
        let direct = upload(&client, backend.addr, body()).await;
        assert_eq!(direct.0, StatusCode::OK);
        let started = Instant::now();
        let proxied = upload(&client, proxy.traffic_addr(), body()).await;
        assert!(
            started.elapsed() > Duration::from_secs(1),
            "the upload was slow"
        );
        assert_eq!(
            (proxied.0, proxied.2.as_str()),
            (direct.0, direct.2.as_str()),
            "h2={h2}: {:?}",
            proxied.1
        );
        assert_eq!(proxied.2, (8 * 64 * 1024).to_string());
    }
}

/// A response that streams for longer than the request timeout is not cut once its headers
/// are out.
#[tokio::test]
async fn streaming_responses_outlive_the_request_timeout() {
    let backend = Backend::start("r0").await;
    let proxy = sidecar(
        "failover: { requestTimeout: 300ms, connectTimeout: 200ms }",
        &[backend.spec()],
    )
    .await;
    for client in [h1_client(), h2_client()] {
        let direct = try_get(&client, backend.addr, "/drip/6/200", &[])
            .await
            .unwrap();
        let proxied = try_get(&client, proxy.traffic_addr(), "/drip/6/200", &[])
            .await
            .unwrap();
        assert_eq!(proxied.status, StatusCode::OK);
        assert_eq!(proxied.body, direct.body);
        assert_eq!(proxied.body.lines().count(), 6);
    }
}

/// A client that stops sending its body is not held for ever: after the stream idle timeout
/// it gets 408 `stream-idle-timeout`, and the request timeout never fired (it had not
/// started).
#[tokio::test]
async fn a_stalled_upload_ends_at_the_stream_idle_timeout() {
    let backend = Backend::start("r0").await;
    let proxy = sidecar(
        "failover: { requestTimeout: 200ms, connectTimeout: 200ms, streamIdleTimeout: 700ms }",
        &[backend.spec()],
    )
    .await;
    for h2 in [false, true] {
        let client = streaming_client(h2);
        let started = Instant::now();
        let body = slow_body(2, 1024, Duration::from_millis(50), true);
        let (status, headers, _) = upload(&client, proxy.traffic_addr(), body).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "h2={h2}: {headers:?}");
        assert_eq!(headers["x-datastream-error"], "stream-idle-timeout");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(700) && took < Duration::from_secs(10),
            "{took:?}"
        );
    }
}

/// The caller's deadline is forwarded as the caller's, even when the sidecar's own timeout is
/// shorter; a request without one gets none (the sidecar's own is never advertised).
#[tokio::test]
async fn the_callers_deadline_is_forwarded_as_the_callers() {
    let backend = Backend::start("r0").await;
    let proxy = sidecar("failover: { requestTimeout: 2s }", &[backend.spec()]).await;
    let client = h2_client();
    let a = try_get(
        &client,
        proxy.traffic_addr(),
        "/",
        &[("grpc-timeout", "60S")],
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    let seen = backend.last_headers.lock().clone().unwrap();
    let forwarded = parse_grpc_timeout(seen["grpc-timeout"].as_bytes()).unwrap();
    assert!(
        forwarded > Duration::from_secs(55) && forwarded <= Duration::from_secs(60),
        "{forwarded:?}"
    );
    let a = try_get(&client, proxy.traffic_addr(), "/", &[])
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    let seen = backend.last_headers.lock().clone().unwrap();
    assert!(seen.get("grpc-timeout").is_none(), "{seen:?}");
    assert!(seen.get("x-datastream-deadline-ms").is_none(), "{seen:?}");
    // A shorter caller deadline binds, and reaches the workload shortened by the time spent.
    let a = try_get(
        &client,
        proxy.traffic_addr(),
        "/",
        &[("x-datastream-deadline-ms", "900")],
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    let seen = backend.last_headers.lock().clone().unwrap();
    let ms: u64 = seen["x-datastream-deadline-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms <= 900 && ms > 500, "{ms}");
}

async fn grpc_call(addr: SocketAddr, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    let client = h2_client();
    let req = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let resp = client.request(req).await.expect("an HTTP/2 answer");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// The sidecar's own errors reach gRPC clients as gRPC statuses in trailers-only form (HTTP
/// 200, `application/grpc`, `grpc-status` in the only header block), with the same
/// `x-datastream-error` code plain clients get.
#[tokio::test]
async fn grpc_clients_get_grpc_statuses_for_the_sidecars_errors() {
    let backend = Backend::start("r0").await;
    // Its own deadline: DEADLINE_EXCEEDED.
    let proxy = sidecar(
        "failover: { requestTimeout: 300ms, connectTimeout: 200ms }",
        &[backend.spec()],
    )
    .await;
    let (status, h, body) = grpc_call(proxy.traffic_addr(), "/slow/3000").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["grpc-status"], "4", "{h:?}");
    assert_eq!(h["x-datastream-error"], "timeout");
    assert!(h["grpc-message"].to_str().unwrap().starts_with("timeout"));
    assert!(body.is_empty());
    // A plain client on the same route still gets 504.
    let plain = try_get(&h2_client(), proxy.traffic_addr(), "/slow/3000", &[])
        .await
        .unwrap();
    assert_eq!(plain.status, StatusCode::GATEWAY_TIMEOUT);
    // No replica to reach: UNAVAILABLE.
    let (_hold, dead) = refusing_addr();
    let spec = datastream_lb::endpoint::EndpointSpec {
        addr: dead,
        name: "dead".into(),
        local: false,
        serving: true,
    };
    let proxy = sidecar("{}", &[spec]).await;
    let (status, h, _) = grpc_call(proxy.traffic_addr(), "/svc/Method").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["grpc-status"], "14", "{h:?}");
    assert_eq!(h["x-datastream-error"], "upstream-connect-failed");
    // Rate limited: RESOURCE_EXHAUSTED, with gRPC's retry pushback.
    let proxy = sidecar(
        "limits: { rateLimit: { requestsPerSecond: 1, burst: 1 } }",
        &[backend.spec()],
    )
    .await;
    let (_, first, _) = grpc_call(proxy.traffic_addr(), "/").await;
    assert!(first.get("grpc-status").is_none(), "{first:?}");
    let (status, h, _) = grpc_call(proxy.traffic_addr(), "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["grpc-status"], "8", "{h:?}");
    assert_eq!(h["x-datastream-error"], "rate-limited");
    assert!(h.contains_key("grpc-retry-pushback-ms"));
}
