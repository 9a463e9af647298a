//! Overload: a replica set that can serve 4 requests at a time, offered 32 at once. Without
//! shedding every request queues; with it, the adaptive concurrency limit keeps admitted
//! requests near the uncontended latency and rejects the excess at once with 503
//! `overloaded`. Only relations are asserted (shed answers are faster than admitted ones,
//! admitted tail latency is lower with shedding than without, once the limit has adapted),
//! never absolute times.

mod resilience_support;
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use datastream_lb::endpoint::EndpointSpec;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use resilience_support::{Sample, load_client, one, quantile};
use support::sidecar;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep};

/// A replica with `capacity` workers taking `work` each: beyond that, requests queue.
async fn limited_replica(name: &str, capacity: usize, work: Duration) -> EndpointSpec {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let workers = Arc::new(Semaphore::new(capacity));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let workers = Arc::clone(&workers);
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let workers = Arc::clone(&workers);
                    async move {
                        let _w = workers.acquire().await;
                        sleep(work).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    EndpointSpec {
        addr,
        name: name.to_owned(),
        local: false,
        serving: true,
    }
}

/// A light warm-up (so the limiter measures uncontended latency), then `workers` clients
/// sending `each` requests back to back.
async fn run(addr: SocketAddr, workers: usize, each: usize) -> Vec<Sample> {
    let start = Instant::now();
    let client = load_client();
    for _ in 0..30 {
        one(&client, &format!("http://{addr}/"), start).await;
    }
    let mut tasks = Vec::new();
    for _ in 0..workers {
        tasks.push(tokio::spawn(async move {
            let client = load_client();
            let url = format!("http://{addr}/");
            let mut out = Vec::new();
            for _ in 0..each {
                let s = one(&client, &url, start).await;
                if !s.ok() {
                    // A shed client backs off briefly, as a real one would.
                    sleep(Duration::from_millis(10)).await;
                }
                out.push(s);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

const WORK: Duration = Duration::from_millis(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shedding_keeps_admitted_latency_bounded_and_rejects_excess_fast() {
    let replica = limited_replica("r0", 4, WORK).await;
    let unshed = sidecar(
        "limits: { loadShedding: { enabled: false } }",
        std::slice::from_ref(&replica),
    )
    .await;
    let shed = sidecar(
        "limits: { loadShedding: { latencyTarget: 30ms, minConcurrency: 4 } }",
        std::slice::from_ref(&replica),
    )
    .await;

    let baseline = run(unshed.traffic_addr(), 32, 15).await;
    let with = run(shed.traffic_addr(), 32, 15).await;

    assert!(
        baseline.iter().all(Sample::ok),
        "without shedding everything queues"
    );
    // Steady state: once the limiter had half a second to adapt (the first burst meets the
    // initial, open limit and queues like the baseline).
    let settled = with.iter().map(|s| s.sent).min().unwrap() + Duration::from_millis(500);
    let admitted: Vec<&Sample> = with
        .iter()
        .filter(|s| s.ok() && s.sent >= settled)
        .collect();
    let rejected: Vec<&Sample> = with.iter().filter(|s| !s.ok()).collect();
    assert!(
        rejected
            .iter()
            .all(|s| s.status == 503 && s.error.as_deref() == Some("overloaded")),
        "only 503 overloaded: {:?}",
        rejected.iter().take(3).collect::<Vec<_>>()
    );
    let (base_p99, adm_p99) = (
        quantile(&baseline, 0.99),
        quantile(admitted.iter().copied(), 0.99),
    );
    let (adm_p50, rej_p50) = (
        quantile(admitted.iter().copied(), 0.5),
        quantile(rejected.iter().copied(), 0.5),
    );
    eprintln!(
        "[overload] without shedding: n={} p50={:?} p99={:?} | with: admitted={} p50={adm_p50:?} p99={adm_p99:?}, shed={} p50={rej_p50:?}",
        baseline.len(),
        quantile(&baseline, 0.5),
        base_p99,
        admitted.len(),
        rejected.len(),
    );
    assert!(!rejected.is_empty(), "the excess was shed");
    assert!(!admitted.is_empty(), "work was still admitted");
    assert!(
        adm_p99 < base_p99,
        "admitted p99 {adm_p99:?} vs unshed {base_p99:?}"
    );
    assert!(
        rej_p50 < adm_p50,
        "rejections are fast: {rej_p50:?} vs {adm_p50:?}"
    );
    assert!(
        rej_p50 < WORK,
        "a rejection costs less than one request's work"
    );
}
