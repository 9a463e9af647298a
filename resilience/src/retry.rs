//! When an attempt that failed may be tried again, how long to wait first, and whether the
//! request body can be sent twice.
//!
//! The rules, strictest first:
//!
//! - An attempt that provably never reached a replica (the connection could not be opened, a
//!   pooled connection handed the request back unsent, an HTTP/2 stream was refused) is retried
//!   for every method: nothing was processed, so nothing can be done twice.
//! - An attempt that may have reached a replica is retried only when the request is safe to
//!   repeat (an idempotent method per RFC 9110 §9.2.2, or a route that says its workload
//!   deduplicates) *and* the failure is one of the configured conditions.
//! - The body must be replayable: empty, or small enough to have been buffered before the first
//!   attempt ([`MAX_REPLAY_BYTES`] by default, the figure Linkerd settled on for gRPC).

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};

/// Largest request body buffered so that it can be sent again.
pub const MAX_REPLAY_BYTES: u64 = 64 * 1024;

/// How one attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The request provably never reached the replica.
    NotSent,
    /// The replica answered with this status.
    Status(StatusCode),
    /// The connection broke after the request may have been (partly) sent.
    Reset,
    /// The per-try timeout expired before response headers arrived.
    PerTryTimeout,
}

/// A failure that a retry policy may name as retryable (the API's `retryOn` values, which the
/// sidecar's config layer maps onto these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCondition {
    /// Any 5xx answer.
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// The connection broke after the request may have been sent.
    Reset,
    /// The connection could not be opened.
    ConnectFailure,
    /// The per-try timeout expired.
    PerTryTimeout,
}

/// Why an attempt is retried; also the `reason` label of the retry metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// The request never reached a replica.
    NotSent,
    /// A 5xx answer (`5xx` condition).
    ServerError,
    /// A 502, 503 or 504 answer (`gateway-error` condition).
    GatewayError,
    /// The connection broke (`reset` condition).
    Reset,
    /// The per-try timeout expired (`per-try-timeout` condition).
    PerTryTimeout,
    /// A hedge: a second attempt while the first is slower than the route's usual latency.
    Hedge,
}

/// The set of configured retry conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conditions(u8);

/// A compiled retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Most retries after the first attempt for requests that may have reached a replica.
    pub attempts: u32,
    /// Conditions that make such an attempt retryable.
    pub conditions: Conditions,
    /// Waiting time before each retry.
    pub backoff: Backoff,
    /// Retry non-idempotent methods too (the route's workload deduplicates).
    pub non_idempotent: bool,
}

/// Exponential backoff with full jitter: the n-th retry waits a uniformly random time in
/// `[0, min(max, base * 2^(n-1))]`, which spreads retries of many clients apart (the AWS
/// "full jitter" result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Upper bound of the first wait.
    pub base: Duration,
    /// Upper bound of every wait.
    pub max: Duration,
}

/// What to do with a request body so that it can be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// No body: any attempt can resend the head alone.
    Empty,
    /// A body of known, small length: buffer it before the first attempt.
    Buffer(u64),
    /// A body too large or of unknown length: stream it once; only a request handed back
    /// unsent can be retried.
    Stream,
}

// === impl RetryReason ===

impl RetryReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::NotSent => "not-sent",
            RetryReason::ServerError => "5xx",
            RetryReason::GatewayError => "gateway-error",
            RetryReason::Reset => "reset",
            RetryReason::PerTryTimeout => "per-try-timeout",
            RetryReason::Hedge => "hedge",
        }
    }

    /// Every reason, for pre-registering metric handles.
    pub const ALL: [RetryReason; 6] = [
        RetryReason::NotSent,
        RetryReason::ServerError,
        RetryReason::GatewayError,
        RetryReason::Reset,
        RetryReason::PerTryTimeout,
        RetryReason::Hedge,
    ];
}

// === impl Conditions ===

impl Conditions {
    fn bit(on: RetryCondition) -> u8 {
        match on {
            RetryCondition::ServerError => 1,
            RetryCondition::GatewayError => 2,
            RetryCondition::Reset => 4,
            RetryCondition::ConnectFailure => 8,
            RetryCondition::PerTryTimeout => 16,
        }
    }

