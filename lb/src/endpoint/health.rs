//! Transport health of one endpoint: the minimal passive signal the core needs.
//!
//! A refused or failed connection marks the endpoint down at once (nothing can be served
//! there), other transport errors after [`CONSECUTIVE_FAILURES`] in a row. A down endpoint is
//! skipped until its backoff ends, then gets traffic again: one more failure doubles the
//! backoff (from [`BASE_BACKOFF`] up to [`MAX_BACKOFF`], jittered), a success clears it.
//!
//! Failures are observations of the endpoint's state, not votes: an attempt that was already
//! under way when the endpoint was marked down, or that fails while it is down, saw the same
//! outage and changes nothing. So a burst of concurrent connects that fail together (a full
//! listen backlog, a restart) counts once and cannot compound the backoff by concurrency, and a
//! replica that answers again is back within about a second. The balancer still sends requests
//! to down endpoints when nothing else is left (panic routing, see `balance`), so no reachable
//! replica is ever turned away from memory. Richer outlier detection (5xx rates, ejection caps,
//! panic mode) belongs to the resilience layer.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use datastream_resilience::clock;

/// Transport errors in a row (other than connect failures) that mark an endpoint down.
pub const CONSECUTIVE_FAILURES: u32 = 5;
/// First backoff after an endpoint is marked down (Linkerd's connect backoff starts at 100 ms).
pub const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// Longest backoff: a replica that answers again takes traffic within about this long.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Share of a backoff added at random, so that many sidecars do not retry in step.
const JITTER: f64 = 0.1;

/// Health state of one endpoint.
#[derive(Debug, Default)]
pub struct Health {
    consecutive: AtomicU32,
    /// How many times in a row it was marked down, which sets the backoff.
    downs: AtomicU32,
    down_until_ns: AtomicU64,
    /// When it was last marked down: failures of attempts started earlier are not news.
    marked_down_ns: AtomicU64,
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

    /// Records the failure of an attempt that started at `started_ns`, marking the endpoint
    /// down when the failure is decisive. Returns whether the failure was news: not an attempt
    /// that started before the endpoint was last marked down, nor one that failed while it
    /// was down (see the module documentation).
    pub fn failure(&self, kind: Failure, started_ns: u64) -> bool {
        let now = clock::now_ns();
        self.last_failure_ns.store(now, Ordering::Relaxed);
        if self.down_until_ns.load(Ordering::Relaxed) > now
            || started_ns < self.marked_down_ns.load(Ordering::Relaxed)
        {
            return false;
        }
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if kind == Failure::Connect || n >= CONSECUTIVE_FAILURES {
            self.mark_down(now);
        }
        true
    }

    /// Takes the endpoint out of rotation for the next backoff period.
    pub fn mark_down(&self, now_ns: u64) {
        let downs = self.downs.fetch_add(1, Ordering::Relaxed).min(16);
        let backoff = BASE_BACKOFF.saturating_mul(1 << downs).min(MAX_BACKOFF);
        let backoff = backoff.mul_f64(1.0 + JITTER * rand::random::<f64>());
        let until = now_ns.saturating_add(u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX));
        self.down_until_ns.store(until, Ordering::Relaxed);
        self.marked_down_ns.store(now_ns, Ordering::Relaxed);
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
        health.failure(Failure::Connect, clock::now_ns());
        let down = health
            .down_for(clock::now_ns())
            .expect("down after a connect failure");
        assert!(down <= BASE_BACKOFF.mul_f64(1.0 + JITTER));
        // The backoff ends; the next attempt fails too: twice as long.
        health.down_until_ns.store(1, Ordering::Relaxed);
        health.failure(Failure::Connect, clock::now_ns());
        let down = health.down_for(clock::now_ns()).expect("down again");
        assert!(
            down > BASE_BACKOFF.mul_f64(1.0 + JITTER),
            "doubled: {down:?}"
        );
        health.success();
        assert_eq!(health.downs.load(Ordering::Relaxed), 0);
    }

    /// 100 connects that fail together are one observation: the backoff stays the first one,
    /// and failures while down do not extend it.
    #[test]
    fn concurrent_failures_do_not_compound_the_backoff() {
        let health = Health::default();
        let started = clock::now_ns();
        for _ in 0..100 {
            health.failure(Failure::Connect, started);
        }
        assert_eq!(health.downs.load(Ordering::Relaxed), 1);
        let down = health.down_for(clock::now_ns()).expect("down");
        assert!(down <= BASE_BACKOFF.mul_f64(1.0 + JITTER), "{down:?}");
        // Attempts that started before the mark-down, failing after the backoff: still old news.
        health.down_until_ns.store(1, Ordering::Relaxed);
        health.failure(Failure::Connect, started);
        assert_eq!(health.down_for(clock::now_ns()), None);
        assert_eq!(health.downs.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_backoff_never_exceeds_about_a_second() {
        let health = Health::default();
        for _ in 0..40 {
            health.down_until_ns.store(1, Ordering::Relaxed);
            health.failure(Failure::Connect, clock::now_ns());
        }
        let down = health.down_for(clock::now_ns()).expect("down");
        assert!(down <= MAX_BACKOFF.mul_f64(1.0 + JITTER), "{down:?}");
    }

    #[test]
    fn transport_failures_need_a_run() {
        let health = Health::default();
        for _ in 1..CONSECUTIVE_FAILURES {
            health.failure(Failure::Transport, clock::now_ns());
        }
        assert_eq!(health.down_for(clock::now_ns()), None);
        health.failure(Failure::Transport, clock::now_ns());
        assert!(health.down_for(clock::now_ns()).is_some());
    }
}
