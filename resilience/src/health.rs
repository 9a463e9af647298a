//! Active health checking of the local workload, which drives the sidecar's own `/ready`: when
//! the workload stops answering its readiness path, the sidecar turns unready, Kubernetes takes
//! the pod out of the peer Service's EndpointSlices, and the other sidecars stop sending it
//! traffic, without waiting for their passive detection to notice.
//!
//! A check opens a fresh connection (so it also catches a listener that no longer accepts) and,
//! when a path is configured, sends `GET <path>`: any 2xx or 3xx answer within the timeout
//! passes. Without a path, an accepted TCP connection passes. `unhealthyThreshold` failures in a
//! row turn the status unhealthy, `healthyThreshold` passes in a row turn it healthy again; the
//! very first pass turns a fresh status healthy at once, so a sidecar becomes ready as soon as
//! its workload is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Compiled health-check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// Time between checks.
    pub interval: Duration,
    /// Time allowed per check.
    pub timeout: Duration,
    /// Failures in a row that turn the status unhealthy.
    pub unhealthy_threshold: u32,
    /// Passes in a row that turn it healthy.
    pub healthy_threshold: u32,
    /// HTTP path to GET; `None` checks that a TCP connection opens.
    pub path: Option<String>,
}

/// What the checker currently believes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// No check has completed yet.
    Unknown,
    /// Passing.
    Healthy,
    /// Failing.
    Unhealthy,
}

/// The outcome of the checks so far; shared between the checker task and readers.
#[derive(Debug)]
pub struct HealthStatus {
    verdict: AtomicU8,
    detail: Mutex<Detail>,
}

/// What `/endpoints` and `/ready` report about the checks.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Detail {
    /// Passes in a row.
    pub passes: u32,
    /// Failures in a row.
    pub failures: u32,
    /// Why the last check failed, if it did.
    pub last_error: Option<String>,
    /// Checks run.
    pub checks: u64,
}

// === impl HealthStatus ===

impl HealthStatus {
    /// A status before any check.
    pub fn new() -> Self {
        Self {
            verdict: AtomicU8::new(0),
            detail: Mutex::new(Detail::default()),
        }
    }

    /// The current verdict.
    pub fn verdict(&self) -> Verdict {
        match self.verdict.load(Ordering::Acquire) {
            1 => Verdict::Healthy,
            2 => Verdict::Unhealthy,
            _ => Verdict::Unknown,
        }
    }

    /// Whether the workload counts as healthy.
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.verdict() == Verdict::Healthy
    }

    /// The counters and last error.
    pub fn detail(&self) -> Detail {
        self.detail.lock().clone()
    }

    /// Records a check's result; returns the new verdict if it changed.
    pub fn record(
        &self,
        result: Result<(), String>,
        config: &HealthCheckConfig,
    ) -> Option<Verdict> {
        let mut d = self.detail.lock();
        d.checks += 1;
        let before = self.verdict();
        let after = match result {
            Ok(()) => {
                d.passes += 1;
                d.failures = 0;
                d.last_error = None;
                if before == Verdict::Unknown || d.passes >= config.healthy_threshold.max(1) {
                    Verdict::Healthy
                } else {
                    before
                }
            }
            Err(e) => {
                d.failures += 1;
                d.passes = 0;
                d.last_error = Some(e);
                if before == Verdict::Unknown || d.failures >= config.unhealthy_threshold.max(1) {
                    Verdict::Unhealthy
                } else {
                    before
                }
            }
        };
        let code = match after {
            Verdict::Unknown => 0,
            Verdict::Healthy => 1,
            Verdict::Unhealthy => 2,
        };
        self.verdict.store(code, Ordering::Release);
        (after != before).then_some(after)
    }
}

impl Default for HealthStatus {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs one check against `addr`.
pub async fn check(addr: SocketAddr, config: &HealthCheckConfig) -> Result<(), String> {
    match tokio::time::timeout(config.timeout, check_inner(addr, config.path.as_deref())).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", config.timeout)),
    }
}

async fn check_inner(addr: SocketAddr, path: Option<&str>) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Some(path) = path else {
        return Ok(());
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "datastream-sidecar-health")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let result = sender.send_request(req).await;
    conn.abort();
    let resp = result.map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("{path} answered {status}"))
    }
}

/// Checks the target every interval until `stop` turns true, recording into `status`.
/// `target` is asked before every check for the address and settings (so endpoint and policy
/// updates apply at the next check); `None` pauses checking and keeps the last verdict.
/// `on_verdict` sees every verdict.
pub async fn run(
    status: Arc<HealthStatus>,
    target: impl Fn() -> Option<(SocketAddr, HealthCheckConfig)>,
    on_verdict: impl Fn(Verdict),
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let Some((addr, c)) = target() else {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        };
        let result = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = check(addr, &c) => r,
        };
        if let Some(verdict) = status.record(result.clone(), &c) {
            match &result {
                Err(error) => {
                    tracing::warn!(%addr, %error, ?verdict, "local workload health changed")
                }
                Ok(()) => tracing::info!(%addr, ?verdict, "local workload health changed"),
            }
        }
        on_verdict(status.verdict());
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(c.interval) => {}
        }
    }
}

#[cfg(test)]
mod tests;
