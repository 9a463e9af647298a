//! The operator's HTTP endpoints: `/healthz` (503 when the controller loop is stuck, see
//! [`crate::progress`]), `/readyz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::warn;

use crate::controller::WatchHealth;

/// What the endpoints report on.
pub struct Admin {
    /// Metrics registry rendered by `/metrics`.
    pub registry: Registry,
    /// Watch health behind `/readyz`.
    pub health: Arc<WatchHealth>,
    /// Whether this replica is a standby (ready without watches: it can take over).
    pub standby: Arc<std::sync::atomic::AtomicBool>,
    /// Reconcile progress behind `/healthz`.
    pub progress: Arc<crate::progress::Progress>,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

impl Admin {
    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        match request.uri().path() {
            "/healthz" | "/livez" => match self.progress.stuck() {
                // A standby runs no controller: nothing to be stuck.
                Some(why) if !self.standby.load(std::sync::atomic::Ordering::Acquire) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("controller stuck: {why}\n"),
                ),
                _ => text(StatusCode::OK, "ok\n"),
            },
            "/readyz" => {
                if self.standby.load(std::sync::atomic::Ordering::Acquire) {
                    text(StatusCode::OK, "standby\n")
                } else if self.health.is_ready() {
                    text(StatusCode::OK, "ok\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "watches not ready\n")
                }
            }
            "/metrics" => {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &self.registry) {
                    Ok(()) => {
                        let mut response = text(StatusCode::OK, body);
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static(
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                        );
                        response
                    }
                    Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// Serves the endpoints on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, admin: Arc<Admin>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = admin.respond(&request);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            if let Err(error) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                warn!(%error, "admin connection");
            }
        });
    }
}
