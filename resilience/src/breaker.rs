//! Adaptive client-side circuit breaking per replica (Google SRE "client-side throttling"),
//! plus hard caps on concurrent and pending requests per replica.
//!
//! Over a sliding window, `requests` counts attempts actually sent to the replica and `accepts`
//! those it answered without a server-side failure. A new attempt is dropped locally with
//! probability `max(0, (requests − K·accepts) / (requests + 1))`: while the replica accepts
//! everything, nothing is dropped; as its accept rate falls below 1/K, the client sheds
//! proportionally, so a struggling replica sees less load instead of a retry flood.
//!
//! Two departures from go-zero's breaker, both deliberate:
//!
//! - **Drops are never counted as requests.** go-zero counts its own rejections in `total`,
//!   which keeps the drop probability high long after the replica recovered (go-zero#4101,
//!   #5551). Here only attempts that reached the replica count, so recovery is seen as fast as
//!   the replica's answers show it.
//! - **No drop below a minimum request volume** in the window (`min_requests`, default
//!   [`MIN_REQUESTS`], Hystrix's request volume threshold): a handful of failures on a quiet
//!   replica proves too little to throttle it, and on a stream with one replica would turn
//!   unrelated requests away (go-zero's "protection" constant plays this role).
//!
//! A request is also let through when none has been for [`PROBE_INTERVAL`], so a replica that
//! recovered while fully throttled is noticed (go-zero's forced pass).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::window::{Tally, Window};

/// Fewest attempts in the window before the breaker may drop anything, by default.
pub const MIN_REQUESTS: u64 = 20;
/// A request passes at least this often, whatever the drop probability.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Buckets of the breaker window (go-zero's 40).
pub const BUCKETS: usize = 40;

/// Compiled breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Whether adaptive throttling is on.
    pub enabled: bool,
    /// Accept multiplier K.
    pub k: f64,
    /// Window over which requests and accepts are counted.
    pub window: Duration,
    /// Fewest attempts in the window before anything is dropped.
    pub min_requests: u64,
}

/// The adaptive throttle of one replica.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<Inner>,
    last_pass_ns: AtomicU64,
    /// The latest failure recorded ([`NO_FAILURE`]: none). A window holding no failure cannot
    /// drop anything when `k >= 1`, which is what a pick on a healthy replica learns from this
    /// one read, without the lock or a scan of the window's buckets.
    last_failure_ns: AtomicU64,
}

/// `last_failure_ns` before any failure.
const NO_FAILURE: u64 = u64::MAX;

#[derive(Debug)]
struct Inner {
    window: Window<Tally>,
    span: Duration,
}

/// Why the breaker stopped an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropped {
    /// The drop probability at the time.
    pub probability: f64,
}

/// What `/endpoints` shows of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerSnapshot {
    /// Attempts sent in the window.
    pub requests: u64,
    /// Of which accepted.
    pub accepts: u64,
    /// Current drop probability.
    pub drop_probability: f64,
}

// === impl Breaker ===

impl Breaker {
    /// A closed breaker.
    pub fn new() -> Self {
        let span = Duration::from_secs(10);
        Self {
            state: Mutex::new(Inner {
                window: Window::new(span, BUCKETS),
                span,
            }),
            last_pass_ns: AtomicU64::new(0),
            last_failure_ns: AtomicU64::new(NO_FAILURE),
        }
    }

    /// Decides whether an attempt may go to the replica; `unit` draws a uniform random number
    /// in `[0, 1)`, called only while the breaker drops some attempts (a healthy replica's
    /// requests draw nothing). The decision itself is not counted anywhere.
    pub fn allow(
        &self,
        now_ns: u64,
        unit: impl FnOnce() -> f64,
        config: &BreakerConfig,
    ) -> Result<(), Dropped> {
        if !config.enabled {
            return Ok(());
        }
        let probability = self.drop_probability(now_ns, config);
        if probability <= 0.0 || unit() >= probability {
            self.last_pass_ns.store(now_ns, Ordering::Relaxed);
            return Ok(());
        }
        let last = self.last_pass_ns.load(Ordering::Relaxed);
        let probe_ns = u64::try_from(PROBE_INTERVAL.as_nanos()).unwrap_or(u64::MAX);
        if now_ns.saturating_sub(last) >= probe_ns
            && self
                .last_pass_ns
                .compare_exchange(last, now_ns, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Ok(());
        }
        Err(Dropped { probability })
    }

