//! Every response the sidecar makes up itself comes from here: one error type, one mapping to
//! status, `x-datastream-error` code and body.

use std::error::Error as StdError;

use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use super::ResponseBody;
use datastream_http::body::{BodyTooLarge, RequestBodyError};
use datastream_lb::endpoint::ConnectError;

/// Header naming the sidecar's own error, so clients can tell it from the workload's answers.
pub const ERROR_HEADER: &str = "x-datastream-error";

/// Why the sidecar answered instead of a replica.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No replica can take the request.
    #[error("no healthy endpoint is available")]
    NoHealthyEndpoints,
    /// The peer listener has no local workload to deliver to.
    #[error("no local workload is configured or known")]
    NoLocalWorkload,
    /// Every connection attempt failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The upstream failed after the request was sent.
    #[error("the upstream failed")]
    Upstream(#[source] hyper::Error),
    /// The upstream failed after the request was sent (own HTTP/1 client).
    #[error("the upstream failed")]
    UpstreamH1(#[source] datastream_http::h1::client::ClientError),
    /// The request body was larger than allowed.
    #[error(transparent)]
    BodyTooLarge(#[from] BodyTooLarge),
    /// The request was malformed.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A deadline expired (used by the resilience layer).
    #[error("the request timed out")]
    Timeout,
    /// The adaptive concurrency limit shed the request.
    #[error(transparent)]
    Overloaded(#[from] datastream_resilience::shed::Overloaded),
    /// The route's rate limit refused the request.
    #[error("rate limit exceeded; retry in {retry_after_secs}s")]
    RateLimited {
        /// Seconds until a request would be admitted (the `Retry-After` value).
        retry_after_secs: u64,
    },
    /// Every candidate replica was throttled by its breaker or at its concurrency cap.
    #[error("every replica is throttled by its circuit breaker or at its request cap")]
    CircuitOpen,
    /// A broadcast could not reach its quorum.
    #[error(transparent)]
    Broadcast(#[from] datastream_resilience::broadcast::BroadcastError),
    /// Reading the client's body (to make it replayable) failed.
    #[error("reading the request body failed")]
    ClientBody(#[source] datastream_http::body::ClientBodyError),
}

// === impl ProxyError ===

impl ProxyError {
    /// The status, error code and whether the connection must close.
    pub fn classify(&self) -> (StatusCode, &'static str, bool) {
        match self {
            ProxyError::NoHealthyEndpoints => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no-healthy-endpoints",
                false,
            ),
            ProxyError::NoLocalWorkload => {
                (StatusCode::SERVICE_UNAVAILABLE, "no-local-workload", false)
            }
            ProxyError::Connect(_) => (StatusCode::BAD_GATEWAY, "upstream-connect-failed", false),
            ProxyError::Upstream(e) => {
                if let Some(RequestBodyError::TooLarge(_)) = find_cause::<RequestBodyError>(e) {
                    (StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", true)
                } else if e.is_user() {
                    // The client's side failed (its body broke off): nothing to blame upstream for.
                    (StatusCode::BAD_REQUEST, "client-body-failed", true)
                } else {
                    (StatusCode::BAD_GATEWAY, "upstream-failed", false)
                }
            }
            ProxyError::UpstreamH1(_) => (StatusCode::BAD_GATEWAY, "upstream-failed", false),
            ProxyError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", true),
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", true),
            ProxyError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout", false),
            ProxyError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", false),
            ProxyError::RateLimited { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "rate-limited", false)
            }
            ProxyError::CircuitOpen => (StatusCode::SERVICE_UNAVAILABLE, "circuit-open", false),
            ProxyError::Broadcast(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "broadcast-quorum-unreachable",
                false,
            ),
            ProxyError::ClientBody(_) => (StatusCode::BAD_REQUEST, "client-body-failed", true),
        }
    }

    /// Whether the failure lies with the upstream replica (for health accounting).
    pub fn blames_upstream(&self) -> bool {
        matches!(self, ProxyError::Connect(_) | ProxyError::UpstreamH1(_))
            || matches!(self, ProxyError::Upstream(e) if !e.is_user())
    }

    /// The response to send.
    pub fn into_response(self) -> Response<ResponseBody> {
        let (status, code, close) = self.classify();
        let mut resp = Response::new(ResponseBody::full(format!("{code}: {self}\n")));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(ERROR_HEADER, HeaderValue::from_static(code));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if close {
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let ProxyError::RateLimited { retry_after_secs } = self {
            h.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        resp
    }
}

/// The first error of type `E` in the chain starting at `err`.
pub fn find_cause<'a, E: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}
