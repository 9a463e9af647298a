//! Passive outlier detection: replicas whose answers keep failing are ejected from rotation for
//! a while, and come back on probation.
//!
//! - **Detection.** A replica is a candidate for ejection after `consecutive` failed attempts
//!   in a row, or (when configured) when its failure percentage over the last `interval`
//!   reaches the threshold with at least [`MIN_REQUESTS_FOR_RATE`] attempts. A 429 answer
//!   counts against the rate but not the consecutive run (the replica is alive, only busy),
//!   as in Linkerd's unified accrual. A per-try timeout weighs [`TIMEOUT_WEIGHT`] failures: the
//!   replica held a request for the whole per-try budget, the strongest sign of a frozen
//!   process, so with the default run of 5 two timeouts in a row eject it.
//! - **Ejection time** is `base × n` for the n-th ejection, capped at [`MAX_EJECTION`] (Envoy's
//!   rule); `n` decays by one for every healthy `interval` after a return.
//! - **Cap.** No ejection may push the ejected share above `max_ejected_percent` of the set
//!   (one replica may always be ejected when the percentage is not zero, as in Envoy).
//! - **Panic.** When fewer than `panic_threshold_percent` of the replicas are un-ejected, the
//!   ejections are ignored and every replica takes traffic: a partial answer beats none.
//! - **Probation.** When its time is up, a replica takes at most [`PROBATION_TRIALS`] attempts
//!   at once, each counted until its response headers (the proxy enforces this through
//!   eligibility), so a slow trial or a long-lived stream cannot block it; its first success
//!   clears it, its first failure ejects it again for longer (Linkerd's probation, which
//!   admits exactly one request and holds it for the whole response).
//! - **Retry-After.** A 503 or 429 carrying `Retry-After` pauses the replica for that long
//!   (capped), without counting as a repeated ejection: the replica asked for it.
//!
//! Responses that arrive while a replica is ejected do not change its state (they belong to
//! requests sent before the ejection).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

use super::window::{Tally, Window};

/// How many failures a per-try timeout counts for in the consecutive run.
pub const TIMEOUT_WEIGHT: u32 = 3;
/// Attempts an interval must hold before its failure rate can eject.
pub const MIN_REQUESTS_FOR_RATE: u64 = 20;
/// Longest ejection, whatever the base and the count (Envoy's `max_ejection_time`).
pub const MAX_EJECTION: Duration = Duration::from_secs(300);
/// Panic threshold before any policy set one (the API default).
pub const DEFAULT_PANIC_THRESHOLD: u32 = 50;
/// Trial attempts a replica on probation takes at once.
pub const PROBATION_TRIALS: u32 = 2;
/// Longest pause a `Retry-After` header can impose.
pub const MAX_RETRY_AFTER_PAUSE: Duration = Duration::from_secs(30);

const RATE_BUCKETS: usize = 10;

/// Compiled outlier-detection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// Failed attempts in a row that eject.
    pub consecutive_failures: u32,
    /// Failure percentage over `interval` that ejects; `None` disables the rate check.
    pub failure_rate_percent: Option<u32>,
    /// Window of the failure rate and unit of the ejection-count decay.
    pub interval: Duration,
    /// First ejection time.
    pub base_ejection: Duration,
    /// Largest ejected share of the set, in percent.
    pub max_ejected_percent: u32,
    /// Below this healthy share, in percent, ejections are ignored.
    pub panic_threshold_percent: u32,
}

/// How an attempt on a replica went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It answered, and not with a server error.
    Success,
    /// Connect failure, reset or 5xx.
    Failure,
    /// The per-try timeout expired.
    Timeout,
    /// 429: busy, not broken.
    Overloaded,
}

/// Why a replica was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EjectReason {
    /// A run of failed attempts.
    ConsecutiveFailures,
    /// The failure percentage over an interval.
    FailureRate,
    /// It failed while on probation.
    ProbationFailed,
    /// It asked for a pause with `Retry-After`.
    RetryAfter,
}

/// A replica's outlier state, for eligibility and `/endpoints`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum OutlierState {
    /// In rotation.
    Healthy,
    /// Out of rotation.
    Ejected {
        /// Why.
        reason: EjectReason,
        /// Milliseconds until it returns on probation.
        remaining_ms: u64,
        /// How many times in a row it was ejected (sets the ejection time).
        count: u32,
    },
    /// Back after an ejection: one request at a time until one succeeds.
    Probation {
        /// Why it was ejected.
        reason: EjectReason,
    },
}

/// The ejections in force across the replica set: the cap and panic mode need the whole set's
/// figures, each detector only knows its own replica.
#[derive(Debug)]
pub struct Ejections {
    ejected: AtomicUsize,
    total: AtomicUsize,
    lifetime: AtomicU64,
    /// The live policy's panic threshold, kept here so eligibility checks need no policy.
    panic_threshold: AtomicU32,
}

impl Default for Ejections {
    fn default() -> Self {
        Self {
            ejected: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            lifetime: AtomicU64::new(0),
            panic_threshold: AtomicU32::new(DEFAULT_PANIC_THRESHOLD),
        }
    }
}

