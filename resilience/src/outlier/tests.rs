use super::*;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

fn config() -> OutlierConfig {
    OutlierConfig {
        consecutive_failures: 5,
        failure_rate_percent: None,
        interval: Duration::from_secs(10),
        base_ejection: Duration::from_secs(30),
        max_ejected_percent: 50,
        panic_threshold_percent: 50,
    }
}

fn set(n: usize) -> (Arc<Ejections>, Vec<Detector>) {
    let e = Arc::new(Ejections::default());
    e.set_total(n);
    let d = (0..n).map(|_| Detector::new(Arc::clone(&e))).collect();
    (e, d)
}

/// Records failures until the detector asks for ejection; returns how many it took.
fn fail_until_candidate(d: &Detector, now: u64, c: &OutlierConfig) -> (u32, EjectReason) {
    for i in 1..=1000 {
        if let Some(r) = d.record(now, Verdict::Failure, c) {
            return (i, r);
        }
    }
    panic!("never became a candidate");
}

#[test]
fn consecutive_failures_eject_and_success_resets_the_run() {
    let c = config();
    let (e, d) = set(3);
    for _ in 0..4 {
        assert_eq!(d[0].record(SEC, Verdict::Failure, &c), None);
    }
    assert_eq!(d[0].record(SEC, Verdict::Success, &c), None);
    let (n, reason) = fail_until_candidate(&d[0], SEC, &c);
    assert_eq!((n, reason), (5, EjectReason::ConsecutiveFailures));
    assert!(d[0].eject(SEC, reason, &c));
    assert_eq!(e.ejected(), 1);
    assert_eq!(
        d[0].state(SEC + MS),
        OutlierState::Ejected {
            reason: EjectReason::ConsecutiveFailures,
            remaining_ms: 29_999,
            count: 1
        }
    );
    assert!(d[0].is_ejected(10 * SEC));
    // Answers to requests sent before the ejection change nothing.
    assert_eq!(d[0].record(2 * SEC, Verdict::Failure, &c), None);
}

#[test]
fn two_per_try_timeouts_in_a_row_eject() {
    let c = config();
    let (_, d) = set(3);
    assert_eq!(d[0].record(SEC, Verdict::Timeout, &c), None);
    assert_eq!(
        d[0].record(SEC, Verdict::Timeout, &c),
        Some(EjectReason::ConsecutiveFailures)
    );
    let (_, d) = set(3);
    assert_eq!(d[0].record(SEC, Verdict::Timeout, &c), None);
    assert_eq!(d[0].record(SEC, Verdict::Success, &c), None);
    assert_eq!(
        d[0].record(SEC, Verdict::Timeout, &c),
        None,
        "a success resets the run"
    );
}

#[test]
fn overloaded_answers_count_for_the_rate_only() {
    let mut c = config();
    c.failure_rate_percent = Some(50);
    let (_, d) = set(3);
    for _ in 0..10 {
        assert_eq!(d[0].record(SEC, Verdict::Overloaded, &c), None);
        assert_eq!(d[0].record(SEC, Verdict::Success, &c), None);
    }
    // 20 attempts, 50% failed: now the rate ejects.
    assert_eq!(
        d[0].record(SEC, Verdict::Overloaded, &c),
        Some(EjectReason::FailureRate)
    );
}

#[test]
fn failure_rate_needs_enough_requests_and_forgets_old_ones() {
    let mut c = config();
    c.consecutive_failures = 1000;
    c.failure_rate_percent = Some(30);
    let (_, d) = set(3);
    // 2 of every 5 fail: 40%, but only judged from 20 attempts on.
    let mut ejected_at = None;
    for i in 0..40u64 {
        let v = if i % 5 < 2 {
            Verdict::Failure
        } else {
            Verdict::Success
        };
        if d[0].record(SEC, v, &c).is_some() {
            ejected_at = Some(i + 1);
            break;
        }
    }
    let at = ejected_at.expect("rate ejection");
    assert!(at >= MIN_REQUESTS_FOR_RATE, "judged after {at} attempts");
    // An interval later, the old failures no longer count.
    let later = SEC + 11 * SEC;
    assert_eq!(d[0].record(later, Verdict::Failure, &c), None);
}

