//! Adaptive load shedding: an adaptive concurrency limit on the requests the sidecar admits,
//! rejecting the excess at once (503, `x-datastream-error: overloaded`) so that admitted
//! requests keep a bounded latency instead of everyone queueing.
//!
//! The limit follows a latency gradient, in the manner of Envoy's adaptive concurrency filter
//! and Netflix's gradient limiters:
//!
//! - Every [`UPDATE_INTERVAL`] (once at least [`MIN_SAMPLES`] requests completed), the median
//!   latency of the interval's admitted requests is compared with `target = min_rtt + tolerance`
//!   (the tolerance is `limits.loadShedding.latencyTarget`).
//! - Above target, the limit shrinks to `min(limit, peak in-flight) × max(0.5, target/median)`:
//!   proportional to how far latency overshot, from what was actually in use.
//! - At or below target, and only if the limit was at least half used, it grows by
//!   `√limit` (Envoy's headroom rule), so an idle sidecar does not inflate its limit forever.
//! - The limit stays within `[minConcurrency, maxConcurrency]`; it starts at the maximum, so
//!   nothing is shed until latency says so.
//!
//! **min_rtt** is the smallest interval median among requests admitted while at most
//! `minConcurrency` were in flight, over the last [`MIN_RTT_WINDOW`]: latency measured without
//! contention. It never drifts upwards by itself (a drifting baseline lets a sustained
//! overload raise its own target); instead, when the backend really became slower, the limit
//! falls towards `minConcurrency`, where every sample is uncontended and re-measures min_rtt.
//! This replaces Envoy's periodic min-RTT probe, which sheds on purpose every minute.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::window::{Counts, Window};

/// How often the limit is recomputed.
pub const UPDATE_INTERVAL: Duration = Duration::from_millis(100);
/// Completed requests an interval needs before it can move the limit.
pub const MIN_SAMPLES: usize = 5;
/// Samples kept per interval (later ones overwrite in turn).
pub const MAX_SAMPLES: usize = 256;
/// Window of the uncontended-latency minimum.
pub const MIN_RTT_WINDOW: Duration = Duration::from_secs(30);
/// Largest single-step decrease factor.
pub const MIN_GRADIENT: f64 = 0.5;

/// Compiled shedding settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShedConfig {
    /// Whether shedding is on.
    pub enabled: bool,
    /// Tolerance above min_rtt before the limit shrinks.
    pub latency_target: Duration,
    /// Lowest limit.
    pub min_concurrency: u32,
    /// Highest (and initial) limit.
    pub max_concurrency: u32,
}

/// The request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("overloaded: {inflight} requests in flight at a concurrency limit of {limit}")]
pub struct Overloaded {
    /// The limit at the time.
    pub limit: u32,
    /// Requests in flight at the time.
    pub inflight: u32,
}

/// What `/endpoints` and tests see of the limiter.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShedSnapshot {
    /// The concurrency limit in force.
    pub limit: u32,
    /// Requests admitted and not finished.
    pub inflight: u32,
    /// The uncontended latency baseline, if measured.
    pub min_rtt_ms: Option<f64>,
    /// The last interval's median latency, if any.
    pub last_median_ms: Option<f64>,
}

/// The adaptive concurrency limiter of one sidecar's traffic listener.
#[derive(Debug)]
pub struct Shedder {
    inflight: AtomicU32,
    limit: AtomicU32,
    state: Mutex<State>,
}

/// A request admitted by the limiter: counted in flight until finished or dropped.
#[derive(Debug)]
pub struct Admission {
    shedder: Arc<Shedder>,
    started_ns: u64,
    uncontended: bool,
    finished: bool,
}

#[derive(Debug)]
struct State {
    interval_start_ns: u64,
    samples: Vec<u64>,
    uncontended: Vec<u64>,
    next: usize,
    peak: u32,
    min_rtt: Window<MinNs>,
    last_min_rtt_ns: Option<u64>,
    last_median_ns: Option<u64>,
    bounds: (u32, u32),
}

#[derive(Debug, Clone, Copy)]
struct MinNs(u64);

impl Default for MinNs {
    fn default() -> Self {
        MinNs(u64::MAX)
    }
}

impl Counts for MinNs {
    fn merge(&mut self, other: &Self) {
        self.0 = self.0.min(other.0);
    }
}

// === impl Shedder ===

impl Shedder {
    /// A limiter starting at `config.max_concurrency`.
    pub fn new(config: &ShedConfig) -> Self {
        let (min, max) = bounds(config);
        Self {
            inflight: AtomicU32::new(0),
            limit: AtomicU32::new(max),
            state: Mutex::new(State {
                interval_start_ns: 0,
                samples: Vec::with_capacity(MAX_SAMPLES),
                uncontended: Vec::new(),
                next: 0,
                peak: 0,
                min_rtt: Window::new(MIN_RTT_WINDOW, 30),
                last_min_rtt_ns: None,
                last_median_ns: None,
                bounds: (min, max),
            }),
        }
    }