    /// The set of `list`.
    pub fn from_list(list: &[RetryCondition]) -> Self {
        Self(list.iter().fold(0, |acc, on| acc | Self::bit(*on)))
    }

    /// Whether `on` is in the set.
    #[inline]
    pub fn contains(self, on: RetryCondition) -> bool {
        self.0 & Self::bit(on) != 0
    }
}

impl FromIterator<RetryCondition> for Conditions {
    fn from_iter<I: IntoIterator<Item = RetryCondition>>(conditions: I) -> Self {
        Self(
            conditions
                .into_iter()
                .fold(0, |acc, on| acc | Self::bit(on)),
        )
    }
}

// === impl RetryPolicy ===

impl RetryPolicy {
    /// The reason to retry an attempt of a `method` request that ended with `outcome`, or
    /// `None` when it must not be retried. Attempt counts and budgets are checked elsewhere.
    pub fn classify(&self, method: &Method, outcome: Outcome) -> Option<RetryReason> {
        if outcome == Outcome::NotSent {
            return Some(RetryReason::NotSent);
        }
        if self.attempts == 0 || !(self.non_idempotent || is_idempotent(method)) {
            return None;
        }
        let c = self.conditions;
        match outcome {
            Outcome::NotSent => Some(RetryReason::NotSent),
            Outcome::Reset => c
                .contains(RetryCondition::Reset)
                .then_some(RetryReason::Reset),
            Outcome::PerTryTimeout => c
                .contains(RetryCondition::PerTryTimeout)
                .then_some(RetryReason::PerTryTimeout),
            Outcome::Status(s) => {
                let gateway = matches!(s.as_u16(), 502..=504);
                if gateway && c.contains(RetryCondition::GatewayError) {
                    Some(RetryReason::GatewayError)
                } else if s.is_server_error() && c.contains(RetryCondition::ServerError) {
                    Some(RetryReason::ServerError)
                } else {
                    None
                }
            }
        }
    }

    /// Whether a response with `status` is one this policy would retry (so the proxy knows to
    /// hold it back rather than stream it to the client).
    pub fn retries_status(&self, status: StatusCode) -> bool {
        let c = self.conditions;
        (matches!(status.as_u16(), 502..=504) && c.contains(RetryCondition::GatewayError))
            || (status.is_server_error() && c.contains(RetryCondition::ServerError))
    }
}

/// Whether RFC 9110 defines `method` as idempotent.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

// === impl Backoff ===

impl Backoff {
    /// The wait before retry number `retry` (1 for the first), given a uniform random number
    /// `unit` in `[0, 1)`.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let doublings = retry.saturating_sub(1).min(20);
        let ceiling = self.base.saturating_mul(1 << doublings).min(self.max);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The wait before retry number `retry`, jittered with the thread's random generator.
    #[inline]
    pub fn jittered(&self, retry: u32) -> Duration {
        self.delay(retry, rand::random::<f64>())
    }
}

// === Replay ===

/// How the body of a request with `headers` can be made replayable, given the largest body
/// worth buffering. `end_stream` is what the body itself reports (an HTTP/2 request with
/// END_STREAM on its headers, or HTTP/1 without framing headers).
pub fn replay_plan(headers: &HeaderMap, end_stream: bool, limit: u64) -> Replay {
    if end_stream {
        return Replay::Empty;
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        return Replay::Stream;
    }
    match headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(0) => Replay::Empty,
        Some(n) if n <= limit => Replay::Buffer(n),
        _ => Replay::Stream,
    }
}

/// Why a body could not be buffered.
#[derive(Debug, thiserror::Error)]
pub enum BufferError<E> {
    /// More bytes arrived than announced or allowed.
    #[error("request body exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Reading the body failed.
    #[error("reading the request body failed")]
    Read(#[source] E),
}

/// Reads a whole body into memory, failing once it passes `limit` bytes.
pub async fn buffer<B>(body: B, limit: u64) -> Result<Bytes, BufferError<B::Error>>
where
    B: Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, limit_usize).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => match e.downcast::<B::Error>() {
            Ok(inner) => Err(BufferError::Read(*inner)),
            Err(_) => Err(BufferError::TooLarge { limit }),
        },
    }
}

#[cfg(test)]
mod tests;
