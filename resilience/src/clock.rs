//! A process-wide monotonic clock in nanoseconds, so per-endpoint timestamps fit in atomics.
//!
//! It reads `tokio::time::Instant`, so tests that pause tokio's clock see consistent figures.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call in this process; never 0, so 0 can mean "never".
pub fn now_ns() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    let ns = Instant::now().saturating_duration_since(epoch).as_nanos();
    u64::try_from(ns).unwrap_or(u64::MAX).max(1)
}

/// The instant of a reading of [`now_ns`], for timers: a deadline computed from a reading taken
/// anyway costs no further clock read.
#[inline]
pub fn instant_at(ns: u64) -> Instant {
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch + Duration::from_nanos(ns)
}

/// The duration between two readings of [`now_ns`], zero if `later` is earlier.
#[inline]
pub fn since(earlier_ns: u64, later_ns: u64) -> Duration {
    Duration::from_nanos(later_ns.saturating_sub(earlier_ns))
}
