//! The retry budget: retries may add at most a fraction of recent traffic, plus a small floor
//! per second so that low traffic can still retry (Linkerd's and Envoy's model, 20% and
//! 10/s by default). Two additions make it safer under a real outage:
//!
//! - **Adaptive ratio (AIMD).** The ratio in force starts at the configured one. Every retry
//!   that succeeds raises it additively (by a tenth of the configured ratio, never above it);
//!   every retry that fails halves it (never below [`MIN_RATIO_SHARE`] of the configured one).
//!   Retries that keep failing are pure extra load, so the budget shrinks exactly when
//!   retrying stops helping, and grows back as soon as it helps again.
//! - **Correlated failures stop retries.** When, over the last [`CORRELATION_WINDOW`],
//!   most attempts failed and the failures came from most replicas, the problem is not one
//!   replica (a shared dependency, a bad deploy, an overload): a retry would just hit the next
//!   failing replica. Retries of requests that may have reached a replica are then refused
//!   outright; retries of requests that never reached one (a refused connection costs the
//!   replica nothing) still draw on the normal budget.

use std::time::Duration;

use parking_lot::Mutex;

use super::window::{Counts, Window};

/// The window over which requests and retries are counted (Linkerd's TTL).
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// The window over which failures are checked for correlation: short, so retries resume soon
/// after a shared outage ends.
pub const CORRELATION_WINDOW: Duration = Duration::from_secs(2);
/// Share of attempts that must have failed for failures to count as correlated.
pub const CORRELATED_FAILURE_SHARE: f64 = 0.5;
/// Share of replicas that must have failed for failures to count as correlated.
pub const CORRELATED_REPLICA_SHARE: f64 = 0.75;
/// Fewest failed attempts before correlation is judged (a handful of failures proves nothing).
pub const CORRELATION_MIN_FAILURES: u64 = 10;
/// The adaptive ratio never falls below this share of the configured ratio.
pub const MIN_RATIO_SHARE: f64 = 0.1;

const BUDGET_BUCKETS: usize = 10;
const CORRELATION_BUCKETS: usize = 10;

/// Budget settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries may add at most this fraction of recent requests.
    pub ratio: f64,
    /// Retries allowed per second whatever the ratio.
    pub min_per_second: u32,
}

/// Whether a retry would reach a replica that may already have processed the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// The previous attempt never reached a replica.
    Unsent,
    /// The previous attempt may have been processed.
    Repeat,
}

/// Why the budget refused a retry; also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Retries already used the budget of the window.
    Exhausted,
    /// Failures are correlated across replicas; retrying would not help.
    Correlated,
}

/// What `/endpoints` and tests can see of the budget.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetSnapshot {
    /// The ratio in force (adapted).
    pub ratio: f64,
    /// First attempts in the window.
    pub requests: u64,
    /// Retries in the window.
    pub retries: u64,
    /// Retries still allowed in the window.
    pub available: u64,
    /// Whether failures are currently judged correlated.
    pub correlated: bool,
}

/// A retry budget shared by the requests of one sidecar.
#[derive(Debug)]
pub struct RetryBudget {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: BudgetConfig,
    ratio: f64,
    traffic: Window<Traffic>,
    failures: Window<Failures>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Traffic {
    requests: u64,
    retries: u64,
}

impl Counts for Traffic {
    fn merge(&mut self, o: &Self) {
        self.requests += o.requests;
        self.retries += o.retries;
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    attempts: u64,
    failed: u64,
    /// One bit per replica (by a hash of its identity) that failed.
    replicas: u64,
}

impl Counts for Failures {
    fn merge(&mut self, o: &Self) {
        self.attempts += o.attempts;
        self.failed += o.failed;
        self.replicas |= o.replicas;
    }
}

// === impl RetryBudget ===

impl RetryBudget {
    /// A full budget.
    pub fn new(config: BudgetConfig) -> Self {
        let ratio = config.ratio.clamp(0.0, 1000.0);
        Self {
            inner: Mutex::new(Inner {
                config: BudgetConfig { ratio, ..config },
                ratio,
                traffic: Window::new(BUDGET_WINDOW, BUDGET_BUCKETS),
                failures: Window::new(CORRELATION_WINDOW, CORRELATION_BUCKETS),
            }),
        }
    }

