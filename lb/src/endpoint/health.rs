//! Transport health of one endpoint: the minimal passive signal the core needs.
//!
//! A refused or failed connection marks the endpoint down at once (nothing can be served
//! there), other transport errors after [`CONSECUTIVE_FAILURES`] in a row. A down endpoint is
//! skipped until its backoff ends, then gets traffic again on probation: one more failure
//! doubles the backoff, a success clears it. Richer outlier detection (5xx rates, ejection caps,
//! panic mode) belongs to the resilience layer, which can drive [`Health::mark_down`] itself.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use datastream_resilience::clock;

/// Transport errors in a row (other than connect failures) that mark an endpoint down.
pub const CONSECUTIVE_FAILURES: u32 = 5;
/// First backoff after an endpoint is marked down.
pub const BASE_BACKOFF: Duration = Duration::from_millis(500);
/// Longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Health state of one endpoint.
#[derive(Debug, Default)]
pub struct Health {
    consecutive: AtomicU32,
    /// How many times in a row it was marked down, which sets the backoff.
    downs: AtomicU32,
    down_until_ns: AtomicU64,
    last_failure_ns: AtomicU64,
}

/// What kind of failure an attempt met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connection or the protocol handshake failed.
    Connect,
    /// The connection broke while the request or response was in transit.
    Transport,
}

// === impl Health ===

impl Health {
    /// Records a success: the endpoint is healthy again. Returns whether it had been marked
    /// down, i.e. whether this success ends its probation (it is a returning replica).
    pub fn success(&self) -> bool {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        self.downs.load(Ordering::Relaxed) != 0 && self.downs.swap(0, Ordering::Relaxed) != 0
    }

    /// Records a failure, marking the endpoint down when the failure is decisive.
    pub fn failure(&self, kind: Failure) {
        let now = clock::now_ns();
        self.last_failure_ns.store(now, Ordering::Relaxed);
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if kind == Failure::Connect || n >= CONSECUTIVE_FAILURES {
            self.mark_down(now);
        }
    }

    /// Takes the endpoint out of rotation for the next backoff period.
    pub fn mark_down(&self, now_ns: u64) {
        let downs = self.downs.fetch_add(1, Ordering::Relaxed).min(16);
        let backoff = BASE_BACKOFF.saturating_mul(1 << downs).min(MAX_BACKOFF);
        let until = now_ns.saturating_add(u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX));
        self.down_until_ns.store(until, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
    }

    /// If down at `now_ns`, how long it stays down.
    #[inline]
    pub fn down_for(&self, now_ns: u64) -> Option<Duration> {
        let until = self.down_until_ns.load(Ordering::Relaxed);
        (until > now_ns).then(|| clock::since(now_ns, until))
    }

    /// Time since the last failure, if there was one.
    #[inline]
    pub fn since_failure(&self, now_ns: u64) -> Option<Duration> {
        let last = self.last_failure_ns.load(Ordering::Relaxed);
        (last != 0).then(|| clock::since(last, now_ns))
    }

    /// Transport failures in a row.
    #[inline]
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failure_marks_down_and_success_resets_backoff() {
        let health = Health::default();
        let now = clock::now_ns();
        assert_eq!(health.down_for(now), None);
        health.failure(Failure::Connect);
        let down = health
            .down_for(clock::now_ns())
            .expect("down after a connect failure");
        assert!(down <= BASE_BACKOFF);
        health.failure(Failure::Connect);
        let down = health.down_for(clock::now_ns()).expect("still down");
        assert!(down > BASE_BACKOFF, "second failure doubles the backoff");
        health.success();
        assert_eq!(health.downs.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn transport_failures_need_a_run() {
        let health = Health::default();
        for _ in 1..CONSECUTIVE_FAILURES {
            health.failure(Failure::Transport);
        }
        assert_eq!(health.down_for(clock::now_ns()), None);
        health.failure(Failure::Transport);
        assert!(health.down_for(clock::now_ns()).is_some());
    }
}