/// Outlier state of one replica.
#[derive(Debug)]
pub struct Detector {
    ejections: Arc<Ejections>,
    /// Lock-free view for the hot path: 0 when not ejected.
    ejected_until_ns: AtomicU64,
    probation: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    consecutive: u32,
    rate: Window<Tally>,
    rate_span: Duration,
    /// Ejections in a row (decayed), which sets the next ejection's length.
    count: u32,
    /// Whether this detector holds one of the set's ejected slots.
    counted: bool,
    returned_ns: u64,
    reason: EjectReason,
}

// === impl Ejections ===

impl Ejections {
    /// Sets the number of replicas in the live set.
    #[inline]
    pub fn set_total(&self, total: usize) {
        self.total.store(total, Ordering::Relaxed);
    }

    /// Replicas in the live set.
    #[inline]
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Replicas currently ejected.
    #[inline]
    pub fn ejected(&self) -> usize {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Ejections since start.
    #[inline]
    pub fn lifetime(&self) -> u64 {
        self.lifetime.load(Ordering::Relaxed)
    }

    /// Whether one more ejection stays within `max_percent` of the set.
    pub fn allows_one_more(&self, max_percent: u32) -> bool {
        if max_percent == 0 {
            return false;
        }
        let ejected = self.ejected();
        ejected == 0 || (ejected + 1) * 100 <= max_percent as usize * self.total()
    }

    /// Whether so few replicas are un-ejected that ejections must be ignored.
    pub fn panic(&self, threshold_percent: u32) -> bool {
        let total = self.total();
        let healthy = total.saturating_sub(self.ejected());
        total > 0 && healthy * 100 < threshold_percent as usize * total
    }

    /// Records the live policy's panic threshold.
    pub fn set_panic_threshold(&self, percent: u32) {
        if self.panic_threshold.load(Ordering::Relaxed) != percent {
            self.panic_threshold.store(percent, Ordering::Relaxed);
        }
    }

    /// Whether the set is in panic mode under the recorded threshold.
    #[inline]
    pub fn in_panic(&self) -> bool {
        self.panic(self.panic_threshold.load(Ordering::Relaxed))
    }

    fn take(&self) {
        self.ejected.fetch_add(1, Ordering::Relaxed);
        self.lifetime.fetch_add(1, Ordering::Relaxed);
    }

    fn give_back(&self) {
        // Saturating: a slot is only ever given back by the detector that took it.
        let _ = self
            .ejected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

// === impl Detector ===

impl Detector {
    /// A healthy detector counting its ejections in `ejections`.
    pub fn new(ejections: Arc<Ejections>) -> Self {
        let interval = Duration::from_secs(10);
        Self {
            ejections,
            ejected_until_ns: AtomicU64::new(0),
            probation: AtomicBool::new(false),
            state: Mutex::new(State {
                consecutive: 0,
                rate: Window::new(interval, RATE_BUCKETS),
                rate_span: interval,
                count: 0,
                counted: false,
                returned_ns: 0,
                reason: EjectReason::ConsecutiveFailures,
            }),
        }
    }

    /// Records an attempt's verdict. Returns the reason to eject the replica, if it should be;
    /// the caller then checks the set-wide cap and calls [`Self::eject`].
    pub fn record(
        &self,
        now_ns: u64,
        verdict: Verdict,
        config: &OutlierConfig,
    ) -> Option<EjectReason> {
        if self.ejected_until_ns.load(Ordering::Relaxed) > now_ns {
            return None;
        }
        let mut s = self.state.lock();
        if s.rate_span != config.interval {
            s.rate = Window::new(config.interval, RATE_BUCKETS);
            s.rate_span = config.interval;
        }
        let failed = verdict != Verdict::Success;
        s.rate.update(now_ns, |t| {
            t.total += 1;
            t.good += u64::from(!failed);
        });
        if self.probation.load(Ordering::Relaxed) {
            return match verdict {
                Verdict::Success => {
                    self.probation.store(false, Ordering::Relaxed);
                    s.consecutive = 0;
                    s.returned_ns = now_ns;
                    None
                }
                Verdict::Failure | Verdict::Timeout | Verdict::Overloaded => {
                    Some(EjectReason::ProbationFailed)
                }
            };
        }
        match verdict {
            Verdict::Success => {
                s.consecutive = 0;
                return None;
            }
            Verdict::Failure => s.consecutive += 1,
            Verdict::Timeout => s.consecutive += TIMEOUT_WEIGHT,
            Verdict::Overloaded => {}
        }
        if s.consecutive >= config.consecutive_failures.max(1) {
            return Some(EjectReason::ConsecutiveFailures);
        }
        if let Some(percent) = config.failure_rate_percent {
            let t = s.rate.sum(now_ns);
            if t.total >= MIN_REQUESTS_FOR_RATE && t.bad() * 100 >= u64::from(percent) * t.total {
                return Some(EjectReason::FailureRate);
            }
        }
        None
    }

    /// Ejects the replica if the set-wide cap allows it (checked here, under the set's count).
    /// Returns whether it was ejected. Call [`Self::state`] on the set's other detectors first
    /// so that replicas whose time is up have given back their slots.
    pub fn eject(&self, now_ns: u64, reason: EjectReason, config: &OutlierConfig) -> bool {
        let mut s = self.state.lock();
        if self.ejected_until_ns.load(Ordering::Relaxed) > now_ns {
            return false;
        }
        let was_counted = s.counted;
        if !was_counted && !self.ejections.allows_one_more(config.max_ejected_percent) {
            return false;
        }
        let length = if reason == EjectReason::RetryAfter {
            // Not the replica's fault: no escalation.
            config.base_ejection.min(MAX_RETRY_AFTER_PAUSE)
        } else {
            // Healthy intervals since the last return forgive earlier ejections.
            if s.returned_ns != 0 && s.count > 0 && !self.probation.load(Ordering::Relaxed) {
                let healthy = now_ns.saturating_sub(s.returned_ns);
                let interval = u64::try_from(config.interval.as_nanos())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let forgiven = u32::try_from(healthy / interval).unwrap_or(u32::MAX);
                s.count = s.count.saturating_sub(forgiven);
            }
            s.count = s.count.saturating_add(1);
            config
                .base_ejection
                .saturating_mul(s.count)
                .min(MAX_EJECTION.max(config.base_ejection))
        };
        self.set_ejected(&mut s, now_ns, length, reason);
        true
    }

    /// Pauses the replica for `retry_after` (capped at [`MAX_RETRY_AFTER_PAUSE`]) because it
    /// asked for it; subject to the ejection cap. Returns whether it was paused.
    pub fn pause(&self, now_ns: u64, retry_after: Duration, config: &OutlierConfig) -> bool {
        let mut s = self.state.lock();
        if self.ejected_until_ns.load(Ordering::Relaxed) > now_ns {
            return false;
        }
        if !s.counted && !self.ejections.allows_one_more(config.max_ejected_percent) {
            return false;
        }
        let length = retry_after.min(MAX_RETRY_AFTER_PAUSE);
        if length.is_zero() {
            return false;
        }
        self.set_ejected(&mut s, now_ns, length, EjectReason::RetryAfter);
        true
    }

    fn set_ejected(&self, s: &mut State, now_ns: u64, length: Duration, reason: EjectReason) {
        let until = now_ns
            .saturating_add(u64::try_from(length.as_nanos()).unwrap_or(u64::MAX))
            .max(1);
        if !s.counted {
            self.ejections.take();
            s.counted = true;
        }
        s.reason = reason;
        s.consecutive = 0;
        self.probation.store(false, Ordering::Relaxed);
        self.ejected_until_ns.store(until, Ordering::Relaxed);
    }

    /// The state at `now_ns`. A replica whose ejection time is up moves to probation here and
    /// gives its slot back.
    pub fn state(&self, now_ns: u64) -> OutlierState {
        let until = self.ejected_until_ns.load(Ordering::Relaxed);
        if until == 0 {
            if !self.probation.load(Ordering::Relaxed) {
                return OutlierState::Healthy;
            }
            let reason = self.state.lock().reason;
            return OutlierState::Probation { reason };
        }
        let mut s = self.state.lock();
        let until = self.ejected_until_ns.load(Ordering::Relaxed);
        if until > now_ns {
            return OutlierState::Ejected {
                reason: s.reason,
                remaining_ms: u64::try_from(Duration::from_nanos(until - now_ns).as_millis())
                    .unwrap_or(u64::MAX),
                count: s.count,
            };
        }
        if until != 0 {
            self.ejected_until_ns.store(0, Ordering::Relaxed);
            self.probation.store(true, Ordering::Relaxed);
            s.returned_ns = now_ns;
            if s.counted {
                s.counted = false;
                self.ejections.give_back();
            }
        }
        if self.probation.load(Ordering::Relaxed) {
            OutlierState::Probation { reason: s.reason }
        } else {
            OutlierState::Healthy
        }
    }

    /// Whether the replica is ejected at `now_ns` (lock-free unless the ejection just ended).
    #[inline]
    pub fn is_ejected(&self, now_ns: u64) -> bool {
        let until = self.ejected_until_ns.load(Ordering::Relaxed);
        until != 0 && matches!(self.state(now_ns), OutlierState::Ejected { .. })
    }

    /// Whether the replica is on probation (one request at a time).
    #[inline]
    pub fn on_probation(&self) -> bool {
        self.probation.load(Ordering::Relaxed)
    }

    /// The replica left the set: it no longer holds one of the set's ejected slots.
    pub fn forget(&self) {
        let mut s = self.state.lock();
        if s.counted {
            s.counted = false;
            self.ejections.give_back();
        }
    }

    /// The set-wide ejection figures this detector counts into.
    #[inline]
    pub fn ejections(&self) -> &Arc<Ejections> {
        &self.ejections
    }
}

impl Drop for Detector {
    fn drop(&mut self) {
        if self.state.get_mut().counted {
            self.ejections.give_back();
        }
    }
}

#[cfg(test)]
mod tests;
