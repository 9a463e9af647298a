use super::*;

const MS: u64 = 1_000_000;

fn config() -> ShedConfig {
    ShedConfig {
        enabled: true,
        latency_target: Duration::from_millis(20),
        min_concurrency: 4,
        max_concurrency: 1000,
    }
}

/// Runs `n` intervals in which `conc` requests are in flight at once and each takes
/// `latency_ms`; returns the time after them.
fn drive(s: &Arc<Shedder>, c: &ShedConfig, mut now: u64, n: usize, conc: u32, lat: u64) -> u64 {
    for _ in 0..n {
        let admitted: Vec<Admission> = (0..conc).filter_map(|_| s.try_admit(now, c).ok()).collect();
        now += lat * MS;
        for a in admitted {
            a.finish(now, c);
        }
        now += UPDATE_INTERVAL.as_nanos() as u64;
    }
    now
}

#[test]
fn starts_open_and_sheds_only_above_the_limit() {
    let c = ShedConfig {
        max_concurrency: 2,
        ..config()
    };
    let c = ShedConfig {
        min_concurrency: 1,
        ..c
    };
    let s = Arc::new(Shedder::new(&c));
    let a = s.try_admit(MS, &c).expect("first");
    let _b = s.try_admit(MS, &c).expect("second");
    let err = s.try_admit(MS, &c).expect_err("third is shed");
    assert_eq!(
        err,
        Overloaded {
            limit: 2,
            inflight: 2
        }
    );
    drop(a);
    assert!(
        s.try_admit(MS, &c).is_ok(),
        "a cancelled request frees its slot"
    );
}

#[test]
fn latency_above_target_shrinks_the_limit_towards_the_load_in_use() {
    let c = config();
    let s = Arc::new(Shedder::new(&c));
    // Uncontended baseline: 2 at a time, 5 ms.
    let now = drive(&s, &c, MS, 5, 2, 5);
    assert_eq!(s.snapshot().min_rtt_ms, Some(5.0));
    // Saturation: 200 in flight, 100 ms each (target is 5 + 20 = 25 ms).
    let now = drive(&s, &c, now, 1, 200, 100);
    let after_one = s.limit();
    assert!(
        after_one <= 100,
        "cut from the peak in use, not from 1000: {after_one}"
    );
    let _ = drive(&s, &c, now, 10, 200, 100);
    assert_eq!(
        s.limit(),
        c.min_concurrency,
        "keeps shrinking while latency stays high"
    );
}

#[test]
fn healthy_latency_grows_the_limit_only_when_it_is_used() {
    let c = ShedConfig {
        max_concurrency: 10_000,
        ..config()
    };
    let s = Arc::new(Shedder::new(&c));
    let now = drive(&s, &c, MS, 3, 2, 5);
    let now = drive(&s, &c, now, 1, 400, 200);
    // One quiet interval flushes the overload's samples into the limit.
    let now = drive(&s, &c, now, 1, 2, 6);
    let low = s.limit();
    assert!(low < 400);
    // Latency back to normal while the limit is in full use: it grows by √limit steps.
    let now = drive(&s, &c, now, 5, low, 6);
    let now = drive(&s, &c, now, 1, 2, 6);
    let grown = s.limit();
    assert!(grown > low, "{grown} > {low}");
    // Idle traffic (2 in flight) leaves it alone.
    let _ = drive(&s, &c, now, 5, 2, 6);
    assert_eq!(s.limit(), grown);
}

#[test]
fn a_sustained_overload_does_not_raise_its_own_baseline() {
    let c = config();
    let s = Arc::new(Shedder::new(&c));
    let now = drive(&s, &c, MS, 3, 2, 5);
    // Long overload at 100 concurrent: the limit settles, but min_rtt stays 5 ms
    // because contended samples never enter it.
    let _ = drive(&s, &c, now, 50, 100, 60);
    assert_eq!(s.snapshot().min_rtt_ms, Some(5.0));
}

#[test]
fn a_slower_backend_is_re_measured_at_the_minimum_limit() {
    let c = config();
    let s = Arc::new(Shedder::new(&c));
    let now = drive(&s, &c, MS, 3, 2, 5);
    // The backend itself is now 80 ms per request, even uncontended.
    let now = drive(&s, &c, now, 20, 50, 80);
    assert_eq!(s.limit(), c.min_concurrency);
    // At the minimum, samples are uncontended: min_rtt follows and the limit recovers
    // once the old baseline leaves the window.
    let _ = drive(&s, &c, now + MIN_RTT_WINDOW.as_nanos() as u64, 20, 4, 80);
    let snap = s.snapshot();
    assert_eq!(snap.min_rtt_ms, Some(80.0));
    assert!(snap.limit > c.min_concurrency, "{snap:?}");
}

#[test]
fn disabled_admits_everything_and_bounds_follow_the_policy() {
    let mut c = config();
    c.enabled = false;
    let s = Arc::new(Shedder::new(&c));
    let held: Vec<_> = (0..5000).map(|_| s.try_admit(MS, &c).unwrap()).collect();
    assert_eq!(s.inflight(), 5000);
    drop(held);
    assert_eq!(s.inflight(), 0);
    let c = ShedConfig {
        enabled: true,
        max_concurrency: 10,
        ..config()
    };
    let _ = s.try_admit(MS, &c);
    assert_eq!(s.limit(), 10, "a lower maximum applies at once");
}
