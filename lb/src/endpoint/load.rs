//! Peak-EWMA latency, in-flight count and latency-driven slow start for one endpoint.
//!
//! The estimate follows Finagle/Linkerd's peak EWMA: a sample above the estimate replaces it at
//! once, a lower one is blended in with weight `1 - exp(-elapsed/decay)`, and the estimate decays
//! towards zero while the endpoint is idle, so a replica that was slow long ago gets probed again.
//! Every field is an atomic: the hot path never takes a lock to read or update a load figure.
//!
//! Two floors on the weight of a lower sample keep estimates of busy and idle endpoints
//! comparable (see [`SAMPLE_WINDOW`] and [`PROBE_WEIGHT`]). With purely time-based weights, a
//! peak decays over seconds however many samples contradict it, so the estimate of a replica
//! serving thousands of requests a second is the *worst* of its recent samples (one scheduling
//! hiccup in a few thousand sets it), while a replica that gets few requests is judged by its
//! typical one. The bias favours exactly the replicas the balancer avoids: measured with 2 ms
//! and 40 ms replicas under 32 concurrent clients, the fast ones were estimated at 8 ms (their
//! real p99 was 4 ms), so the slow one looked 5x slower instead of 12-20x, and the in-flight
//! penalty handed it ~3 of the 32 requests in flight.
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use datastream_resilience::clock;

/// Decay time constant of the estimate (Finagle, go-zero and Linkerd all use 10 s).
pub const DECAY: Duration = Duration::from_secs(10);
/// Estimate given to an endpoint when no other endpoint has one yet (Linkerd's default RTT).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Smallest estimate, so a cost never collapses to zero (Linkerd's floor).
pub const MIN_RTT: Duration = Duration::from_micros(50);
/// A sample below the estimate moves it by at least `1/SAMPLE_WINDOW` of the difference, so a
/// peak is forgotten after a few windows' worth of contradicting samples (~32 of them halve
/// it) even when they all arrive within milliseconds. For an endpoint with fewer than about
/// `SAMPLE_WINDOW / DECAY` = 3 samples a second the time-based weight is larger and this floor
/// changes nothing: the estimate still reacts to a slowdown at once and forgets it over ~10 s.
pub const SAMPLE_WINDOW: u32 = 32;
/// How long an endpoint can go unpicked before p2c sends it one request regardless of cost
/// (go-zero's `forcePick`), so a replica that lost every comparison learns that it recovered.
pub const FORCE_PICK: Duration = Duration::from_secs(1);
/// A sample that follows [`FORCE_PICK`] or more without any other sample moves the estimate at
/// least half way to it: it is the only fresh evidence about a replica the balancer has been
/// avoiding, and with the time-based weight alone (1 - exp(-1 s / 10 s), about 0.1) a replica
/// that went from 40 ms to 2 ms would need ~15 probes before it won a comparison again.
pub const PROBE_WEIGHT: f64 = 0.5;
/// Slow start needs at least this many samples before it may end.
pub const SLOW_START_MIN_SAMPLES: u32 = 5;
/// Slow start ends after this many samples even if latency keeps moving.
pub const SLOW_START_MAX_SAMPLES: u32 = 100;
/// Slow start ends once the fast and the slow estimate agree within this ratio.
pub const SLOW_START_CONVERGED: f64 = 0.25;

/// Load figures of one endpoint.
#[derive(Debug)]
pub struct Load {
    /// Peak-EWMA estimate in nanoseconds, as `f64` bits.
    rtt_bits: AtomicU64,
    /// When the estimate was last updated ([`clock::now_ns`]).
    stamp_ns: AtomicU64,
    /// A fast EWMA (weight 1/2) that slow start compares against the main estimate.
    fast_bits: AtomicU64,
    /// When p2c last picked this endpoint ([`clock::now_ns`]), for [`FORCE_PICK`].
    picked_ns: AtomicU64,
    inflight: AtomicU32,
    samples: AtomicU32,
    warming: AtomicBool,
}

