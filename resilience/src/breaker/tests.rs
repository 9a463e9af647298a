use super::*;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

fn config() -> BreakerConfig {
    BreakerConfig {
        enabled: true,
        k: 1.5,
        window: Duration::from_secs(10),
        min_requests: MIN_REQUESTS,
    }
}

#[test]
fn healthy_replica_is_never_throttled() {
    let c = config();
    let b = Breaker::new();
    for i in 0..1000 {
        b.record(SEC + i * MS, true, &c);
    }
    assert_eq!(b.drop_probability(2 * SEC, &c), 0.0);
    // Nothing is drawn for a replica the breaker drops nothing of.
    assert!(
        b.allow(2 * SEC, || unreachable!("a draw for a healthy replica"), &c)
            .is_ok()
    );
}

#[test]
fn probability_follows_the_sre_formula() {
    let c = config();
    let b = Breaker::new();
    // 100 sent, 20 accepted: (100 - 1.5*20) / 101.
    for i in 0..100 {
        b.record(SEC, i < 20, &c);
    }
    let p = b.drop_probability(SEC, &c);
    assert!((p - 70.0 / 101.0).abs() < 1e-9, "{p}");
    // The first call after a quiet second is let through as a probe whatever the draw.
    assert!(b.allow(SEC, || 0.0, &c).is_ok());
    assert!(b.allow(SEC, || 0.69, &c).is_err());
    assert!(b.allow(SEC, || 0.70, &c).is_ok());
    // Moderately failing (K·accepts ≥ requests): nothing dropped.
    let b = Breaker::new();
    for i in 0..100 {
        b.record(SEC, i < 67, &c);
    }
    assert_eq!(b.drop_probability(SEC, &c), 0.0);
}

#[test]
fn few_requests_never_throttle() {
    let c = config();
    let b = Breaker::new();
    for _ in 0..(MIN_REQUESTS - 1) {
        b.record(SEC, false, &c);
    }
    assert_eq!(b.drop_probability(SEC, &c), 0.0);
    b.record(SEC, false, &c);
    assert!(b.drop_probability(SEC, &c) > 0.9, "the volume is reached");
}

#[test]
fn drops_do_not_count_so_recovery_is_quick() {
    let c = config();
    let b = Breaker::new();
    for _ in 0..50 {
        b.record(SEC, false, &c);
    }
    let before = b.drop_probability(SEC, &c);
    // Thousands of dropped attempts leave the probability unchanged (go-zero's would climb).
    for _ in 0..5000 {
        let _ = b.allow(SEC, || 0.0, &c);
    }
    assert_eq!(b.drop_probability(SEC, &c), before);
    // The replica recovers: the successes that pass bring the probability to 0 after
    // 2× the failures (K·accepts ≥ requests), not after a window of drops.
    for _ in 0..99 {
        b.record(SEC, true, &c);
    }
    assert!(b.drop_probability(SEC, &c) > 0.0);
    b.record(SEC, true, &c);
    assert_eq!(b.drop_probability(SEC, &c), 0.0);
}

#[test]
fn failures_expire_with_the_window() {
    let c = config();
    let b = Breaker::new();
    for _ in 0..50 {
        b.record(SEC, false, &c);
    }
    assert!(b.drop_probability(SEC, &c) > 0.9);
    assert_eq!(b.drop_probability(12 * SEC, &c), 0.0);
}

/// The shortcut for a window without failures must agree with the scan: a failure keeps
/// counting up to the window's last bucket, an older clock reading than the failure's counts it,
/// and with K < 1 a window of successes alone can drop.
#[test]
fn the_no_failure_shortcut_agrees_with_the_window() {
    let c = config();
    let b = Breaker::new();
    for _ in 0..(MIN_REQUESTS - 1) {
        b.record(SEC, true, &c);
    }
    b.record(SEC + 5 * MS, false, &c);
    // 20 sent, 19 accepted: (20 - 1.5*19) / 21 < 0, nothing dropped either way; with more
    // failures the probability is positive until the window has passed.
    for _ in 0..30 {
        b.record(SEC + 5 * MS, false, &c);
    }
    assert!(b.drop_probability(SEC + 5 * MS, &c) > 0.0);
    assert!(
        b.drop_probability(SEC, &c) > 0.0,
        "a reading older than the failure"
    );
    assert!(
        b.drop_probability(11 * SEC - 1, &c) > 0.0,
        "still in the last bucket"
    );
    assert_eq!(b.drop_probability(11 * SEC + 5 * MS, &c), 0.0);
    // K < 1: successes alone give a positive probability, which the shortcut must not hide.
    let lenient = BreakerConfig { k: 0.5, ..c };
    let b = Breaker::new();
    for _ in 0..100 {
        b.record(SEC, true, &lenient);
    }
    let p = b.drop_probability(SEC, &lenient);
    assert!((p - 50.0 / 101.0).abs() < 1e-9, "{p}");
}

#[test]
fn a_probe_passes_each_interval_even_when_fully_throttled() {
    let c = config();
    let b = Breaker::new();
    for _ in 0..1000 {
        b.record(SEC, false, &c);
    }
    // The unit 0.0 would always be dropped; the first probe still passes.
    assert!(b.allow(SEC, || 0.0, &c).is_ok());
    assert!(b.allow(SEC + 10 * MS, || 0.0, &c).is_err());
    assert!(b.allow(SEC + 500 * MS, || 0.0, &c).is_err());
    assert!(b.allow(2 * SEC + 10 * MS, || 0.0, &c).is_ok());
}

#[test]
fn disabled_breaker_lets_everything_through() {
    let mut c = config();
    c.enabled = false;
    let b = Breaker::new();
    for _ in 0..100 {
        b.record(SEC, false, &c);
    }
    assert!(b.allow(SEC, || 0.0, &c).is_ok());
    assert_eq!(b.snapshot(SEC, &c).drop_probability, 0.0);
}

#[test]
fn slots_cap_concurrent_holders() {
    let s = Slots::default();
    let a = s.try_acquire(Some(2)).expect("first");
    let b = s.try_acquire(Some(2)).expect("second");
    assert!(s.try_acquire(Some(2)).is_none());
    drop(a);
    let _c = s.try_acquire(Some(2)).expect("freed");
    assert_eq!(s.held(), 2);
    drop(b);
    let _unlimited: Vec<_> = (0..10).map(|_| s.try_acquire(None).unwrap()).collect();
    assert_eq!(s.held(), 11);
}
