//! The admin listener: `/live`, `/ready`, `/metrics`, `/config`, `/endpoints` and `/identity`.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::ResponseBody;
use crate::state::Shared;
use datastream_lb::endpoint::{Eligibility, LoadSnapshot};
use datastream_resilience::breaker::BreakerSnapshot;
use datastream_resilience::clock;
use datastream_resilience::outlier::OutlierState;

/// Time an admin client has to send a request head (also its idle keep-alive limit).
const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One replica as `/endpoints` shows it: the figures that drive the balancer's choice, and why
/// it is or is not eligible.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    /// Stable name.
    pub name: String,
    /// Address requests go to.
    pub address: String,
    /// Whether it is the local workload.
    pub local: bool,
    /// Whether it can take new requests, and if not, why.
    pub eligibility: Eligibility,
    /// Peak-EWMA latency in milliseconds.
    pub ewma_ms: f64,
    /// Requests in flight.
    pub inflight: u32,
    /// The p2c-ewma cost, `ewmaMs × (inflight + 1)`.
    pub cost: f64,
    /// Latency samples seen.
    pub samples: u32,
    /// Whether slow start still limits it.
    pub slow_start: bool,
    /// Transport failures in a row.
    pub consecutive_failures: u32,
    /// Idle pooled HTTP/1 connections.
    pub idle_connections: usize,
    /// Outlier detection: healthy, ejected (why, for how long, how many times) or probation.
    pub outlier: OutlierState,
    /// The adaptive breaker's window and drop probability.
    pub breaker: BreakerSnapshot,
    /// Attempts waiting for this replica's response headers.
    pub pending: u32,
    /// The identity a connection to it must prove in its TLS handshake (remote endpoints, with
    /// mutual TLS on); every pooled connection has proved it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_identity: Option<String>,
}

/// Serves the admin API until `close` turns true. `settings` is shown under `/config`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    settings: Value,
    mut close: watch::Receiver<bool>,
) {
    let settings = Arc::new(settings);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = close.wait_for(|c| *c) => break,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let settings = Arc::clone(&settings);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = route(&shared, &settings, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            // Probes and scrapes are quick; a client that stalls mid-head is dropped.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(shared: &Shared, settings: &Value, req: &Request<Incoming>) -> Response<ResponseBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => {
            if shared.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if !shared.endpoints_known() {
                text(StatusCode::SERVICE_UNAVAILABLE, "no endpoints known yet\n")
            } else if let Some(reason) = shared.identity().and_then(|i| i.not_ready_reason()) {
                let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, "");
                *resp.body_mut() =
                    ResponseBody::full(format!("no workload certificate: {reason}\n"));
                resp
            } else if shared.resilience.local_workload_failing() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the local workload fails its health check\n",
                )
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/metrics" => {
            let body = shared.metrics.encode(&shared.endpoints());
            let mut resp = Response::new(ResponseBody::full(body));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        "/config" => {
            let status = shared.config_status();
            let policy = shared.policy();
            json_response(&json!({
                "version": status.version,
                "source": status.source,
                "lastError": status.last_error,
                "traffic": policy.spec,
                "routes": policy.routes.iter().map(|r| r.name()).collect::<Vec<_>>(),
                "settings": settings,
            }))
        }
        "/endpoints" => json_response(&endpoints_json(shared)),
        "/identity" => json_response(
            &shared
                .identity()
                .map_or_else(|| json!({ "state": "disabled" }), |i| i.to_json()),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The `/endpoints` document.
pub fn endpoints_json(shared: &Shared) -> Value {
    let set = shared.endpoints();
    let policy = shared.policy();
    let now = clock::now_ns();
    let peer_identity = shared.peer_tls().map(|t| t.peer_identity().to_string());
    let views: Vec<EndpointView> = set
        .endpoints()
        .iter()
        .map(|e| {
            let LoadSnapshot {
                ewma_ms,
                inflight,
                samples,
                cost,
                warming,
            } = e.load.snapshot(now);
            EndpointView {
                name: e.name().to_owned(),
                address: e.addr().to_string(),
                local: e.is_local(),
                eligibility: e.eligibility(now),
                ewma_ms,
                inflight,
                cost,
                samples,
                slow_start: warming,
                consecutive_failures: e.health.consecutive_failures(),
                idle_connections: e.pool.idle_count(),
                outlier: e.outlier.state(now),
                breaker: e.breaker.snapshot(now, &policy.resilience.breaker),
                pending: e.pending.held(),
                peer_identity: peer_identity.clone().filter(|_| !e.is_local()),
            }
        })
        .collect();
    let r = &shared.resilience;
    let ejections = set.ejections();
    json!({
        "version": set.version(),
        "mutualTls": shared.peer_tls().is_some(),
        "endpoints": views,
        "resilience": {
            "ejected": ejections.ejected(),
            "ejectionsTotal": ejections.lifetime(),
            "panic": ejections.in_panic(),
            "retryBudget": r.budget.snapshot(now, set.len()),
            "shedding": r.shedder.snapshot(),
            "localHealth": {
                "verdict": r.local_health.verdict(),
                "detail": r.local_health.detail(),
            },
        },
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_response(value: &Value) -> Response<ResponseBody> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = Response::new(ResponseBody::full(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
