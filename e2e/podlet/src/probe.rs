//! Probes: threshold tracking (pure) and execution of `httpGet` / `tcpSocket` checks against the pod IP.
//!
//! The podlet runs in the sandbox namespace that holds the bridge, so connecting to `podIP:port` reaches
//! the container exactly as a kubelet's probe would. `exec` and `grpc` probes are not implemented: they
//! always fail (and say so in the log), so a pod relying on one never turns Ready instead of lying.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::TcpStream;

/// Which probe of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// `startupProbe`.
    Startup,
    /// `livenessProbe`.
    Liveness,
    /// `readinessProbe`.
    Readiness,
}

/// Timing and thresholds of a probe, with the Kubernetes defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    /// Delay before the first check.
    pub initial_delay: Duration,
    /// Time between checks.
    pub period: Duration,
    /// Limit of one check.
    pub timeout: Duration,
    /// Consecutive successes that make the result succeed.
    pub success_threshold: u32,
    /// Consecutive failures that make the result fail.
    pub failure_threshold: u32,
}

impl ProbeTiming {
    /// Reads a probe's timing fields, applying the API defaults (period 10 s, timeout 1 s, thresholds 1/3).
    pub fn of(probe: &Probe) -> Self {
        let secs = |v: Option<i32>, default: i32| {
            Duration::from_secs(u64::try_from(v.unwrap_or(default)).unwrap_or(0))
        };
        let count = |v: Option<i32>, default: u32| {
            v.and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .unwrap_or(default)
        };
        Self {
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// Turns individual check results into a probe result using the thresholds.
#[derive(Debug, Clone)]
pub struct ProbeTracker {
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    result: Option<bool>,
}

impl ProbeTracker {
    /// A tracker with no result yet.
    pub fn new(timing: ProbeTiming) -> Self {
        Self {
            success_threshold: timing.success_threshold,
            failure_threshold: timing.failure_threshold,
            successes: 0,
            failures: 0,
            result: None,
        }
    }

    /// Records one check; returns the new result when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= self.success_threshold && self.result != Some(true) {
                self.result = Some(true);
                return self.result;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.failure_threshold && self.result != Some(false) {
                self.result = Some(false);
                return self.result;
            }
        }
        None
    }

    /// The current result (`None` until a threshold is reached).
    pub fn result(&self) -> Option<bool> {
        self.result
    }
}

/// Resolves a probe port (number or named container port).
pub fn resolve_port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok()),
    }
}

/// Runs one check of `probe` against the pod at `pod_ip`; `Err` explains a failure.
pub async fn check(probe: &Probe, container: &Container, pod_ip: IpAddr) -> Result<(), String> {
    let timeout = ProbeTiming::of(probe).timeout;
    match tokio::time::timeout(timeout, check_inner(probe, container, pod_ip)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

async fn check_inner(probe: &Probe, container: &Container, pod_ip: IpAddr) -> Result<(), String> {
    if let Some(h) = &probe.http_get {
        let port = resolve_port(&h.port, container)
            .ok_or_else(|| format!("cannot resolve port {:?}", h.port))?;
        if h.scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
        {
            return Err("HTTPS probes are not supported by the podlet".into());
        }
        let ip = match &h.host {
            Some(host) if !host.is_empty() => host
                .parse()
                .map_err(|_| format!("probe host {host:?} is not an IP"))?,
            _ => pod_ip,
        };
        let path = h
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|hh| (hh.name.clone(), hh.value.clone()))
            .collect();
        return http_get(SocketAddr::new(ip, port), &path, &headers).await;
    }
    if let Some(t) = &probe.tcp_socket {
        let port = resolve_port(&t.port, container)
            .ok_or_else(|| format!("cannot resolve port {:?}", t.port))?;
        let ip = match &t.host {
            Some(host) if !host.is_empty() => host
                .parse()
                .map_err(|_| format!("probe host {host:?} is not an IP"))?,
            _ => pod_ip,
        };
        return TcpStream::connect(SocketAddr::new(ip, port))
            .await
            .map(drop)
            .map_err(|e| format!("connect: {e}"));
    }
    Err("only httpGet and tcpSocket probes are supported by the podlet".into())
}

/// HTTP/1.1 GET; 200..=399 is success, as in the kubelet.
async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let mut req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(
            http::header::USER_AGENT,
            "kube-probe/1.36 (datastream-podlet)",
        )
        .header(http::header::CONNECTION, "close");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Empty::new())
        .map_err(|e| format!("request: {e}"))?;
    let result = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"));
    driver.abort();
    let status = result?.status();
    if (200..400).contains(&status.as_u16()) {
        Ok(())
    } else {
        Err(format!(
            "HTTP probe failed with statuscode: {}",
            status.as_u16()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, TCPSocketAction};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn timing(s: u32, f: u32) -> ProbeTiming {
        ProbeTiming {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: s,
            failure_threshold: f,
        }
    }

    #[test]
    fn thresholds() {
        let mut t = ProbeTracker::new(timing(2, 3));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.result(), Some(true));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.result(), Some(false));
    }

    #[test]
    fn timing_defaults() {
        let t = ProbeTiming::of(&Probe::default());
        assert_eq!(
            t,
            ProbeTiming {
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
    }

    #[test]
    fn named_ports() {
        let c = Container {
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Container::default()
        };
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Some(8080)
        );
        assert_eq!(resolve_port(&IntOrString::Int(9090), &c), Some(9090));
        assert_eq!(resolve_port(&IntOrString::String("nope".into()), &c), None);
    }

    /// Answers every connection with `status` and records the request head.
    async fn one_shot_server(status: u16) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let resp =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            s.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (addr, task)
    }

    fn http_probe(port: u16, path: &str) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(i32::from(port)),
                path: Some(path.into()),
                ..Default::default()
            }),
            timeout_seconds: Some(5),
            ..Probe::default()
        }
    }

    #[tokio::test]
    async fn http_probe_success_and_failure() {
        let (addr, seen) = one_shot_server(204).await;
        check(
            &http_probe(addr.port(), "/ready"),
            &Container::default(),
            addr.ip(),
        )
        .await
        .unwrap();
        assert!(seen.await.unwrap().starts_with("GET /ready HTTP/1.1"));
        let (addr, _) = one_shot_server(503).await;
        let err = check(
            &http_probe(addr.port(), "/ready"),
            &Container::default(),
            addr.ip(),
        )
        .await
        .unwrap_err();
        assert!(err.contains("503"), "{err}");
    }

    #[tokio::test]
    async fn tcp_probe() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let p = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(port)),
                host: None,
            }),
            ..Probe::default()
        };
        check(&p, &Container::default(), "127.0.0.1".parse().unwrap())
            .await
            .unwrap();
        drop(l);
        assert!(
            check(&p, &Container::default(), "127.0.0.1".parse().unwrap())
                .await
                .is_err()
        );
        assert!(
            check(
                &Probe::default(),
                &Container::default(),
                "127.0.0.1".parse().unwrap()
            )
            .await
            .is_err()
        );
    }
}
