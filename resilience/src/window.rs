//! A sliding window of counters split into fixed buckets, keyed by a caller-supplied clock.
//!
//! Every mechanism that judges "recently" (retry budget, breaker, failure rates, shedder) counts
//! into one of these. Time is passed in as nanoseconds (from [`crate::clock::now_ns`] in the
//! proxy, from a plain integer in tests), so the arithmetic is deterministic and testable without
//! sleeping. A bucket is reset lazily when its slot is reused for a newer epoch, so an idle
//! window costs nothing and a read after a long pause sees zeros.

use std::time::Duration;

/// Counters that can live in a [`Window`] bucket.
pub trait Counts: Default + Copy {
    /// Adds `other` into `self` (used when summing buckets).
    fn merge(&mut self, other: &Self);
}

/// A ring of `n` buckets, each covering `bucket_ns` nanoseconds.
#[derive(Debug, Clone)]
pub struct Window<T> {
    bucket_ns: u64,
    slots: Box<[Slot<T>]>,
    /// The bucket the last update went to: where it starts, and its slot. Updates come on
    /// every request, mostly within one bucket, and this spares them the two divisions that
    /// find a bucket (a 64-bit division costs tens of cycles).
    hot: Option<(u64, usize)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot<T> {
    /// Which bucket-sized epoch of time this slot holds; `u64::MAX` means never used.
    epoch: u64,
    value: T,
}

// === impl Window ===

impl<T: Counts> Window<T> {
    /// A window spanning `span`, split into `buckets` buckets (at least one, each at least 1 ns).
    pub fn new(span: Duration, buckets: usize) -> Self {
        let buckets = buckets.max(1);
        let span_ns = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX);
        let bucket_ns = (span_ns / buckets as u64).max(1);
        let slots = (0..buckets)
            .map(|_| Slot {
                epoch: u64::MAX,
                value: T::default(),
            })
            .collect();
        Self {
            bucket_ns,
            slots,
            hot: None,
        }
    }

    /// The span the window covers.
    #[inline]
    pub fn span(&self) -> Duration {
        Duration::from_nanos(self.bucket_ns.saturating_mul(self.slots.len() as u64))
    }

    /// The width of one bucket.
    #[inline]
    pub fn bucket(&self) -> Duration {
        Duration::from_nanos(self.bucket_ns)
    }

    /// Updates the bucket holding `now_ns`.
    pub fn update(&mut self, now_ns: u64, f: impl FnOnce(&mut T)) {
        if let Some((start, at)) = self.hot
            && now_ns.wrapping_sub(start) < self.bucket_ns
        {
            // The bucket of the last update, whose slot holds its epoch since then.
            f(&mut self.slots[at].value);
            return;
        }
        let epoch = now_ns / self.bucket_ns;
        let n = self.slots.len() as u64;
        let at = (epoch % n) as usize;
        self.hot = Some((epoch * self.bucket_ns, at));
        let slot = &mut self.slots[at];
        if slot.epoch != epoch {
            slot.epoch = epoch;
            slot.value = T::default();
        }
        f(&mut slot.value);
    }

    /// The sum of every bucket still inside the window at `now_ns`.
    #[inline]
    pub fn sum(&self, now_ns: u64) -> T {
        self.sum_recent(now_ns, self.slots.len())
    }

    /// The sum of the newest `buckets` buckets (the current one included) at `now_ns`.
    pub fn sum_recent(&self, now_ns: u64, buckets: usize) -> T {
        let current = now_ns / self.bucket_ns;
        let span = buckets.min(self.slots.len()) as u64;
        let mut total = T::default();
        for slot in self.slots.iter() {
            if slot.epoch != u64::MAX && slot.epoch <= current && current - slot.epoch < span {
                total.merge(&slot.value);
            }
        }
        total
    }

    /// The buckets inside the window, newest first, with empty values for buckets never
    /// written in that epoch.
    pub fn newest_first(&self, now_ns: u64) -> impl Iterator<Item = T> + '_ {
        let current = now_ns / self.bucket_ns;
        let n = self.slots.len() as u64;
        (0..n).map(move |age| {
            let Some(epoch) = current.checked_sub(age) else {
                return T::default();
            };
            let slot = &self.slots[(epoch % n) as usize];
            if slot.epoch == epoch {
                slot.value
            } else {
                T::default()
            }
        })
    }
}

