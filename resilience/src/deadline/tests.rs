use super::*;

const MS: u64 = 1_000_000;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_static(v));
    }
    h
}

#[test]
fn grpc_timeout_units() {
    assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
    assert_eq!(parse_grpc_timeout(b"3S"), Some(Duration::from_secs(3)));
    assert_eq!(
        parse_grpc_timeout(b"250m"),
        Some(Duration::from_millis(250))
    );
    assert_eq!(parse_grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
    assert_eq!(parse_grpc_timeout(b"9n"), Some(Duration::from_nanos(9)));
    for bad in [
        &b""[..],
        b"S",
        b"123456789S",
        b"1x",
        b"-1S",
        b"1.5S",
        b" 1S",
    ] {
        assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
    }
}

#[test]
fn encoding_round_trips_within_eight_digits() {
    for d in [
        Duration::from_nanos(5),
        Duration::from_millis(1500),
        Duration::from_secs(86_400),
        Duration::ZERO,
    ] {
        let v = encode_grpc_timeout(d);
        assert!(v.len() <= 9, "{v:?}");
        let back = parse_grpc_timeout(v.as_bytes()).unwrap();
        assert!(
            back <= d && d - back < Duration::from_secs(1),
            "{d:?} -> {v:?}"
        );
    }
}

/// A deadline whose request body was complete on arrival at `at`.
fn arrived(at: u64, timeout: Duration, h: &HeaderMap) -> Deadline {
    let mut d = Deadline::new(at, h);
    d.body_ended(at, timeout);
    d
}

#[test]
fn the_earliest_deadline_wins() {
    let t = Duration::from_secs(15);
    let d = arrived(MS, t, &HeaderMap::new());
    assert_eq!(d.remaining(MS), t);
    assert!(!d.from_caller());
    assert_eq!(d.caller_ns(), None);
    let d = arrived(MS, t, &headers(&[("grpc-timeout", "200m")]));
    assert_eq!(d.remaining(MS), Duration::from_millis(200));
    assert!(d.from_caller());
    let d = arrived(
        MS,
        t,
        &headers(&[("grpc-timeout", "2S"), (DEADLINE_HEADER, "300")]),
    );
    assert_eq!(d.remaining(MS), Duration::from_millis(300));
    let d = arrived(MS, t, &headers(&[(DEADLINE_HEADER, "60000")]));
    assert_eq!(d.remaining(MS), t, "the sidecar's own timeout is shorter");
    assert!(!d.from_caller());
    let d = arrived(MS, t, &headers(&[(DEADLINE_HEADER, "soon")]));
    assert_eq!(d.remaining(MS), t, "an invalid header is ignored");
}

#[test]
fn the_own_timeout_starts_when_the_body_ends() {
    let t = Duration::from_secs(15);
    // A 20 s upload: only the caller's deadline (if any) runs while the body streams.
    let mut d = Deadline::new(0, &HeaderMap::new());
    assert_eq!(d.remaining(20_000 * MS), UNBOUNDED);
    assert!(!d.expired(20_000 * MS));
    d.body_ended(20_000 * MS, t);
    assert_eq!(d.remaining(20_000 * MS), t);
    assert_eq!(d.remaining(30_000 * MS), Duration::from_secs(5));
    // The caller's 25 s deadline counts from arrival, whatever the body does.
    let mut d = Deadline::new(0, &headers(&[("grpc-timeout", "25S")]));
    assert_eq!(d.remaining(20_000 * MS), Duration::from_secs(5));
    d.body_ended(20_000 * MS, t);
    assert_eq!(d.remaining(20_000 * MS), Duration::from_secs(5));
    assert!(d.from_caller());
}

#[test]
fn attempts_and_retries_respect_what_is_left() {
    let d = arrived(0, Duration::from_millis(500), &HeaderMap::new());
    let per_try = Some(Duration::from_millis(200));
    assert_eq!(d.attempt_timeout(0, per_try), Duration::from_millis(200));
    assert_eq!(
        d.attempt_timeout(400 * MS, per_try),
        Duration::from_millis(100)
    );
    assert_eq!(
        d.attempt_timeout(400 * MS, None),
        Duration::from_millis(100)
    );
    assert!(d.can_start(
        300 * MS,
        Duration::from_millis(50),
        Duration::from_millis(100)
    ));
    assert!(!d.can_start(
        400 * MS,
        Duration::from_millis(50),
        Duration::from_millis(100)
    ));
    assert!(d.expired(500 * MS));
    assert_eq!(d.remaining(600 * MS), Duration::ZERO);
}

#[test]
fn propagation_rewrites_only_the_callers_headers() {
    let mut h = headers(&[("grpc-timeout", "1S")]);
    let d = arrived(0, Duration::from_secs(15), &h);
    d.propagate(400 * MS, &mut h);
    assert_eq!(
        parse_grpc_timeout(h["grpc-timeout"].as_bytes()),
        Some(Duration::from_millis(600))
    );
    assert!(!h.contains_key(DEADLINE_HEADER));
    let mut h = headers(&[(DEADLINE_HEADER, "1000")]);
    let d = arrived(0, Duration::from_secs(15), &h);
    d.propagate(250 * MS, &mut h);
    assert_eq!(h[DEADLINE_HEADER], "750");
    let mut h = HeaderMap::new();
    arrived(0, Duration::from_secs(15), &h).propagate(MS, &mut h);
    assert!(h.is_empty(), "the sidecar's own timeout is not advertised");
}

/// A caller whose deadline is longer than the sidecar's timeout keeps its own: forwarding the
/// sidecar's 15 s would make a gRPC server cancel a 20 s call the caller allowed 60 s for.
#[test]
fn a_longer_caller_deadline_is_forwarded_as_the_callers() {
    let mut h = headers(&[("grpc-timeout", "60S")]);
    let d = arrived(0, Duration::from_secs(15), &h);
    assert_eq!(d.remaining(0), Duration::from_secs(15));
    d.propagate(MS, &mut h);
    let forwarded = parse_grpc_timeout(h["grpc-timeout"].as_bytes()).unwrap();
    assert!(
        forwarded > Duration::from_secs(59) && forwarded < Duration::from_secs(60),
        "{forwarded:?}"
    );
}

/// The one-pass search of a small request and the lookups of a large one find the same
/// fields: the first line of each name counts, whatever else the request carries.
#[test]
fn caller_timeouts_are_found_in_small_and_large_requests_alike() {
    let lines = |pairs: &[(&'static str, &'static str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    };
    let small = lines(&[
        ("host", "a"),
        (GRPC_TIMEOUT, "3S"),
        ("x-other", "1"),
        (DEADLINE_HEADER, "2500"),
        (GRPC_TIMEOUT, "1S"),
    ]);
    assert_eq!(caller_timeout(&small), Some(Duration::from_millis(2500)));
    let mut large = small.clone();
    for i in 0..20 {
        large.append(
            HeaderName::from_bytes(format!("x-f{i}").as_bytes()).unwrap(),
            HeaderValue::from_static("v"),
        );
    }
    assert!(large.len() > 16);
    assert_eq!(caller_timeout(&large), Some(Duration::from_millis(2500)));
    let grpc_only = lines(&[("host", "a"), (GRPC_TIMEOUT, "2S"), (GRPC_TIMEOUT, "9S")]);
    assert_eq!(caller_timeout(&grpc_only), Some(Duration::from_secs(2)));
    assert_eq!(caller_timeout(&headers(&[("host", "a")])), None);
}
