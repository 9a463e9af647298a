//! The caller's deadline, bounding the whole attempt chain.
//!
//! A request's deadline is the earliest of: its route's (or the policy's) request timeout, a
//! gRPC caller's `grpc-timeout` header, and the documented [`DEADLINE_HEADER`]
//! (`x-datastream-deadline-ms: <milliseconds>`) for plain HTTP callers. Every attempt is bounded
//! by what remains, no retry starts once the time left is shorter than the replica's expected
//! latency, and the remaining time is written back into the forwarded request's headers so
//! the workload (and any service it calls) sees the same deadline.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};

/// Request header carrying the caller's remaining time in milliseconds.
pub const DEADLINE_HEADER: &str = "x-datastream-deadline-ms";
/// gRPC's deadline header.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The deadline of one request, on the [`crate::clock`] time line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at_ns: u64,
    /// Whether the caller set it (rather than the sidecar's own timeout).
    from_caller: bool,
    /// Whether the request carries a deadline header at all, to be rewritten when forwarded.
    advertised: bool,
}

// === impl Deadline ===

impl Deadline {
    /// The deadline of a request that arrived at `now_ns` with `headers`, under the route's
    /// `timeout`.
    pub fn new(now_ns: u64, timeout: Duration, headers: &HeaderMap) -> Self {
        let grpc = headers.get(GRPC_TIMEOUT);
        let ours = headers.get(DEADLINE_HEADER);
        let caller = caller_timeout_of(grpc, ours);
        let (budget, from_caller) = match caller {
            Some(c) if c < timeout => (c, true),
            _ => (timeout, false),
        };
        Self {
            at_ns: now_ns.saturating_add(u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX)),
            from_caller,
            advertised: grpc.is_some() || ours.is_some(),
        }
    }

    /// When it passes, on the [`crate::clock`] time line.
    #[inline]
    pub fn at_ns(&self) -> u64 {
        self.at_ns
    }

    /// Time left at `now_ns` (zero once passed).
    #[inline]
    pub fn remaining(&self, now_ns: u64) -> Duration {
        Duration::from_nanos(self.at_ns.saturating_sub(now_ns))
    }

    /// Whether the deadline has passed.
    #[inline]
    pub fn expired(&self, now_ns: u64) -> bool {
        now_ns >= self.at_ns
    }

    /// Whether the caller's header set the deadline.
    #[inline]
    pub fn from_caller(&self) -> bool {
        self.from_caller
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

    /// Writes the time left into the forwarded request: `grpc-timeout` when the caller used
    /// it, and the DataStream header when the caller used that. A deadline the sidecar set
    /// itself is not advertised, so the workload's own behaviour does not change.
    pub fn propagate(&self, now_ns: u64, headers: &mut HeaderMap) {
        if !self.advertised {
            // Most requests: no header to look up again.
            return;
        }
        let left = self.remaining(now_ns);
        if headers.contains_key(GRPC_TIMEOUT) {
            headers.insert(GRPC_TIMEOUT, encode_grpc_timeout(left));
        }
        if headers.contains_key(DEADLINE_HEADER) {
            let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            headers.insert(DEADLINE_HEADER, HeaderValue::from(ms));
        }
    }
}

/// The shortest caller-supplied timeout among the request's headers, if any is valid.
#[inline]
pub fn caller_timeout(headers: &HeaderMap) -> Option<Duration> {
    caller_timeout_of(headers.get(GRPC_TIMEOUT), headers.get(DEADLINE_HEADER))
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
