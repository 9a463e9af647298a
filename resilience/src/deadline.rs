//! The deadlines of one request: the caller's and the sidecar's own.
//!
//! - **The caller's deadline** comes from its `grpc-timeout` header or the documented
//!   [`DEADLINE_HEADER`] (`x-datastream-deadline-ms: <milliseconds>`) for plain HTTP callers, and
//!   counts from the request's arrival, like the caller's own clock: it bounds everything,
//!   including the time the caller spends streaming its request body. When the request is
//!   forwarded, the caller's remaining time is written back into the header it used, so the
//!   workload (and any service it calls) sees the caller's deadline, less the time spent here.
//! - **The sidecar's own timeout** (the route's or the policy's `requestTimeout`) counts from the
//!   end of the request body, as Envoy's route timeout does, until the response headers: an
//!   upload or a client-streaming call takes as long as the client needs to send it, and a
//!   streaming response is not cut once its headers are out (stalls are the stream idle
//!   timeout's job). It is never advertised to the workload: a deadline the caller did not ask
//!   for would change the workload's behaviour (a gRPC server cancels the call when it passes).
//!
//! The effective deadline is the earlier of the two. Every attempt is bounded by what remains,
//! and no retry starts once the time left is shorter than the replica's expected latency.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

/// Request header carrying the caller's remaining time in milliseconds.
pub const DEADLINE_HEADER: &str = "x-datastream-deadline-ms";
/// gRPC's deadline header.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

// The two names as header names: they are looked up in every request, and a name given as a
// string is parsed and validated again at each lookup (a few hundred instructions each).
static DEADLINE_NAME: HeaderName = HeaderName::from_static(DEADLINE_HEADER);
static GRPC_TIMEOUT_NAME: HeaderName = HeaderName::from_static(GRPC_TIMEOUT);
/// What [`Deadline::remaining`] reports while no deadline is running (a streamed request body
/// without a caller deadline): long enough to be "never" for a request, short enough that a
/// timer set from it stays within the timer wheel's range.
pub const UNBOUNDED: Duration = Duration::from_secs(365 * 24 * 3600);

/// The deadlines of one request, on the [`crate::clock`] time line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// The earlier of the caller's and the sidecar's deadline; `u64::MAX` while neither runs.
    at_ns: u64,
    /// The caller's deadline, when its headers set one.
    caller_ns: Option<u64>,
}

// === impl Deadline ===

