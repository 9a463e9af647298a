use super::*;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

fn budget(ratio: f64, min: u32) -> RetryBudget {
    RetryBudget::new(BudgetConfig {
        ratio,
        min_per_second: min,
    })
}

fn drain(b: &RetryBudget, now: u64, kind: RetryKind) -> u64 {
    let mut n = 0;
    while b.withdraw(now, kind, 3).is_ok() {
        n += 1;
        assert!(n < 1_000_000, "budget never runs out");
    }
    n
}

#[test]
fn floor_and_ratio_bound_retries() {
    let b = budget(0.2, 1);
    let now = SEC;
    // The floor alone: 1 per second over a 10 s window.
    assert_eq!(drain(&b, now, RetryKind::Unsent), 10);
    assert_eq!(
        b.withdraw(now, RetryKind::Unsent, 3),
        Err(Refusal::Exhausted)
    );
    for _ in 0..100 {
        b.deposit(now);
    }
    // 100 requests earn 20 more.
    assert_eq!(drain(&b, now, RetryKind::Unsent), 20);
    let s = b.snapshot(now, 3);
    assert_eq!((s.requests, s.retries, s.available), (100, 30, 0));
}

#[test]
fn budget_refills_as_the_window_slides() {
    let b = budget(0.0, 1);
    assert_eq!(drain(&b, SEC, RetryKind::Unsent), 10);
    // Half a window later, the retries of the first buckets are still inside.
    assert_eq!(drain(&b, 5 * SEC, RetryKind::Unsent), 0);
    // A full window later they have expired.
    assert_eq!(drain(&b, 12 * SEC, RetryKind::Unsent), 10);
}

#[test]
fn aimd_shrinks_on_failed_retries_and_recovers_on_success() {
    let b = budget(0.2, 0);
    for _ in 0..1000 {
        b.deposit(SEC);
    }
    assert_eq!(b.snapshot(SEC, 3).available, 200);
    b.record_retry(false);
    b.record_retry(false);
    assert!((b.snapshot(SEC, 3).ratio - 0.05).abs() < 1e-9);
    assert_eq!(b.snapshot(SEC, 3).available, 50);
    for _ in 0..20 {
        b.record_retry(false);
    }
    let floor = 0.2 * MIN_RATIO_SHARE;
    assert!((b.snapshot(SEC, 3).ratio - floor).abs() < 1e-9);
    for _ in 0..100 {
        b.record_retry(true);
    }
    assert!(
        (b.snapshot(SEC, 3).ratio - 0.2).abs() < 1e-9,
        "never above configured"
    );
}

#[test]
fn one_bad_replica_is_not_correlated() {
    let b = budget(0.2, 10);
    let now = SEC;
    for i in 0..300u64 {
        let replica = i % 3;
        b.record_attempt(now, replica, replica == 0);
    }
    assert!(!b.snapshot(now, 3).correlated);
    assert_eq!(b.withdraw(now, RetryKind::Repeat, 3), Ok(()));
}

#[test]
fn failures_on_every_replica_stop_repeat_retries_until_they_pass() {
    let b = budget(0.2, 10);
    let now = SEC;
    for i in 0..30u64 {
        b.record_attempt(now, i % 3, true);
    }
    assert!(b.snapshot(now, 3).correlated);
    assert_eq!(
        b.withdraw(now, RetryKind::Repeat, 3),
        Err(Refusal::Correlated)
    );
    assert_eq!(
        b.withdraw(now, RetryKind::Unsent, 3),
        Ok(()),
        "an unsent request costs no replica anything"
    );
    // The correlation window is short: once it has passed, retries resume.
    let later = now + CORRELATION_WINDOW.as_nanos() as u64 + SEC;
    assert_eq!(b.withdraw(later, RetryKind::Repeat, 3), Ok(()));
}

#[test]
fn few_failures_or_mostly_successes_are_not_correlated() {
    let b = budget(0.2, 10);
    for i in 0..(CORRELATION_MIN_FAILURES - 1) {
        b.record_attempt(SEC, i % 3, true);
    }
    assert!(!b.snapshot(SEC, 3).correlated, "too few failures to judge");
    let b = budget(0.2, 10);
    for i in 0..300u64 {
        b.record_attempt(SEC, i % 3, i % 10 == 0);
    }
    assert!(!b.snapshot(SEC, 3).correlated, "10% failures spread thin");
    assert!(!b.snapshot(SEC, 1).correlated, "a single replica");
}
