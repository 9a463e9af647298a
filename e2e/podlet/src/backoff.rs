//! Crash-loop backoff, as the kubelet does it: the first restart after a crash is immediate, then the
//! delay is 10 s and doubles with every further consecutive crash, capped at 5 minutes.

use std::time::Duration;

/// Waiting reason of a container held back by the backoff.
pub const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";

/// Exponential restart delay of one container.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// A run at least this long counts as healthy and resets the delay.
    reset_after: Duration,
    consecutive: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(10), Duration::from_secs(300))
    }
}

impl Backoff {
    /// A backoff starting at `initial` and never exceeding `max`; resets after a run of `2 * max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            reset_after: max * 2,
            consecutive: 0,
        }
    }

    /// The delay before restarting a container that exited after running for `ran_for`.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.reset_after {
            self.consecutive = 0;
        }
        let n = self.consecutive;
        self.consecutive = self.consecutive.saturating_add(1);
        if n == 0 {
            return Duration::ZERO;
        }
        self.initial
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps() {
        let mut b = Backoff::default();
        let quick = Duration::from_secs(1);
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay(quick).as_secs()).collect();
        assert_eq!(delays, vec![0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn long_run_resets() {
        let mut b = Backoff::default();
        b.next_delay(Duration::from_secs(1));
        b.next_delay(Duration::from_secs(1));
        assert_eq!(b.next_delay(Duration::from_secs(600)), Duration::ZERO);
        assert_eq!(
            b.next_delay(Duration::from_secs(1)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::default();
        for _ in 0..100 {
            assert!(b.next_delay(Duration::ZERO) <= Duration::from_secs(300));
        }
    }
}
