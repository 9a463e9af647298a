//! Token-bucket rate limiting per route, answering 429 with `Retry-After`.
//!
//! The bucket holds up to `burst` tokens and refills at `requests_per_second`; each admitted
//! request takes one. A refused request learns exactly when the next token arrives, which the
//! proxy sends as `Retry-After` (whole seconds, rounded up, as the header requires) so that
//! well-behaved clients come back when they will be served rather than hammering.

use std::time::Duration;

use parking_lot::Mutex;

/// Token-bucket settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Sustained rate.
    pub requests_per_second: u32,
    /// Bucket capacity.
    pub burst: u32,
}

/// A refused request: when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Time until a token is available.
    pub retry_after: Duration,
}

/// One route's bucket.
#[derive(Debug)]
pub struct TokenBucket {
    config: RateLimitConfig,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens in billionths, so that refills are exact integer arithmetic.
    nanotokens: u128,
    /// Last refill; 0 before the first request.
    at_ns: u64,
}

const NANO: u128 = 1_000_000_000;

// === impl TokenBucket ===

impl TokenBucket {
    /// A full bucket.
    pub fn new(config: RateLimitConfig) -> Self {
        let config = RateLimitConfig {
            requests_per_second: config.requests_per_second.max(1),
            burst: config.burst.max(1),
        };
        Self {
            state: Mutex::new(Bucket {
                nanotokens: u128::from(config.burst) * NANO,
                at_ns: 0,
            }),
            config,
        }
    }

    /// The settings.
    #[inline]
    pub fn config(&self) -> RateLimitConfig {
        self.config
    }

    /// Takes a token at `now_ns`, or says how long until one is available.
    pub fn try_acquire(&self, now_ns: u64) -> Result<(), Limited> {
        let rate = u128::from(self.config.requests_per_second);
        let mut b = self.state.lock();
        b.nanotokens = self.refilled(&b, now_ns);
        b.at_ns = now_ns.max(1);
        if b.nanotokens >= NANO {
            b.nanotokens -= NANO;
            return Ok(());
        }
        // One token takes 1e9/rate ns; the missing share of it, rounded up.
        let missing = NANO - b.nanotokens;
        let wait_ns = missing.div_ceil(rate);
        Err(Limited {
            retry_after: Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX)),
        })
    }

    /// Tokens available at `now_ns`.
    #[inline]
    pub fn available(&self, now_ns: u64) -> f64 {
        let b = self.state.lock();
        self.refilled(&b, now_ns) as f64 / NANO as f64
    }

    fn refilled(&self, b: &Bucket, now_ns: u64) -> u128 {
        let cap = u128::from(self.config.burst) * NANO;
        if b.at_ns == 0 {
            return b.nanotokens;
        }
        let elapsed = u128::from(now_ns.saturating_sub(b.at_ns));
        let rate = u128::from(self.config.requests_per_second);
        b.nanotokens
            .saturating_add(elapsed.saturating_mul(rate))
            .min(cap)
    }
}

// === impl Limited ===

impl Limited {
    /// The `Retry-After` value: whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let ms = self.retry_after.as_millis();
        u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn burst_then_sustained_rate() {
        let b = TokenBucket::new(RateLimitConfig {
            requests_per_second: 10,
            burst: 3,
        });
        let t0 = 1000 * MS;
        for _ in 0..3 {
            assert!(b.try_acquire(t0).is_ok());
        }
        let refused = b.try_acquire(t0).expect_err("burst used");
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert_eq!(refused.retry_after_secs(), 1);
        // 10/s: one token every 100 ms.
        assert!(b.try_acquire(t0 + 50 * MS).is_err());
        assert!(b.try_acquire(t0 + 100 * MS).is_ok());
        assert!(b.try_acquire(t0 + 100 * MS).is_err());
        // Over a second, exactly the rate passes (plus the burst refilled at most).
        let mut passed = 0;
        for i in 1..=100 {
            if b.try_acquire(t0 + 100 * MS + i * 10 * MS).is_ok() {
                passed += 1;
            }
        }
        assert_eq!(passed, 10);
    }

    #[test]
    fn idle_time_refills_no_more_than_the_burst() {
        let b = TokenBucket::new(RateLimitConfig {
            requests_per_second: 100,
            burst: 5,
        });
        assert!(b.try_acquire(MS).is_ok());
        let later = 3600 * 1000 * MS;
        assert!((b.available(later) - 5.0).abs() < 1e-9);
        for _ in 0..5 {
            assert!(b.try_acquire(later).is_ok());
        }
        assert!(b.try_acquire(later).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let b = TokenBucket::new(RateLimitConfig {
            requests_per_second: 1,
            burst: 1,
        });
        assert!(b.try_acquire(MS).is_ok());
        let r = b.try_acquire(MS + 200 * MS).expect_err("empty");
        assert_eq!(r.retry_after, Duration::from_millis(800));
        assert_eq!(r.retry_after_secs(), 1);
        let slow = Limited {
            retry_after: Duration::from_millis(2001),
        };
        assert_eq!(slow.retry_after_secs(), 3);
    }
}
