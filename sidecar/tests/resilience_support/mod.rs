//! Fault-injection support: a bounded load driver that records every answer, demo-replica child
//! processes that can be frozen with SIGSTOP, and small helpers to read the records.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use tokio::time::Instant;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::support::{H1Client, h1_client};

/// A keep-alive client whose idle connections expire before the test sidecar's (500 ms
/// header-read timeout, which also ends idle keep-alive connections), so no request races a
/// server-side close: the client-side rule every HTTP/1.1 client needs.
pub fn load_client() -> H1Client {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_millis(250))
        .build(c)
}

/// One answer seen by the load driver.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the request was sent, from the start of the run.
    pub sent: Duration,
    /// Time to the complete answer.
    pub latency: Duration,
    /// Status, or 0 when the client saw no HTTP answer at all.
    pub status: u16,
    /// Which replica answered (`x-backend` or `x-replica-id`).
    pub backend: String,
    /// The sidecar's own error code, if it answered itself.
    pub error: Option<String>,
}

impl Sample {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Steady concurrent GETs to `addr` + `path` until stopped.
pub struct Load {
    pub start: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `workers` concurrent clients, each sending GETs back to back with a small pause, so the
    /// offered load stays moderate and bounded.
    pub fn start(addr: SocketAddr, path: &str, workers: usize, pause: Duration) -> Load {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|_| {
                let client = load_client();
                let stop = Arc::clone(&stop);
                let samples = Arc::clone(&samples);
                let url = format!("http://{addr}{path}");
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let s = one(&client, &url, start).await;
                        samples.lock().push(s);
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Load {
            start,
            stop,
            samples,
            tasks,
        }
    }

    /// Time since the start.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Stops the workers and returns every sample, in completion order.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        Arc::try_unwrap(self.samples)
            .map(|m| m.into_inner())
            .unwrap_or_else(|m| m.lock().clone())
    }
}

/// Sends one GET and records it.
pub async fn one(client: &H1Client, url: &str, start: Instant) -> Sample {
    let sent = start.elapsed();
    let t = Instant::now();
    let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    match client.request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let backend = header("x-backend")
                .or_else(|| header("x-replica-id"))
                .unwrap_or_default();
            let error = header("x-datastream-error");
            let body = resp.into_body().collect().await;
            Sample {
                sent,
                latency: t.elapsed(),
                status: if body.is_ok() { status } else { 0 },
                backend,
                error: match body {
                    Ok(_) => error,
                    Err(e) => Some(format!("{status} then body error: {e:?}")),
                },
            }
        }
        Err(e) => Sample {
            sent,
            latency: t.elapsed(),
            status: 0,
            backend: String::new(),
            error: Some(format!("{e:?}")),
        },
    }
}

/// Samples that failed (anything but 2xx).
pub fn failures(samples: &[Sample]) -> Vec<&Sample> {
    samples.iter().filter(|s| !s.ok()).collect()
}

/// The `q` quantile (0..=1) of the latencies of `samples`.
pub fn quantile<'a>(samples: impl IntoIterator<Item = &'a Sample>, q: f64) -> Duration {
    let mut l: Vec<Duration> = samples.into_iter().map(|s| s.latency).collect();
    if l.is_empty() {
        return Duration::ZERO;
    }
    l.sort();
    l[((l.len() - 1) as f64 * q).round() as usize]
}

/// Successful answers from `backend` among requests sent in `[from, to)`.
pub fn served_by(samples: &[Sample], backend: &str, from: Duration, to: Duration) -> usize {
    samples
        .iter()
        .filter(|s| s.backend == backend && s.ok() && s.sent >= from && s.sent < to)
        .count()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The demo replica binary, if it has been built.
pub fn demo_replica_binary() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/datastream-demo-replica");
    bin.exists().then_some(bin)
}

/// A `datastream-demo-replica` child process on loopback.
pub struct DemoReplica {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
}

impl DemoReplica {
    pub async fn start(bin: &PathBuf, name: &str) -> DemoReplica {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = Command::new(bin)
            .args(["--listen", &addr.to_string(), "--replica-id", name])
            .args(["--shutdown-timeout", "1s"])
            .env("DATASTREAM_LOG", "warn")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("demo replica starts");
        let r = DemoReplica {
            name: name.to_owned(),
            addr,
            child,
        };
        let client = h1_client();
        for _ in 0..200 {
            let url = format!("http://{addr}/healthz");
            let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
            if let Ok(Ok(resp)) =
                tokio::time::timeout(Duration::from_millis(200), client.request(req)).await
                && resp.status().is_success()
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("demo replica {name} did not come up on {addr}");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Freezes the process: its listen socket still accepts (the kernel completes handshakes
    /// into the backlog) but nothing is ever answered.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Thaws a frozen process.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    pub fn spec(&self) -> datastream_lb::endpoint::EndpointSpec {
        datastream_lb::endpoint::EndpointSpec {
            addr: self.addr,
            name: self.name.clone(),
            local: false,
            serving: true,
        }
    }
}

impl Drop for DemoReplica {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs a JSON document from the admin listener.
pub async fn admin_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let client = h1_client();
    let req = Request::get(format!("http://{admin}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.expect("admin answers");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).expect("JSON")
}

/// GETs the metrics text from the admin listener.
pub async fn metrics_text(admin: SocketAddr) -> String {
    let client = h1_client();
    let req = Request::get(format!("http://{admin}/metrics"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.expect("admin answers");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Sum of every sample of metric `name` whose labels contain all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && l[name.len()..].starts_with(['{', ' '])
                && labels.iter().all(|x| l.contains(x))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