/// A pair of counters, the most common bucket content: something happened, and how often it
/// went well.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Events counted.
    pub total: u64,
    /// Of which went well.
    pub good: u64,
}

impl Counts for Tally {
    fn merge(&mut self, other: &Self) {
        self.total += other.total;
        self.good += other.good;
    }
}

impl Tally {
    /// Events that did not go well.
    #[inline]
    pub fn bad(&self) -> u64 {
        self.total.saturating_sub(self.good)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn tally(w: &mut Window<Tally>, now: u64, good: bool) {
        w.update(now, |t| {
            t.total += 1;
            t.good += u64::from(good);
        });
    }

    #[test]
    fn sums_what_is_inside_the_window_only() {
        let mut w = Window::<Tally>::new(Duration::from_secs(1), 10);
        assert_eq!(w.bucket(), Duration::from_millis(100));
        tally(&mut w, 0, true);
        tally(&mut w, 50 * MS, false);
        tally(&mut w, 950 * MS, true);
        assert_eq!(w.sum(950 * MS), Tally { total: 3, good: 2 });
        // 1.05 s: the first bucket (0..100 ms) has left the window.
        assert_eq!(w.sum(1050 * MS), Tally { total: 1, good: 1 });
        // Long after: everything expired, even though no write reset the slots.
        assert_eq!(w.sum(10_000 * MS), Tally::default());
    }

    #[test]
    fn reused_slots_start_from_zero() {
        let mut w = Window::<Tally>::new(Duration::from_secs(1), 10);
        tally(&mut w, 10 * MS, false);
        // Same slot index, one full rotation later.
        tally(&mut w, 1010 * MS, true);
        assert_eq!(w.sum(1010 * MS), Tally { total: 1, good: 1 });
    }

    #[test]
    fn recent_and_newest_first_views() {
        let mut w = Window::<Tally>::new(Duration::from_secs(1), 10);
        tally(&mut w, 100 * MS, false);
        tally(&mut w, 300 * MS, true);
        tally(&mut w, 310 * MS, true);
        assert_eq!(w.sum_recent(300 * MS, 1), Tally { total: 2, good: 2 });
        assert_eq!(w.sum_recent(300 * MS, 3), Tally { total: 3, good: 2 });
        let seen: Vec<u64> = w.newest_first(300 * MS).map(|t| t.total).take(4).collect();
        assert_eq!(seen, vec![2, 0, 1, 0]);
    }

    #[test]
    fn updates_through_the_last_bucket_match_updates_that_find_it_anew() {
        // Readings mostly rising within and across buckets, some earlier (taken on another
        // thread before the lock), some a whole rotation or more later.
        let mut w = Window::<Tally>::new(Duration::from_millis(100), 10);
        let mut reference = [(u64::MAX, 0u64); 10];
        let mut now = 5 * MS;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for i in 0..20_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            now = match seed % 100 {
                0..=79 => now + seed % (2 * MS),
                80..=89 => now.saturating_sub(seed % (3 * MS)),
                90..=97 => now + seed % (30 * MS),
                _ => now + seed % (300 * MS),
            };
            tally(&mut w, now, i % 3 == 0);
            let epoch = now / (10 * MS);
            let slot = &mut reference[(epoch % 10) as usize];
            if slot.0 != epoch {
                *slot = (epoch, 0);
            }
            slot.1 += 1;
            let expected: u64 = reference
                .iter()
                .filter(|(e, _)| *e != u64::MAX && *e <= epoch && epoch - e < 10)
                .map(|(_, n)| n)
                .sum();
            assert_eq!(w.sum(now).total, expected, "update {i} at {now} ns");
        }
    }

    #[test]
    fn early_clock_readings_do_not_underflow() {
        let w = Window::<Tally>::new(Duration::from_secs(10), 40);
        assert_eq!(w.newest_first(1).count(), 40);
        assert_eq!(w.sum(1), Tally::default());
    }
}