    /// Admits a request started at `now_ns`, or sheds it.
    pub fn try_admit(
        self: &Arc<Self>,
        now_ns: u64,
        config: &ShedConfig,
    ) -> Result<Admission, Overloaded> {
        if !config.enabled {
            return Ok(self.admission(now_ns, false, false));
        }
        self.apply_bounds(config);
        let limit = self.limit.load(Ordering::Relaxed);
        match self
            .inflight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            }) {
            Ok(before) => {
                let uncontended = before < config.min_concurrency.max(1);
                Ok(self.admission(now_ns, uncontended, true))
            }
            Err(inflight) => Err(Overloaded { limit, inflight }),
        }
    }

    fn admission(self: &Arc<Self>, now_ns: u64, uncontended: bool, counted: bool) -> Admission {
        if !counted {
            self.inflight.fetch_add(1, Ordering::Relaxed);
        }
        Admission {
            shedder: Arc::clone(self),
            started_ns: now_ns,
            uncontended,
            finished: false,
        }
    }

    /// A policy change moved the bounds: clamp the limit into them at once.
    fn apply_bounds(&self, config: &ShedConfig) {
        let b = bounds(config);
        let mut s = self.state.lock();
        if s.bounds != b {
            s.bounds = b;
            let clamped = self.limit.load(Ordering::Relaxed).clamp(b.0, b.1);
            self.limit.store(clamped, Ordering::Relaxed);
        }
    }

    /// The limit in force.
    #[inline]
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Requests in flight.
    #[inline]
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// The limiter's figures.
    pub fn snapshot(&self) -> ShedSnapshot {
        let s = self.state.lock();
        ShedSnapshot {
            limit: self.limit(),
            inflight: self.inflight(),
            min_rtt_ms: s.last_min_rtt_ns.map(|n| n as f64 / 1e6),
            last_median_ms: s.last_median_ns.map(|n| n as f64 / 1e6),
        }
    }

    fn record(&self, now_ns: u64, latency_ns: u64, uncontended: bool, config: &ShedConfig) {
        let mut s = self.state.lock();
        let inflight = self.inflight();
        s.peak = s.peak.max(inflight + 1);
        if s.interval_start_ns == 0 {
            s.interval_start_ns = now_ns;
        }
        if s.samples.len() < MAX_SAMPLES {
            s.samples.push(latency_ns);
        } else {
            let i = s.next % MAX_SAMPLES;
            s.samples[i] = latency_ns;
            s.next = s.next.wrapping_add(1);
        }
        if uncontended && s.uncontended.len() < MAX_SAMPLES {
            s.uncontended.push(latency_ns);
        }
        let interval = u64::try_from(UPDATE_INTERVAL.as_nanos()).unwrap_or(u64::MAX);
        if now_ns.saturating_sub(s.interval_start_ns) < interval || s.samples.len() < MIN_SAMPLES {
            return;
        }
        self.update(&mut s, now_ns, inflight, config);
    }

    fn update(&self, s: &mut State, now_ns: u64, inflight: u32, config: &ShedConfig) {
        let median = median(&mut s.samples);
        if let Some(m) = median_opt(&mut s.uncontended) {
            s.min_rtt.update(now_ns, |b| b.0 = b.0.min(m));
        }
        let windowed = s.min_rtt.sum(now_ns).0;
        let min_rtt = if windowed != u64::MAX {
            Some(windowed)
        } else {
            // No uncontended sample in the window: keep the last baseline; before any, the
            // first median stands in.
            s.last_min_rtt_ns.or(Some(median))
        };
        s.last_min_rtt_ns = min_rtt;
        s.last_median_ns = Some(median);
        let (lo, hi) = s.bounds;
        let limit = self.limit();
        let target = min_rtt
            .unwrap_or(median)
            .saturating_add(u64::try_from(config.latency_target.as_nanos()).unwrap_or(u64::MAX));
        let next = if median > target {
            let gradient = (target as f64 / median as f64).max(MIN_GRADIENT);
            let base = limit.min(s.peak.max(1));
            ((f64::from(base) * gradient) as u32).clamp(lo, hi)
        } else if s.peak.saturating_mul(2) >= limit {
            let headroom = (f64::from(limit).sqrt() as u32).max(1);
            limit.saturating_add(headroom).clamp(lo, hi)
        } else {
            limit
        };
        if next != limit {
            tracing::debug!(
                from = limit,
                to = next,
                median_ms = median as f64 / 1e6,
                target_ms = target as f64 / 1e6,
                "adaptive concurrency limit changed"
            );
        }
        self.limit.store(next, Ordering::Relaxed);
        s.samples.clear();
        s.uncontended.clear();
        s.next = 0;
        s.peak = inflight;
        s.interval_start_ns = now_ns;
    }
}

fn bounds(config: &ShedConfig) -> (u32, u32) {
    let lo = config.min_concurrency.max(1);
    (lo, config.max_concurrency.max(lo))
}

fn median(samples: &mut [u64]) -> u64 {
    median_opt(samples).unwrap_or(0)
}

fn median_opt(samples: &mut [u64]) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    let mid = samples.len() / 2;
    Some(*samples.select_nth_unstable(mid).1)
}

// === impl Admission ===

impl Admission {
    /// The request finished at `now_ns` (response headers sent, whatever the status): its
    /// latency feeds the limiter.
    pub fn finish(mut self, now_ns: u64, config: &ShedConfig) {
        self.finished = true;
        self.shedder.inflight.fetch_sub(1, Ordering::Relaxed);
        if config.enabled {
            let latency = now_ns.saturating_sub(self.started_ns);
            self.shedder
                .record(now_ns, latency, self.uncontended, config);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.finished {
            // Cancelled (client went away): no latency sample, just release the slot.
            self.shedder.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
