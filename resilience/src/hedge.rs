//! Hedging for idempotent reads: when the first attempt is slower than a high percentile of
//! recent latencies, a second attempt goes to another replica and the first answer wins.
//!
//! This module keeps the latency record and computes the hedge delay; the hedge itself draws
//! on the same retry budget as retries, so hedges can never multiply load beyond it.

use std::time::Duration;

use parking_lot::Mutex;

/// Latencies remembered per route.
pub const SAMPLES: usize = 512;
/// Fewest samples before any hedge: a percentile of a handful of requests is noise.
pub const MIN_SAMPLES: usize = 50;

/// Compiled hedging settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HedgeConfig {
    /// Percentile of recent latencies after which the hedge is sent (50 to 99.9).
    pub percentile: f64,
    /// Never hedge earlier than this.
    pub min_delay: Duration,
}

/// Recent latencies of one route.
#[derive(Debug, Default)]
pub struct LatencyRecord {
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    samples: Vec<u64>,
    next: usize,
}

// === impl LatencyRecord ===

impl LatencyRecord {
    /// Records one attempt's time to response headers.
    pub fn record(&self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let mut r = self.inner.lock();
        if r.samples.len() < SAMPLES {
            r.samples.push(ns);
        } else {
            let i = r.next;
            r.samples[i] = ns;
            r.next = (i + 1) % SAMPLES;
        }
    }

    /// The `percentile` (0 to 100) of the recorded latencies, once there are enough.
    pub fn percentile(&self, percentile: f64) -> Option<Duration> {
        let mut copy = {
            let r = self.inner.lock();
            if r.samples.len() < MIN_SAMPLES {
                return None;
            }
            r.samples.clone()
        };
        let rank = ((percentile.clamp(0.0, 100.0) / 100.0) * (copy.len() - 1) as f64).round();
        let (_, v, _) = copy.select_nth_unstable(rank as usize);
        Some(Duration::from_nanos(*v))
    }

    /// When to send the hedge, if enough is known.
    #[inline]
    pub fn hedge_delay(&self, config: &HedgeConfig) -> Option<Duration> {
        self.percentile(config.percentile)
            .map(|p| p.max(config.min_delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_hedge_until_enough_samples_then_at_the_percentile() {
        let r = LatencyRecord::default();
        let c = HedgeConfig {
            percentile: 95.0,
            min_delay: Duration::from_millis(10),
        };
        for ms in 1..MIN_SAMPLES as u64 {
            r.record(Duration::from_millis(ms));
        }
        assert_eq!(r.hedge_delay(&c), None);
        // 1..=100 ms: p95 is 95 ms.
        for ms in MIN_SAMPLES as u64..=100 {
            r.record(Duration::from_millis(ms));
        }
        assert_eq!(r.hedge_delay(&c), Some(Duration::from_millis(95)));
        let fast = LatencyRecord::default();
        for _ in 0..100 {
            fast.record(Duration::from_millis(1));
        }
        assert_eq!(
            fast.hedge_delay(&c),
            Some(Duration::from_millis(10)),
            "min delay"
        );
    }

    #[test]
    fn old_samples_are_overwritten() {
        let r = LatencyRecord::default();
        for _ in 0..SAMPLES {
            r.record(Duration::from_millis(500));
        }
        for _ in 0..SAMPLES {
            r.record(Duration::from_millis(5));
        }
        assert_eq!(r.percentile(99.0), Some(Duration::from_millis(5)));
    }
}
