//! Bounded HTTP load for the demo and the e2e scenarios: sends requests round the given sidecar
//! addresses with fixed concurrency and reports, per replica (from `x-replica-id`), how many
//! answers came back, plus failures and latency percentiles.
//!
//! `demo-traffic --targets 10.244.1.3:7080,10.244.1.4:7080 --duration 20s --concurrency 8`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

#[derive(Default)]
struct Tally {
    by_replica: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let targets: Vec<String> = arg(&args, "--targets", "127.0.0.1:7080")
        .split(',')
        .map(str::to_owned)
        .collect();
    let duration = datastream_api::v1alpha1::parse_duration(&arg(&args, "--duration", "10s"))
        .expect("--duration");
    let concurrency: usize = arg(&args, "--concurrency", "8")
        .parse()
        .expect("--concurrency");
    let path = arg(&args, "--path", "/whoami");

    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let (client, tally, stop, targets, path) = (
            client.clone(),
            tally.clone(),
            stop.clone(),
            targets.clone(),
            path.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut n = worker;
            while !stop.load(Ordering::Relaxed) {
                let target = &targets[n % targets.len()];
                n += 1;
                let uri: hyper::Uri = format!("http://{target}{path}").parse().unwrap();
                let t0 = Instant::now();
                let outcome = tokio::time::timeout(Duration::from_secs(10), async {
                    let response = client.get(uri).await.map_err(|e| format!("error: {e}"))?;
                    let status = response.status();
                    let replica = response
                        .headers()
                        .get("x-replica-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("unknown")
                        .to_owned();
                    response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| format!("body: {e}"))?;
                    if status.is_success() {
                        Ok(replica)
                    } else {
                        Err(format!("status {}", status.as_u16()))
                    }
                })
                .await
                .unwrap_or_else(|_| Err("timeout".to_owned()));
                let mut t = tally.lock().await;
                t.latencies.push(t0.elapsed());
                match outcome {
                    Ok(replica) => *t.by_replica.entry(replica).or_default() += 1,
                    Err(reason) => *t.failures.entry(reason).or_default() += 1,
                }
            }
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let mut t = tally.lock().await;
    let total: u64 = t.by_replica.values().sum::<u64>() + t.failures.values().sum::<u64>();
    t.latencies.sort();
    let pct = |p: f64| {
        t.latencies
            .get(((t.latencies.len() as f64 * p) as usize).min(t.latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "requests: {total} in {:.1}s ({:.0}/s)",
        started.elapsed().as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64()
    );
    println!(
        "latency: p50 {:?}  p99 {:?}  max {:?}",
        pct(0.50),
        pct(0.99),
        t.latencies.last().copied().unwrap_or_default()
    );
    println!("answers per replica:");
    for (replica, count) in &t.by_replica {
        println!("  {replica:<40} {count}");
    }
    let failed: u64 = t.failures.values().sum();
    println!("failed requests: {failed}");
    for (reason, count) in &t.failures {
        println!("  {reason}: {count}");
    }
    std::process::exit(if failed == 0 { 0 } else { 2 });
}