impl Deadline {
    /// The deadlines of a request that arrived at `arrived_ns` with `headers`: the caller's
    /// runs from now; the sidecar's own starts with [`Self::body_ended`].
    pub fn new(arrived_ns: u64, headers: &HeaderMap) -> Self {
        let caller_ns = caller_timeout(headers)
            .map(|t| arrived_ns.saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)));
        Self {
            at_ns: caller_ns.unwrap_or(u64::MAX),
            caller_ns,
        }
    }

    /// The request body ended at `now_ns`: the sidecar's own `timeout` starts running.
    #[inline]
    pub fn body_ended(&mut self, now_ns: u64, timeout: Duration) {
        let own = now_ns.saturating_add(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX));
        self.at_ns = self.at_ns.min(own);
    }

    /// When the effective deadline passes, on the [`crate::clock`] time line; `u64::MAX` while
    /// none runs.
    #[inline]
    pub fn at_ns(&self) -> u64 {
        self.at_ns
    }

    /// When the caller's deadline passes, if it set one.
    #[inline]
    pub fn caller_ns(&self) -> Option<u64> {
        self.caller_ns
    }

    /// Time left at `now_ns` (zero once passed, [`UNBOUNDED`] while no deadline runs).
    #[inline]
    pub fn remaining(&self, now_ns: u64) -> Duration {
        if self.at_ns == u64::MAX {
            return UNBOUNDED;
        }
        Duration::from_nanos(self.at_ns.saturating_sub(now_ns)).min(UNBOUNDED)
    }

    /// Whether the deadline has passed.
    #[inline]
    pub fn expired(&self, now_ns: u64) -> bool {
        now_ns >= self.at_ns
    }

    /// Whether the caller's deadline is the one that binds.
    #[inline]
    pub fn from_caller(&self) -> bool {
        self.caller_ns == Some(self.at_ns)
    }

    /// The timeout of the next attempt: the per-try timeout if set, never beyond the deadline.
    #[inline]
    pub fn attempt_timeout(&self, now_ns: u64, per_try: Option<Duration>) -> Duration {
        let left = self.remaining(now_ns);
        per_try.map_or(left, |p| p.min(left))
    }

    /// Whether an attempt expected to take `expected` (a replica's latency estimate), after
    /// waiting `backoff`, can still finish before the deadline.
    #[inline]
    pub fn can_start(&self, now_ns: u64, backoff: Duration, expected: Duration) -> bool {
        self.remaining(now_ns) > backoff.saturating_add(expected)
    }

    /// Writes the caller's remaining time into the header(s) it used: `grpc-timeout`, the
    /// DataStream header, or both. The sidecar's own timeout is never advertised.
    pub fn propagate(&self, now_ns: u64, headers: &mut HeaderMap) {
        let Some(caller) = self.caller_ns else {
            // Most requests: no header to look up again.
            return;
        };
        let left = Duration::from_nanos(caller.saturating_sub(now_ns));
        if headers.contains_key(&GRPC_TIMEOUT_NAME) {
            headers.insert(&GRPC_TIMEOUT_NAME, encode_grpc_timeout(left));
        }
        if headers.contains_key(&DEADLINE_NAME) {
            let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            headers.insert(&DEADLINE_NAME, HeaderValue::from(ms));
        }
    }
}

/// Requests with at most this many field lines are searched by one pass over their names.
const SCAN_FIELDS: usize = 16;

/// The shortest caller-supplied timeout among the request's headers, if any is valid.
pub fn caller_timeout(headers: &HeaderMap) -> Option<Duration> {
    if headers.len() > SCAN_FIELDS {
        return caller_timeout_of(headers.get(&GRPC_TIMEOUT_NAME), headers.get(&DEADLINE_NAME));
    }
    // Nearly every request carries neither field, and few fields: comparing each name (a tag
    // comparison for the standard ones) costs less than hashing both names for two lookups.
    let (mut grpc, mut ours) = (None, None);
    for (name, value) in headers {
        if *name == GRPC_TIMEOUT_NAME {
            grpc = grpc.or(Some(value));
        } else if *name == DEADLINE_NAME {
            ours = ours.or(Some(value));
        }
    }
    caller_timeout_of(grpc, ours)
}

/// [`caller_timeout`] of the two header values.
fn caller_timeout_of(grpc: Option<&HeaderValue>, ours: Option<&HeaderValue>) -> Option<Duration> {
    let grpc = grpc.and_then(|v| parse_grpc_timeout(v.as_bytes()));
    let ours = ours
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    match (grpc, ours) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit among `H M S m u n`.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n.checked_mul(3600)?),
        b'M' => Duration::from_secs(n.checked_mul(60)?),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes a duration as a `grpc-timeout` value, in the finest unit whose value fits 8 digits.
pub fn encode_grpc_timeout(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let candidates = [
        (d.as_nanos(), 'n'),
        (d.as_micros(), 'u'),
        (d.as_millis(), 'm'),
        (u128::from(d.as_secs()), 'S'),
        (u128::from(d.as_secs() / 60), 'M'),
        (u128::from(d.as_secs() / 3600), 'H'),
    ];
    let (n, unit) = candidates
        .into_iter()
        .find(|(n, _)| *n <= MAX)
        .unwrap_or((MAX, 'H'));
    HeaderValue::from_str(&format!("{n}{unit}")).unwrap_or(HeaderValue::from_static("0n"))
}

#[cfg(test)]
mod tests;