    /// The configuration.
    #[inline]
    pub fn config(&self) -> BudgetConfig {
        self.inner.lock().config
    }

    /// Applies a new configuration (a policy update); the counts carry over, the adapted ratio
    /// is kept within the new ceiling.
    pub fn configure(&self, config: BudgetConfig) {
        let mut inner = self.inner.lock();
        if inner.config != config {
            let ratio = config.ratio.clamp(0.0, 1000.0);
            inner.config = BudgetConfig { ratio, ..config };
            inner.ratio = inner.ratio.min(ratio).max(ratio * MIN_RATIO_SHARE);
        }
    }

    /// Counts a request's first attempt: each one earns `ratio` of a retry.
    pub fn deposit(&self, now_ns: u64) {
        self.inner
            .lock()
            .traffic
            .update(now_ns, |t| t.requests += 1);
    }

    /// Records how an attempt (first or retry) on the replica identified by `replica` ended,
    /// for the correlation check.
    pub fn record_attempt(&self, now_ns: u64, replica: u64, failed: bool) {
        let bit = 1u64 << (replica % 64);
        self.inner.lock().failures.update(now_ns, |f| {
            f.attempts += 1;
            if failed {
                f.failed += 1;
                f.replicas |= bit;
            }
        });
    }

    /// Takes one retry out of the budget, or says why not. `replicas` is the number of replicas
    /// that could serve the request (for the correlation check).
    pub fn withdraw(&self, now_ns: u64, kind: RetryKind, replicas: usize) -> Result<(), Refusal> {
        let mut inner = self.inner.lock();
        if kind == RetryKind::Repeat && inner.correlated(now_ns, replicas) {
            return Err(Refusal::Correlated);
        }
        let traffic = inner.traffic.sum(now_ns);
        if traffic.retries >= inner.allowance(traffic.requests) {
            return Err(Refusal::Exhausted);
        }
        inner.traffic.update(now_ns, |t| t.retries += 1);
        Ok(())
    }

    /// Adapts the ratio to how a retry ended: additive increase on success, multiplicative
    /// decrease on failure.
    pub fn record_retry(&self, succeeded: bool) {
        let mut inner = self.inner.lock();
        let configured = inner.config.ratio;
        inner.ratio = if succeeded {
            (inner.ratio + configured / 10.0).min(configured)
        } else {
            (inner.ratio / 2.0).max(configured * MIN_RATIO_SHARE)
        };
    }

    /// The budget's state at `now_ns`.
    pub fn snapshot(&self, now_ns: u64, replicas: usize) -> BudgetSnapshot {
        let inner = self.inner.lock();
        let traffic = inner.traffic.sum(now_ns);
        let allowance = inner.allowance(traffic.requests);
        BudgetSnapshot {
            ratio: inner.ratio,
            requests: traffic.requests,
            retries: traffic.retries,
            available: allowance.saturating_sub(traffic.retries),
            correlated: inner.correlated(now_ns, replicas),
        }
    }
}

impl Inner {
    /// Retries the window allows: the per-second floor over the window, plus the adapted
    /// ratio of the window's requests.
    fn allowance(&self, requests: u64) -> u64 {
        let floor = u64::from(self.config.min_per_second) * BUDGET_WINDOW.as_secs();
        floor + (self.ratio * requests as f64) as u64
    }

    fn correlated(&self, now_ns: u64, replicas: usize) -> bool {
        if replicas < 2 {
            // With one replica there is nothing to correlate; the ratio still caps retries.
            return false;
        }
        let f = self.failures.sum(now_ns);
        if f.failed < CORRELATION_MIN_FAILURES
            || (f.failed as f64) < CORRELATED_FAILURE_SHARE * f.attempts as f64
        {
            return false;
        }
        let needed = (CORRELATED_REPLICA_SHARE * replicas as f64)
            .ceil()
            .clamp(2.0, 64.0);
        f64::from(f.replicas.count_ones()) >= needed
    }
}

#[cfg(test)]
mod tests;