#[test]
fn ejection_time_grows_with_repeats_and_decays_when_healthy() {
    let c = config();
    let (_, d) = set(3);
    let mut now = SEC;
    let mut lengths = Vec::new();
    for _ in 0..3 {
        assert!(d[0].eject(now, EjectReason::ConsecutiveFailures, &c));
        let OutlierState::Ejected { remaining_ms, .. } = d[0].state(now) else {
            panic!("ejected");
        };
        lengths.push(remaining_ms / 1000);
        now += remaining_ms * MS;
        assert!(matches!(d[0].state(now), OutlierState::Probation { .. }));
        // Probation failure: back out, for longer.
        assert_eq!(
            d[0].record(now, Verdict::Failure, &c),
            Some(EjectReason::ProbationFailed)
        );
    }
    assert_eq!(lengths, vec![30, 60, 90]);
    assert!(d[0].eject(now, EjectReason::ProbationFailed, &c));
    let OutlierState::Ejected { count, .. } = d[0].state(now) else {
        panic!("ejected");
    };
    assert_eq!(count, 4);
    // Return, succeed on probation, stay healthy for 3 intervals: 3 ejections forgiven.
    now += 121 * SEC;
    assert!(matches!(d[0].state(now), OutlierState::Probation { .. }));
    assert_eq!(d[0].record(now, Verdict::Success, &c), None);
    assert_eq!(d[0].state(now), OutlierState::Healthy);
    now += 30 * SEC;
    assert!(d[0].eject(now, EjectReason::ConsecutiveFailures, &c));
    let OutlierState::Ejected { count, .. } = d[0].state(now) else {
        panic!("ejected");
    };
    assert_eq!(count, 2);
}

#[test]
fn ejection_time_is_capped() {
    let mut c = config();
    c.base_ejection = Duration::from_secs(200);
    let (_, d) = set(2);
    assert!(d[0].eject(SEC, EjectReason::ConsecutiveFailures, &c));
    let now = SEC + 200 * SEC;
    assert!(matches!(d[0].state(now), OutlierState::Probation { .. }));
    assert!(d[0].eject(now, EjectReason::ProbationFailed, &c));
    let OutlierState::Ejected { remaining_ms, .. } = d[0].state(now) else {
        panic!("ejected");
    };
    assert_eq!(remaining_ms, MAX_EJECTION.as_millis() as u64);
}

#[test]
fn the_cap_limits_the_ejected_share_and_returns_free_slots() {
    let c = config();
    let (e, d) = set(4);
    assert!(d[0].eject(SEC, EjectReason::ConsecutiveFailures, &c));
    assert!(d[1].eject(SEC, EjectReason::ConsecutiveFailures, &c));
    assert!(
        !d[2].eject(SEC, EjectReason::ConsecutiveFailures, &c),
        "3 of 4 is above 50%"
    );
    assert_eq!(e.ejected(), 2);
    // d[0] returns after 30 s: its slot is free again.
    let later = 32 * SEC;
    assert!(matches!(d[0].state(later), OutlierState::Probation { .. }));
    assert_eq!(e.ejected(), 1);
    assert!(d[2].eject(later, EjectReason::ConsecutiveFailures, &c));
    // A removed replica gives its slot back.
    let [a, b, c2, d3]: [Detector; 4] = d.try_into().unwrap();
    drop(b);
    assert_eq!(e.ejected(), 1);
    drop((a, c2, d3));
    assert_eq!(e.ejected(), 0);
}

#[test]
fn one_replica_may_always_be_ejected_unless_the_cap_is_zero() {
    let mut c = config();
    c.max_ejected_percent = 10;
    let (_, d) = set(3);
    assert!(d[0].eject(SEC, EjectReason::ConsecutiveFailures, &c));
    assert!(!d[1].eject(SEC, EjectReason::ConsecutiveFailures, &c));
    c.max_ejected_percent = 0;
    let (_, d) = set(3);
    assert!(!d[0].eject(SEC, EjectReason::ConsecutiveFailures, &c));
}

#[test]
fn panic_mode_below_the_healthy_threshold() {
    let mut c = config();
    c.max_ejected_percent = 100;
    let (e, d) = set(4);
    assert!(!e.panic(c.panic_threshold_percent));
    assert!(d[0].eject(SEC, EjectReason::ConsecutiveFailures, &c));
    assert!(d[1].eject(SEC, EjectReason::ConsecutiveFailures, &c));
    assert!(!e.panic(c.panic_threshold_percent), "2 of 4 healthy is 50%");
    assert!(d[2].eject(SEC, EjectReason::ConsecutiveFailures, &c));
    assert!(e.panic(c.panic_threshold_percent));
    assert!(!e.panic(0), "threshold 0 never panics");
}

#[test]
fn retry_after_pauses_without_escalating() {
    let c = config();
    let (_, d) = set(3);
    assert!(d[0].pause(SEC, Duration::from_secs(2), &c));
    assert_eq!(
        d[0].state(SEC),
        OutlierState::Ejected {
            reason: EjectReason::RetryAfter,
            remaining_ms: 2000,
            count: 0
        }
    );
    assert!(matches!(
        d[0].state(3 * SEC),
        OutlierState::Probation { .. }
    ));
    assert_eq!(d[0].record(3 * SEC, Verdict::Success, &c), None);
    assert_eq!(d[0].state(3 * SEC), OutlierState::Healthy);
    assert!(d[0].pause(4 * SEC, Duration::from_secs(3600), &c));
    let OutlierState::Ejected { remaining_ms, .. } = d[0].state(4 * SEC) else {
        panic!("paused");
    };
    assert_eq!(remaining_ms, MAX_RETRY_AFTER_PAUSE.as_millis() as u64);
}
