//! Protocols through the sidecar: HTTP/2 and gRPC-style streaming with trailers, WebSocket
//! upgrades, header rewriting, the peer listener, and the admin API.

mod support;

use std::time::Duration;

use bytes::Bytes;
use datastream_lb::endpoint::EndpointSpec;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn http2_grpc_style_streams_both_ways_with_trailers() {
    let bs = backends(1).await;
    let sc = sidecar("{}", &[bs[0].spec()]).await;
    let stream = TcpStream::connect(sc.traffic_addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let body = StreamBody::new(tokio_stream_from(rx));
    let req = Request::post("http://test/echo")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let mut body = resp.into_body();
    // Each message comes back before the next is sent: nothing is buffered in either direction.
    for i in 0..3 {
        let msg = format!("message-{i}");
        tx.send(Ok(Frame::data(Bytes::from(msg.clone()))))
            .await
            .unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(2), body.frame())
            .await
            .expect("echo arrives while the request is still open")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from(msg));
    }
    drop(tx);
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if frame.is_trailers() {
            trailers = frame.into_trailers().ok();
        }
    }
    let trailers = trailers.expect("trailers forwarded");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-replica"], "r0");
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn http2_prior_knowledge_requests_are_balanced() {
    let bs = backends(2).await;
    let specs: Vec<_> = bs.iter().map(|b| b.spec()).collect();
    let sc = sidecar("loadBalancing: { policy: round-robin }", &specs).await;
    let client = h2_client();
    for _ in 0..10 {
        let a = get(&client, sc.traffic_addr(), "/", &[]).await;
        assert_eq!(a.status, 200);
    }
    assert_eq!(bs[0].count(), 5);
    assert_eq!(bs[1].count(), 5);
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled() {
    let bs = backends(1).await;
    let sc = sidecar("{}", &[bs[0].spec()]).await;
    let mut s = TcpStream::connect(sc.traffic_addr()).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in ["hello", "world"] {
        s.write_all(msg.as_bytes()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], format!("echo:{msg}").as_bytes());
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_forwarding_headers_appended() {
    let bs = backends(1).await;
    let sc = sidecar("{}", &[bs[0].spec()]).await;
    let client = h1_client();
    let a = get(
        &client,
        sc.traffic_addr(),
        "/headers",
        &[
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("proxy-connection", "keep-alive"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-kept", "yes"),
        ],
    )
    .await;
    let body = a.body;
    assert!(
        body.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1"),
        "{body}"
    );
    assert!(
        body.contains("forwarded: for=127.0.0.1;proto=http"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
    assert!(body.contains("x-kept: yes"), "{body}");
    assert!(!body.contains("x-secret"), "{body}");
    assert!(!body.contains("proxy-connection"), "{body}");
    // The backend's keep-alive header does not reach the client.
    assert!(a.headers.get("keep-alive").is_none());
}

#[tokio::test]
async fn peer_listener_delivers_only_to_the_local_workload() {
    let bs = backends(3).await;
    let mut specs: Vec<EndpointSpec> = bs.iter().map(|b| b.spec()).collect();
    specs[1].local = true;
    let sc = sidecar("loadBalancing: { policy: round-robin }", &specs).await;
    let client = h1_client();
    let peer = sc.peer_addr().unwrap();
    for _ in 0..10 {
        assert_eq!(get(&client, peer, "/", &[]).await.backend(), "r1");
    }
    assert_eq!(bs[0].count() + bs[2].count(), 0);
    // Without a local workload the peer listener refuses rather than routing onwards.
    let remote: Vec<_> = specs.iter().filter(|s| !s.local).cloned().collect();
    sc.shared().set_endpoints(&remote);
    let a = get(&client, peer, "/", &[]).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.headers["x-datastream-error"], "no-local-workload");
}

#[tokio::test]
async fn admin_api_reports_readiness_config_endpoints_and_metrics() {
    let bs = backends(2).await;
    let specs: Vec<_> = bs.iter().map(|b| b.spec()).collect();
    let sc = sidecar("loadBalancing: { policy: p2c-ewma }", &specs).await;
    let client = h1_client();
    for _ in 0..4 {
        get(&client, sc.traffic_addr(), "/", &[]).await;
    }
    let admin = sc.admin_addr();
    assert_eq!(get(&client, admin, "/live", &[]).await.status, 200);
    assert_eq!(get(&client, admin, "/ready", &[]).await.status, 200);
    let cfg: serde_json::Value =
        serde_json::from_str(&get(&client, admin, "/config", &[]).await.body).unwrap();
    assert_eq!(cfg["version"], 1);
    assert_eq!(cfg["traffic"]["loadBalancing"]["policy"], "p2c-ewma");
    let eps: serde_json::Value =
        serde_json::from_str(&get(&client, admin, "/endpoints", &[]).await.body).unwrap();
    let list = eps["endpoints"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    for e in list {
        assert_eq!(e["eligibility"]["state"], "eligible");
        assert!(e["ewmaMs"].as_f64().unwrap() > 0.0);
        assert!(e["cost"].is_number());
    }
    let samples: u64 = list.iter().map(|e| e["samples"].as_u64().unwrap()).sum();
    assert_eq!(samples, 4);
    let metrics = get(&client, admin, "/metrics", &[]).await.body;
    assert!(
        metrics.contains("datastream_sidecar_endpoint_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("datastream_sidecar_responses_total{listener=\"traffic\",route=\"default\",class=\"2xx\"} 4"), "{metrics}");
    // A dead endpoint shows why it is not eligible.
    bs[0].kill();
    for _ in 0..4 {
        assert_eq!(get(&client, sc.traffic_addr(), "/", &[]).await.status, 200);
    }
    let eps: serde_json::Value =
        serde_json::from_str(&get(&client, admin, "/endpoints", &[]).await.body).unwrap();
    let dead = eps["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "r0")
        .unwrap();
    assert_eq!(dead["eligibility"]["state"], "down", "{eps}");
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_reused() {
    let bs = backends(1).await;
    let sc = sidecar("{}", &[bs[0].spec()]).await;
    let client = h1_client();
    for _ in 0..50 {
        assert_eq!(get(&client, sc.traffic_addr(), "/", &[]).await.status, 200);
    }
    assert_eq!(
        bs[0].connections.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let addr = sc.traffic_addr();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let client = h1_client();
                for _ in 0..20 {
                    assert_eq!(get(&client, addr, "/slow/1", &[]).await.status, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let conns = bs[0].connections.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        conns <= 9,
        "{conns} upstream connections for 8 concurrent clients"
    );
    // HTTP/2 clients share one upstream HTTP/2 connection.
    let h2 = h2_client();
    for _ in 0..20 {
        assert_eq!(get(&h2, addr, "/", &[]).await.status, 200);
    }
    assert_eq!(
        bs[0].connections.load(std::sync::atomic::Ordering::Relaxed),
        conns + 1
    );
}

#[tokio::test]
async fn oversized_http2_headers_are_refused() {
    let bs = backends(1).await;
    let sc = sidecar("{}", &[bs[0].spec()]).await;
    let big = "a".repeat(20 * 1024);
    let r = try_get(&h2_client(), sc.traffic_addr(), "/", &[("x-big", &big)]).await;
    assert_eq!(r.expect("an answer").status, 431);
    assert_eq!(bs[0].count(), 0);
}

/// POSTs 4,000 bytes whose length is not declared (streamed frames), over HTTP/2 or HTTP/1.1,
/// to the backend's `/upload`, which answers with the byte count it received.
async fn post_streaming_upload(addr: std::net::SocketAddr, h2: bool) -> (http::StatusCode, String) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http();
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..4)
        .map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; 1000]))))
        .collect();
    let req = Request::post(format!("http://{addr}/upload"))
        .body(StreamBody::new(futures::stream::iter(frames)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http2_clients_reach_an_http1_only_replica_with_upstream_protocol_http1() {
    let replica = Backend::start_speaking("r0", http::Version::HTTP_11).await;
    let client = h2_client();

    // By default HTTP/2 stays HTTP/2, which a replica that only speaks HTTP/1 cannot answer.
    let auto = sidecar("{}", &[replica.spec()]).await;
    let a = get(&client, auto.traffic_addr(), "/version", &[]).await;
    assert_eq!(a.status, 502, "{}", a.body);

    let sc = sidecar("upstreamProtocol: http1", &[replica.spec()]).await;
    let a = get(&client, sc.traffic_addr(), "/version", &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body,
        format!("HTTP/1.1 {}", sc.traffic_addr()),
        "the :authority becomes Host"
    );

    // HTTP/2 may split cookies into several fields; HTTP/1.1 gets them on one line.
    let a = get(
        &client,
        sc.traffic_addr(),
        "/headers",
        &[("cookie", "a=1"), ("cookie", "b=2")],
    )
    .await;
    assert!(a.body.contains("cookie: a=1; b=2\n"), "{}", a.body);

    // A body of unknown length goes upstream chunked and arrives whole.
    let (status, body) = post_streaming_upload(sc.traffic_addr(), true).await;
    assert_eq!(status, 200);
    assert_eq!(body, "4000");
}

#[tokio::test]
async fn http1_clients_reach_an_h2c_only_replica_with_upstream_protocol_http2() {
    let replica = Backend::start_speaking("r0", http::Version::HTTP_2).await;
    let client = h1_client();

    let auto = sidecar("{}", &[replica.spec()]).await;
    let a = get(&client, auto.traffic_addr(), "/version", &[]).await;
    assert_eq!(a.status, 502, "{}", a.body);

    let sc = sidecar("upstreamProtocol: http2", &[replica.spec()]).await;
    let a = get(
        &client,
        sc.traffic_addr(),
        "/version",
        &[("host", "catalog.shop")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body, "HTTP/2.0 catalog.shop",
        "Host becomes the :authority"
    );

    let (status, body) = post_streaming_upload(sc.traffic_addr(), false).await;
    assert_eq!(status, 200);
    assert_eq!(body, "4000");

    // HTTP/2 has no Upgrade: the request is answered as an ordinary one, without the
    // hop-by-hop upgrade fields.
    let text = raw(
        sc.traffic_addr(),
        b"GET /headers HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(raw_status(&text), Some(200), "{text}");
    let lower = text.to_lowercase();
    assert!(!lower.contains("upgrade: websocket"), "{text}");
}