    /// Records an attempt that reached the replica: `accepted` unless it failed on the
    /// replica's side (5xx, 429, reset, timeout, connect failure).
    pub fn record(&self, now_ns: u64, accepted: bool, config: &BreakerConfig) {
        if !config.enabled {
            return;
        }
        let mut inner = self.state.lock();
        inner.resize(config.window);
        inner.window.update(now_ns, |t| {
            t.total += 1;
            t.good += u64::from(accepted);
        });
        if !accepted {
            // Under the lock: two failures recorded at once keep the later reading.
            let last = self.last_failure_ns.load(Ordering::Relaxed);
            if last == NO_FAILURE || now_ns > last {
                self.last_failure_ns.store(now_ns, Ordering::Relaxed);
            }
        }
    }

    /// The current drop probability.
    pub fn drop_probability(&self, now_ns: u64, config: &BreakerConfig) -> f64 {
        if config.k >= 1.0 && self.no_failure_in_window(now_ns, config.window) {
            // Every attempt in the window was accepted: requests − K·accepts ≤ 0.
            return 0.0;
        }
        let t = {
            let mut inner = self.state.lock();
            inner.resize(config.window);
            inner.window.sum(now_ns)
        };
        probability(t, config)
    }

    /// The window's figures.
    pub fn snapshot(&self, now_ns: u64, config: &BreakerConfig) -> BreakerSnapshot {
        let t = {
            let mut inner = self.state.lock();
            inner.resize(config.window);
            inner.window.sum(now_ns)
        };
        BreakerSnapshot {
            requests: t.total,
            accepts: t.good,
            drop_probability: if config.enabled {
                probability(t, config)
            } else {
                0.0
            },
        }
    }
}

impl Breaker {
    /// Whether no failure recorded so far can still be in a window of `span` at `now_ns`. A
    /// failure at `t` sits in a bucket starting at or before `t`, and the window's buckets
    /// together span at most `span`, so it has left the window once `span` has passed since
    /// `t`. A failure recorded with a later reading than `now_ns` (another thread's clock
    /// reading) counts as still inside.
    fn no_failure_in_window(&self, now_ns: u64, span: Duration) -> bool {
        let last = self.last_failure_ns.load(Ordering::Relaxed);
        if last == NO_FAILURE {
            return true;
        }
        // A span under one nanosecond per bucket has buckets of 1 ns (see `Window::new`).
        let span_ns = u64::try_from(span.as_nanos())
            .unwrap_or(u64::MAX)
            .max(BUCKETS as u64);
        now_ns >= last && now_ns - last >= span_ns
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new()
    }
}

impl Inner {
    /// A changed policy window starts the count afresh rather than mixing bucket widths.
    fn resize(&mut self, span: Duration) {
        if span != self.span {
            self.window = Window::new(span, BUCKETS);
            self.span = span;
        }
    }
}

fn probability(t: Tally, config: &BreakerConfig) -> f64 {
    if t.total < config.min_requests.max(1) {
        return 0.0;
    }
    let requests = t.total as f64;
    ((requests - config.k * t.good as f64) / (requests + 1.0)).max(0.0)
}

/// A counted slot limit: at most `max` holders at once (unlimited when `None`).
#[derive(Debug, Default)]
pub struct Slots {
    held: Arc<AtomicU32>,
}

/// Holds one of a [`Slots`]' places until dropped.
#[derive(Debug)]
pub struct SlotGuard {
    held: Arc<AtomicU32>,
}

// === impl Slots ===

impl Slots {
    /// Takes a place if fewer than `max` are held.
    pub fn try_acquire(&self, max: Option<u32>) -> Option<SlotGuard> {
        let ok = match max {
            None => {
                self.held.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(max) => self
                .held
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok(),
        };
        ok.then(|| SlotGuard {
            held: Arc::clone(&self.held),
        })
    }

    /// Places held now.
    #[inline]
    pub fn held(&self) -> u32 {
        self.held.load(Ordering::Relaxed)
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