/// A snapshot of the figures that drive balancing, for `/endpoints` and for tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSnapshot {
    /// The decayed peak-EWMA estimate, in milliseconds.
    pub ewma_ms: f64,
    /// Requests currently in flight.
    pub inflight: u32,
    /// Latency samples seen.
    pub samples: u32,
    /// `ewma × (inflight + 1)`, in milliseconds: the p2c cost while the replicas hold at most
    /// one request each on average (above, p2c divides `inflight` by that average, see
    /// [`Load::cost_per`]).
    pub cost: f64,
    /// Whether the endpoint is still in slow start.
    pub warming: bool,
}

// === impl Load ===

impl Load {
    /// A load seeded with `seed` as its latency estimate; `warming` starts slow start.
    pub fn new(seed: Duration, warming: bool) -> Self {
        let seed_ns = seed.max(MIN_RTT).as_nanos() as f64;
        let now = clock::now_ns();
        Self {
            rtt_bits: AtomicU64::new(seed_ns.to_bits()),
            stamp_ns: AtomicU64::new(now),
            fast_bits: AtomicU64::new(seed_ns.to_bits()),
            picked_ns: AtomicU64::new(now),
            inflight: AtomicU32::new(0),
            samples: AtomicU32::new(0),
            warming: AtomicBool::new(warming),
        }
    }

    /// The decayed estimate in nanoseconds at `now_ns`.
    pub fn rtt_ns(&self, now_ns: u64) -> f64 {
        let est = f64::from_bits(self.rtt_bits.load(Ordering::Relaxed));
        let elapsed = clock::since(self.stamp_ns.load(Ordering::Relaxed), now_ns);
        let decayed = est * decay_weight(elapsed);
        decayed.max(MIN_RTT.as_nanos() as f64)
    }

    /// Linkerd's cost at `now_ns`: the estimate weighted by the requests already waiting on it,
    /// `rtt × (inflight + 1)`. It is [`Self::cost_per`] with one request per replica on average.
    #[inline]
    pub fn cost(&self, now_ns: u64) -> f64 {
        self.cost_per(now_ns, 1.0)
    }

    /// The p2c cost at `now_ns` when the replicas hold `share` requests each on average:
    /// `rtt × (1 + inflight / max(share, 1))`.
    ///
    /// Linkerd's `(inflight + 1)` treats every request in flight as one queued ahead of the next
    /// (a single-worker server), so the penalty grows with the clients' concurrency, not with
    /// how loaded the replica is: with 32 concurrent requests over three replicas, a 2 ms
    /// replica holding its 15 costs as much as an idle 40 ms one, and the 40 ms one is kept
    /// busy. Counting in-flight requests in units of the average says how much more than its
    /// share a replica holds, which is what queues *relative to its peers*; the measured
    /// latency already includes whatever queueing the replica does at its usual load. At or
    /// below one request per replica this is exactly Linkerd's cost. Above, a replica at the
    /// average costs 2x its latency and one holding all `n` replicas' share at most `n + 1`x,
    /// so a replica more than about 2.5x slower than its peers (of three) wins only when they
    /// are piling up requests, a moderately slower or overloaded one keeps a share that falls
    /// with its latency, and the result does not depend on how many clients there are.
    #[inline]
    pub fn cost_per(&self, now_ns: u64, share: f64) -> f64 {
        self.rtt_ns(now_ns) * (1.0 + f64::from(self.inflight()) / share.max(1.0))
    }

    /// Requests in flight.
    #[inline]
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Samples observed so far.
    #[inline]
    pub fn samples(&self) -> u32 {
        self.samples.load(Ordering::Relaxed)
    }

    /// Whether slow start still limits this endpoint.
    #[inline]
    pub fn warming(&self) -> bool {
        self.warming.load(Ordering::Relaxed)
    }

    /// The in-flight cap slow start imposes (one more per completed request), if warming.
    #[inline]
    pub fn slow_start_cap(&self) -> Option<u32> {
        self.warming().then(|| 1 + self.samples())
    }

    /// Records that p2c picked this endpoint at `now_ns`.
    #[inline]
    pub fn picked(&self, now_ns: u64) {
        self.picked_ns.store(now_ns, Ordering::Relaxed);
    }

