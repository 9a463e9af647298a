//! The resilience layer's answers, one behaviour at a time, against real loopback servers:
//! the retry budget under a retry storm, retry safety for non-idempotent requests, rate
//! limiting, broadcast quorums, deadlines and the local workload's health driving `/ready`.

mod resilience_support;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use datastream_lb::endpoint::EndpointSpec;
use http::Request;
use http_body_util::{BodyExt, Full};
use resilience_support::{load_client, metric_sum, metrics_text};
use support::{backends, get, h1_client, refusing_addr, sidecar, try_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &'static str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let client = load_client();
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client
        .request(
            b.body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap(),
        )
        .await
        .expect("an HTTP answer");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A replica that reads each request completely and then closes the connection without an
/// answer: the request certainly reached it.
async fn swallower(name: &str) -> (EndpointSpec, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            counter.fetch_add(1, Ordering::SeqCst);
                            let _ = s.shutdown().await;
                            return;
                        }
                    }
                }
            });
        }
    });
    let spec = EndpointSpec {
        addr,
        name: name.to_owned(),
        local: false,
        serving: true,
    };
    (spec, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_a_retry_storm_when_every_replica_fails() {
    let b = backends(3).await;
    for x in &b {
        x.set_status(503);
    }
    let specs: Vec<_> = b.iter().map(|x| x.spec()).collect();
    // Ejection and the breaker would hide the storm; turn them off to see the budget alone.
    let sc = sidecar(
        r#"
failover:
  retries: { attempts: 2, budgetRatio: 0.2, minRetriesPerSecond: 1 }
  outlierDetection: { maxEjectedPercent: 0 }
  circuitBreaker: { enabled: false }
"#,
        &specs,
    )
    .await;
    let requests = 200u64;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let addr = sc.traffic_addr();
        tasks.push(tokio::spawn(async move {
            let client = load_client();
            let mut statuses = Vec::new();
            for _ in 0..requests / 4 {
                let a = try_get(&client, addr, "/", &[]).await.expect("answer");
                statuses.push(a.status.as_u16());
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.extend(t.await.unwrap());
    }
    let reached: u64 = b.iter().map(|x| x.count()).sum();
    let metrics = metrics_text(sc.admin_addr()).await;
    let refused = metric_sum(
        &metrics,
        "datastream_sidecar_retry_budget_refusals_total",
        &[],
    );
    eprintln!(
        "[retry-storm] requests={requests} attempts-reaching-replicas={reached} refusals={refused} (no budget: {})",
        requests * 3
    );
    assert!(statuses.iter().all(|s| *s == 503), "the replicas' own 503s");
    // At most the floor (1/s over a 10 s window) plus 20% of the requests, far below the
    // 3 attempts per request that retries without a budget would make.
    assert!(
        reached <= requests + 10 + requests / 5,
        "{reached} attempts for {requests} requests"
    );
    assert!(reached >= requests);
    assert!(refused > 0.0);
}

#[tokio::test]
async fn a_post_that_reached_a_replica_is_not_retried_unless_the_route_allows_it() {
    let (dead, seen_dead) = swallower("a-dead").await;
    let healthy = backends(1).await;
    let mut b_spec = healthy[0].spec();
    b_spec.name = "b-ok".into();
    // primary mode sends the first attempt to "a-dead" deterministically.
    let sc = sidecar(
        r#"
routes:
  - { name: writes, match: { path: { prefix: /w } }, mode: primary }
  - { name: dedup, match: { path: { prefix: /d } }, mode: primary, retryNonIdempotent: true }
"#,
        &[dead.clone(), b_spec],
    )
    .await;
    let (status, headers, _) = send(sc.traffic_addr(), "POST", "/w", "x", &[]).await;
    assert_eq!(status, 502);
    assert_eq!(headers["x-datastream-error"], "upstream-failed");
    assert_eq!(seen_dead.load(Ordering::SeqCst), 1);
    assert_eq!(healthy[0].count(), 0, "never repeated on another replica");

    // A PUT is idempotent: retried on the other replica.
    let (status, _, _) = send(sc.traffic_addr(), "PUT", "/w", "x", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(healthy[0].count(), 1);

    // The route says its workload deduplicates: the POST is retried.
    let (status, _, _) = send(sc.traffic_addr(), "POST", "/d", "x", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(healthy[0].count(), 2);
}

#[tokio::test]
async fn a_post_to_a_dead_replica_is_retried_because_it_never_reached_it() {
    let healthy = backends(1).await;
    let (_reserved, dead_addr) = refusing_addr();
    let dead = EndpointSpec {
        addr: dead_addr,
        name: "a-dead".into(),
        local: false,
        serving: true,
    };
    let mut ok = healthy[0].spec();
    ok.name = "b-ok".into();
    let sc = sidecar("routes: [{ name: w, mode: primary }]", &[dead, ok]).await;
    let (status, _, _) = send(sc.traffic_addr(), "POST", "/x", "payload", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(healthy[0].count(), 1);
}

#[tokio::test]
async fn rate_limited_requests_get_429_with_retry_after() {
    let b = backends(2).await;
    let specs: Vec<_> = b.iter().map(|x| x.spec()).collect();
    let sc = sidecar(
        r#"
routes:
  - { name: limited, match: { path: { prefix: /limited } }, rateLimit: { requestsPerSecond: 2, burst: 3 } }
"#,
        &specs,
    )
    .await;
    let client = h1_client();
    let mut ok = 0u64;
    let mut limited = Vec::new();
    let started = Instant::now();
    for _ in 0..10 {
        let a = get(&client, sc.traffic_addr(), "/limited", &[]).await;
        match a.status.as_u16() {
            200 => ok += 1,
            429 => limited.push(a),
            s => panic!("unexpected {s}"),
        }
    }
    // The burst of 3, plus whatever the 2/s refill added while the loop ran.
    let refilled = (started.elapsed().as_secs_f64() * 2.0).ceil() as u64;
    assert!(
        ok >= 3 && ok <= 3 + refilled,
        "{ok} admitted, {refilled} refilled"
    );
    let first = &limited[0];
    assert_eq!(first.headers["x-datastream-error"], "rate-limited");
    let retry_after: u64 = first.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    // Other routes are not limited.
    for _ in 0..10 {
        assert_eq!(
            get(&client, sc.traffic_addr(), "/other", &[]).await.status,
            200
        );
    }
    let metrics = metrics_text(sc.admin_addr()).await;
    assert_eq!(
        metric_sum(
            &metrics,
            "datastream_sidecar_rate_limited_total",
            &["limited"]
        ),
        limited.len() as f64
    );
}

#[tokio::test]
async fn broadcast_reaches_every_replica_and_answers_after_the_quorum() {
    let b = backends(3).await;
    let specs: Vec<_> = b.iter().map(|x| x.spec()).collect();
    let sc = sidecar(
        r#"
routes:
  - name: fanout
    match: { path: { prefix: / }, methods: [PUT] }
    mode: broadcast
    broadcast: { quorum: 2, maxBodyBytes: 1024 }
"#,
        &specs,
    )
    .await;
    let (status, headers, body) = send(sc.traffic_addr(), "PUT", "/upload", "hello", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, "5", "the replica saw the whole body");
    let acks: u32 = headers["x-datastream-acks"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(acks >= 2);
    // The slowest replica still gets the request after the answer.
    sleep(Duration::from_millis(200)).await;
    assert!(
        b.iter().all(|x| x.count() == 1),
        "every replica got it once"
    );

    // A body over the broadcast limit is refused before anything is sent.
    let big: &'static str = Box::leak("x".repeat(2048).into_boxed_str());
    let (status, _, _) = send(sc.traffic_addr(), "PUT", "/upload", big, &[]).await;
    assert_eq!(status, 413);
    assert!(b.iter().all(|x| x.count() == 1));

    // Two of three replicas fail: the quorum of 2 cannot be reached.
    b[0].set_status(500);
    b[1].kill();
    // (`/bcast` answers with the replica's configured status; `/upload` always succeeds.)
    let (status, headers, body) = send(sc.traffic_addr(), "PUT", "/bcast", "again", &[]).await;
    assert_eq!(status, 503);
    assert_eq!(
        headers["x-datastream-error"],
        "broadcast-quorum-unreachable"
    );
    assert!(body.contains("quorum"), "{body}");
}

#[tokio::test]
async fn caller_deadline_bounds_the_whole_attempt_chain() {
    let b = backends(3).await;
    for x in &b {
        x.set_latency(2000);
    }
    let specs: Vec<_> = b.iter().map(|x| x.spec()).collect();
    let sc = sidecar(
        "failover: { perTryTimeout: 100ms, requestTimeout: 10s }",
        &specs,
    )
    .await;
    let client = h1_client();
    let started = Instant::now();
    let a = get(
        &client,
        sc.traffic_addr(),
        "/",
        &[("x-datastream-deadline-ms", "250")],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(a.status, 504);
    assert_eq!(a.headers["x-datastream-error"], "timeout");
    // Bounded by the caller's deadline, not by the replicas (2 s) nor the route (10 s).
    assert!(took < Duration::from_secs(1), "{took:?}");

    // gRPC callers: the remaining time is passed on to the replica.
    b[0].set_latency(0);
    b[1].set_latency(0);
    b[2].set_latency(0);
    let a = get(
        &client,
        sc.traffic_addr(),
        "/headers",
        &[("grpc-timeout", "5S")],
    )
    .await;
    let forwarded = a
        .body
        .lines()
        .find_map(|l| l.strip_prefix("grpc-timeout: "))
        .expect("grpc-timeout forwarded");
    let parsed =
        datastream_resilience::deadline::parse_grpc_timeout(forwarded.as_bytes()).expect("valid");
    assert!(parsed <= Duration::from_secs(5) && parsed > Duration::from_secs(4));
}

#[tokio::test]
async fn every_replica_frozen_answers_504_at_the_request_timeout() {
    let b = backends(2).await;
    for x in &b {
        x.set_latency(5000);
    }
    let specs: Vec<_> = b.iter().map(|x| x.spec()).collect();
    let sc = sidecar(
        "failover: { connectTimeout: 100ms, perTryTimeout: 100ms, requestTimeout: 400ms }",
        &specs,
    )
    .await;
    let client = h1_client();
    let started = Instant::now();
    let a = get(&client, sc.traffic_addr(), "/", &[]).await;
    assert_eq!(a.status, 504);
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Polls `/ready` until it answers `want` (bounded: 2 s).
async fn wait_for(client: &support::H1Client, admin: SocketAddr, want: u16) -> bool {
    for _ in 0..100 {
        let got = try_get(client, admin, "/ready", &[])
            .await
            .map(|a| a.status.as_u16())
            .unwrap_or(0);
        if got == want {
            return true;
        }
        sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn local_workload_health_check_drives_ready() {
    let b = backends(2).await;
    let mut local = b[0].spec();
    local.local = true;
    let sc = sidecar(
        r#"
failover:
  healthCheck: { interval: 50ms, timeout: 50ms, unhealthyThreshold: 2, healthyThreshold: 2, path: /ready }
"#,
        &[local, b[1].spec()],
    )
    .await;
    let client = h1_client();
    let admin = sc.admin_addr();
    assert!(
        wait_for(&client, admin, 200).await,
        "ready once the workload answers"
    );
    b[0].set_status(503);
    assert!(
        wait_for(&client, admin, 503).await,
        "unready while the workload fails its readiness path"
    );
    // Meanwhile traffic goes to the peer.
    for _ in 0..5 {
        assert_eq!(
            get(&client, sc.traffic_addr(), "/", &[]).await.backend(),
            "r1"
        );
    }
    let doc = resilience_support::admin_json(sc.admin_addr(), "/endpoints").await;
    assert_eq!(doc["resilience"]["localHealth"]["verdict"], "unhealthy");
    b[0].set_status(200);
    assert!(
        wait_for(&client, admin, 200).await,
        "ready again after healthyThreshold passes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_hides_a_slow_replica_from_idempotent_reads() {
    let b = backends(3).await;
    b[1].set_latency(400);
    let specs: Vec<_> = b.iter().map(|x| x.spec()).collect();
    // Round-robin sends every third first attempt to the slow replica, whatever its latency.
    let sc = sidecar(
        r#"
loadBalancing: { policy: round-robin }
failover: { hedging: { percentile: 50, minDelay: 20ms } }
"#,
        &specs,
    )
    .await;
    // Learn the route's latency (the median is fast: two replicas of three answer at once),
    // with a few clients at once so that the slow third does not serialise the warm-up.
    let mut warm = Vec::new();
    for _ in 0..6 {
        let addr = sc.traffic_addr();
        warm.push(tokio::spawn(async move {
            let client = load_client();
            for _ in 0..10 {
                let a = try_get(&client, addr, "/", &[]).await.unwrap();
                assert_eq!(a.status, 200);
            }
        }));
    }
    for w in warm {
        w.await.unwrap();
    }
    let client = load_client();
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let started = Instant::now();
        let a = try_get(&client, sc.traffic_addr(), "/", &[]).await.unwrap();
        assert_eq!(a.status, 200);
        assert_ne!(a.backend(), "r1", "the hedge answered first");
        slowest = slowest.max(started.elapsed());
    }
    let metrics = metrics_text(sc.admin_addr()).await;
    let hedges = metric_sum(&metrics, "datastream_sidecar_retries_total", &["hedge"]);
    eprintln!("[hedge] slowest={slowest:?} hedges={hedges}");
    assert!(hedges >= 1.0);
    assert!(
        slowest < Duration::from_millis(200),
        "never waited for the slow replica: {slowest:?}"
    );
    // POSTs are never hedged.
    let (status, _, _) = send(sc.traffic_addr(), "POST", "/", "x", &[]).await;
    assert_eq!(status, 200);
}
