//! Every response the sidecar makes up itself comes from here: one error type, one mapping to
//! status, `x-datastream-error` code and body.

use std::error::Error as StdError;

use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use super::ResponseBody;
use datastream_http::body::{BodyTooLarge, RequestBodyError};
use datastream_http::h1::client::ClientError;
use datastream_http::stream::BodyFailure;
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
    /// The upstream's answer broke a protocol rule the sidecar cannot repair.
    #[error("invalid upstream response: {0}")]
    UpstreamProtocol(&'static str),
    /// A method the sidecar does not implement (CONNECT, TRACE).
    #[error("{0} is not implemented")]
    NotImplemented(&'static str),
    /// The client's streamed body broke off.
    #[error("the request body broke off")]
    ClientAborted,
    /// The client's body stalled for the stream idle timeout.
    #[error("the request body sent nothing for {0:?}")]
    ClientIdle(std::time::Duration),
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
                let cause = find_cause::<RequestBodyError>(e);
                if let Some(RequestBodyError::TooLarge(_)) = cause {
                    (StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", true)
                } else if let Some(RequestBodyError::Idle(_)) = cause {
                    (StatusCode::REQUEST_TIMEOUT, "stream-idle-timeout", true)
                } else if e.is_parse_too_large() {
                    (StatusCode::BAD_GATEWAY, "upstream-header-too-large", false)
                } else if e.is_user() {
                    // The client's side failed (its body broke off): nothing to blame upstream for.
                    (StatusCode::BAD_REQUEST, "client-body-failed", true)
                } else {
                    (StatusCode::BAD_GATEWAY, "upstream-failed", false)
                }
            }
            ProxyError::UpstreamH1(ClientError::HeadTooLarge { .. }) => {
                (StatusCode::BAD_GATEWAY, "upstream-header-too-large", false)
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
            ProxyError::ClientIdle(_) => (StatusCode::REQUEST_TIMEOUT, "stream-idle-timeout", true),
            ProxyError::ClientAborted => (StatusCode::BAD_REQUEST, "client-body-failed", true),
            ProxyError::UpstreamProtocol(_) => (StatusCode::BAD_GATEWAY, "upstream-failed", false),
            ProxyError::NotImplemented(_) => {
                (StatusCode::NOT_IMPLEMENTED, "method-not-implemented", false)
            }
        }
    }

    /// The gRPC status a gRPC client gets for this error (gRPC's status codes, as its HTTP
    /// mapping would give them, refined where the sidecar knows more: its own deadline is
    /// DEADLINE_EXCEEDED, shedding and rate limiting are RESOURCE_EXHAUSTED).
    pub fn grpc_status(&self) -> GrpcStatus {
        match self.classify().1 {
            "timeout" => GrpcStatus::DeadlineExceeded,
            "overloaded" | "rate-limited" | "body-too-large" => GrpcStatus::ResourceExhausted,
            "client-body-failed" | "stream-idle-timeout" => GrpcStatus::Cancelled,
            "bad-request" | "upstream-header-too-large" => GrpcStatus::Internal,
            "method-not-implemented" => GrpcStatus::Unimplemented,
            _ => GrpcStatus::Unavailable,
        }
    }

    /// Whether the failure lies with the upstream replica (for health accounting).
    pub fn blames_upstream(&self) -> bool {
        match self {
            ProxyError::Connect(_) => true,
            // A head over the limits is an answer: the replica works, the sidecar cannot relay it.
            ProxyError::UpstreamH1(e) => !matches!(e, ClientError::HeadTooLarge { .. }),
            ProxyError::Upstream(e) => !e.is_user() && !e.is_parse_too_large(),
            _ => false,
        }
    }

    /// The response to send: to a gRPC client (`grpc`), a trailers-only gRPC response.
    pub fn into_response(self, grpc: bool) -> Response<ResponseBody> {
        if grpc {
            return self.into_grpc_response();
        }
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

impl ProxyError {
    /// The error for a request whose streamed body failed on the client's side.
    pub fn from_body_failure(
        failure: BodyFailure,
        policy: &crate::policy::Policy,
        settings: &datastream_resilience::Settings,
    ) -> Self {
        match failure {
            BodyFailure::Stalled => {
                ProxyError::ClientIdle(settings.stream_idle_timeout.unwrap_or_default())
            }
            BodyFailure::TooLarge => ProxyError::BodyTooLarge(BodyTooLarge {
                limit: policy.max_body.unwrap_or(u64::MAX),
            }),
            BodyFailure::Client => ProxyError::ClientAborted,
        }
    }

    /// A gRPC "trailers-only" response (HTTP 200, the status in the header block that ends the
    /// stream), so that gRPC clients see the real reason instead of an HTTP error mapped to
    /// UNAVAILABLE or INTERNAL. The `x-datastream-error` code is there too.
    fn into_grpc_response(self) -> Response<ResponseBody> {
        let code = self.classify().1;
        let status = self.grpc_status();
        let mut resp = Response::new(ResponseBody::empty());
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(GRPC_STATUS, HeaderValue::from(u16::from(status as u8)));
        if let Ok(v) = HeaderValue::from_str(&grpc_message(&format!("{code}: {self}"))) {
            h.insert(GRPC_MESSAGE, v);
        }
        h.insert(ERROR_HEADER, HeaderValue::from_static(code));
        if let ProxyError::RateLimited { retry_after_secs } = self {
            // gRPC's retry pushback (gRFC A6), in milliseconds.
            h.insert(
                GRPC_RETRY_PUSHBACK,
                HeaderValue::from(retry_after_secs.saturating_mul(1000)),
            );
        }
        resp
    }
}

/// The gRPC status codes the sidecar answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GrpcStatus {
    /// The client cancelled (its body broke off or stalled).
    Cancelled = 1,
    /// The deadline passed.
    DeadlineExceeded = 4,
    /// Shed, rate-limited, or a message over the size limit.
    ResourceExhausted = 8,
    /// A method the sidecar does not implement.
    Unimplemented = 12,
    /// A malformed request.
    Internal = 13,
    /// No replica could serve it; retrying later may succeed.
    Unavailable = 14,
}

const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";
const GRPC_RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// Whether a request is a gRPC call (`application/grpc`, `application/grpc+proto`, ...; not
/// gRPC-Web, whose clients read statuses from the body).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"application/grpc") && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// A `grpc-message` value: percent-encoded outside printable ASCII, and `%` itself (gRPC's
/// HTTP/2 protocol spec).
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