    /// Whether this endpoint is due a forced pick at `now_ns`: idle, and unpicked for longer
    /// than [`FORCE_PICK`]. A `true` answer claims the probe (the pick time is moved to `now_ns`
    /// with a compare-and-swap), so concurrent picks send one request, not a burst.
    ///
    /// An endpoint with requests in flight is never due: it reports a sample when they end,
    /// and a hanging one should not collect another request every second.
    pub fn claim_probe(&self, now_ns: u64) -> bool {
        if self.inflight() > 0 {
            return false;
        }
        let last = self.picked_ns.load(Ordering::Relaxed);
        clock::since(last, now_ns) > FORCE_PICK
            && self
                .picked_ns
                .compare_exchange(last, now_ns, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Counts a request as started.
    #[inline]
    pub fn start(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request as finished (whatever its outcome).
    pub fn finish(&self) {
        // Saturate rather than wrap if a guard is ever dropped twice.
        let _ = self
            .inflight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Folds one latency sample into the estimate.
    pub fn observe(&self, rtt: Duration) {
        self.observe_at(rtt, clock::now_ns());
    }

    /// Folds one latency sample, taken at `now` (a reading of the resilience clock the caller
    /// already has), into the estimate.
    pub fn observe_at(&self, rtt: Duration, now: u64) {
        let rtt_ns = rtt.max(MIN_RTT).as_nanos() as f64;
        let prev = self.rtt_ns(now);
        let first = self.samples() == 0;
        // The first sample replaces the seed outright (as go-zero does): a seed is a guess, and
        // blending a real measurement into a guess with time-based weights would take seconds.
        let next = if first || rtt_ns > prev {
            rtt_ns
        } else {
            let elapsed = clock::since(self.stamp_ns.load(Ordering::Relaxed), now);
            let w = sample_weight(elapsed);
            prev * (1.0 - w) + rtt_ns * w
        };
        self.rtt_bits.store(next.to_bits(), Ordering::Relaxed);
        self.stamp_ns.store(now, Ordering::Relaxed);
        let fast = if first {
            rtt_ns
        } else {
            f64::from_bits(self.fast_bits.load(Ordering::Relaxed)) * 0.5 + rtt_ns * 0.5
        };
        self.fast_bits.store(fast.to_bits(), Ordering::Relaxed);
        let samples = self
            .samples
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if self.warming() && converged(samples, fast, next) {
            self.warming.store(false, Ordering::Relaxed);
        }
    }

    /// Restarts slow start (a returning replica), keeping the estimate as its seed.
    #[inline]
    pub fn restart_slow_start(&self) {
        self.samples.store(0, Ordering::Relaxed);
        self.warming.store(true, Ordering::Relaxed);
    }

    /// The figures of this load at `now_ns`.
    pub fn snapshot(&self, now_ns: u64) -> LoadSnapshot {
        let rtt = self.rtt_ns(now_ns);
        let inflight = self.inflight();
        LoadSnapshot {
            ewma_ms: rtt / 1e6,
            inflight,
            samples: self.samples(),
            cost: rtt * f64::from(inflight + 1) / 1e6,
            warming: self.warming(),
        }
    }
}

/// The weight `exp(-elapsed/DECAY)` an old estimate keeps after `elapsed`.
fn decay_weight(elapsed: Duration) -> f64 {
    let x = elapsed.as_secs_f64() / DECAY.as_secs_f64();
    if x < SERIES_BOUND {
        // Picks and samples of an endpoint in use come microseconds to tens of milliseconds
        // apart (x below 1e-2): the series to x⁶ is then `exp(-x)` to the last bits of an f64
        // (the first term left out, x⁷/5040, is under 1e-17), at a fraction of the cost of the
        // library's `exp`. This runs several times per request.
        1.0 - x
            * (1.0 - x * (0.5 - x * (1.0 / 6.0 - x * (1.0 / 24.0 - x * (1.0 / 120.0 - x / 720.0)))))
    } else {
        (-x).exp()
    }
}

/// Below this `elapsed / DECAY`, [`decay_weight`] sums the series instead of calling `exp`.
const SERIES_BOUND: f64 = 1e-2;

/// The weight a sample below the estimate gets after `elapsed` without samples: the time-based
/// `1 - exp(-elapsed/DECAY)` of Finagle and Linkerd, at least `1/SAMPLE_WINDOW` (busy endpoints)
/// and at least [`PROBE_WEIGHT`] after a [`FORCE_PICK`] gap (probes of avoided endpoints).
fn sample_weight(elapsed: Duration) -> f64 {
    let floor = if elapsed >= FORCE_PICK {
        PROBE_WEIGHT
    } else {
        1.0 / f64::from(SAMPLE_WINDOW)
    };
    (1.0 - decay_weight(elapsed)).max(floor)
}

/// Slow start ends when the latency has converged: enough samples and a fast average that agrees
/// with the slow one, or a hard cap on samples so that a noisy replica is not held back forever.
fn converged(samples: u32, fast_ns: f64, slow_ns: f64) -> bool {
    if samples >= SLOW_START_MAX_SAMPLES {
        return true;
    }
    samples >= SLOW_START_MIN_SAMPLES
        && ((fast_ns - slow_ns).abs() / slow_ns) <= SLOW_START_CONVERGED
}

/// The median of the given estimates, the seed for an endpoint that joins a running set.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_weight_is_exp_to_the_last_bits_on_both_sides_of_the_series_bound() {
        let decay = DECAY.as_secs_f64();
        for nanos in [
            0u64,
            1,
            50,
            1_000,
            49_999,
            1_000_000,
            7_500_000,
            10_000_000,
            99_999_999,
            100_000_000,
            100_000_001,
            250_000_000,
            10_000_000_000,
            60_000_000_000,
        ] {
            let elapsed = Duration::from_nanos(nanos);
            let exact = (-(elapsed.as_secs_f64() / decay)).exp();
            let got = decay_weight(elapsed);
            assert!(
                (got - exact).abs() <= exact * 4.0 * f64::EPSILON,
                "{nanos} ns: {got} against exp's {exact}"
            );
        }
    }

    #[test]
    fn peak_replaces_and_lower_samples_blend() {
        let load = Load::new(Duration::from_millis(10), false);
        load.observe(Duration::from_millis(50));
        let now = clock::now_ns();
        assert!((load.rtt_ns(now) / 1e6 - 50.0).abs() < 1.0);
        load.observe(Duration::from_millis(1));
        // Almost no time passed, so the old estimate keeps nearly all its weight.
        assert!(load.rtt_ns(clock::now_ns()) / 1e6 > 40.0);
    }

    #[test]
    fn cost_grows_with_inflight() {
        let load = Load::new(Duration::from_millis(10), false);
        let now = clock::now_ns();
        let idle = load.cost(now);
        load.start();
        load.start();
        assert!(load.cost(now) > 2.9 * idle);
        load.finish();
        load.finish();
        load.finish();
        assert_eq!(load.inflight(), 0);
    }

    #[test]
    fn slow_start_ends_when_latency_converges() {
        let load = Load::new(Duration::from_millis(10), true);
        assert_eq!(load.slow_start_cap(), Some(1));
        for _ in 0..SLOW_START_MIN_SAMPLES {
            load.observe(Duration::from_millis(10));
        }
        assert!(!load.warming());
    }

    #[test]
    fn slow_start_continues_while_latency_moves() {
        let load = Load::new(Duration::from_millis(1), true);
        // Doubling latency: every sample is a new peak, the fast EWMA lags a third behind it.
        for i in 1..=10u32 {
            load.observe(Duration::from_millis(1 << i));
        }
        assert!(load.warming());
        assert_eq!(load.slow_start_cap(), Some(11));
    }

    #[test]
    fn a_peak_is_forgotten_after_a_few_windows_of_samples() {
        let load = Load::new(Duration::from_millis(2), false);
        load.observe(Duration::from_millis(2));
        load.observe(Duration::from_millis(10));
        // Within microseconds: the time-based weight alone would keep the 10 ms peak.
        for _ in 0..4 * SAMPLE_WINDOW {
            load.observe(Duration::from_millis(2));
        }
        assert!(load.rtt_ns(clock::now_ns()) / 1e6 < 2.5);
    }

    #[test]
    fn one_probe_per_force_pick_period_and_only_when_idle() {
        let load = Load::new(Duration::from_millis(40), false);
        let later = clock::now_ns() + 2 * FORCE_PICK.as_nanos() as u64;
        assert!(!load.claim_probe(clock::now_ns()), "picked at creation");
        load.start();
        assert!(!load.claim_probe(later), "busy: its requests will report");
        load.finish();
        assert!(load.claim_probe(later));
        assert!(!load.claim_probe(later), "claimed once");
    }

    #[test]
    fn median_of_even_and_odd_sets() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
