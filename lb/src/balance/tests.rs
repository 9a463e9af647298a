use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::endpoint::EndpointSet;
use crate::endpoint::metrics::LbMetrics;
use crate::endpoint::{EndpointSpec, Failure};
use datastream_resilience::clock;

fn set(n: u16, local: Option<u16>) -> EndpointSet {
    let specs: Vec<EndpointSpec> = (1..=n)
        .map(|p| {
            let addr: SocketAddr = ([127, 0, 0, 1], p).into();
            EndpointSpec {
                addr,
                name: format!("r{p}"),
                local: local == Some(p),
                serving: true,
            }
        })
        .collect();
    EndpointSet::build(&EndpointSet::default(), &specs, 1, &LbMetrics::default())
}

fn counts(set: &EndpointSet, b: &Balancer, n: usize) -> Vec<usize> {
    let mut c = vec![0; set.len()];
    for i in 0..n {
        let e = b.pick(set, i as u64, &[], clock::now_ns()).expect("a pick");
        c[set
            .endpoints()
            .iter()
            .position(|x| Arc::ptr_eq(x, e))
            .unwrap()] += 1;
    }
    c
}

#[test]
fn policy_names_round_trip() {
    for p in Policy::ALL {
        assert_eq!(Policy::parse(p.name()), Some(p));
    }
    assert_eq!(Policy::parse("random"), None);
}

#[test]
fn round_robin_is_exact_and_skips_down_endpoints() {
    let s = set(3, None);
    let b = Balancer::new(Policy::RoundRobin, false);
    assert_eq!(counts(&s, &b, 300), vec![100, 100, 100]);
    s.endpoints()[1].health.failure(Failure::Connect, 0);
    let c = counts(&s, &b, 300);
    assert_eq!(c[1], 0);
    assert_eq!(c[0] + c[2], 300);
}

#[test]
fn p2c_avoids_the_slow_endpoint() {
    let s = set(3, None);
    for (e, ms) in s.endpoints().iter().zip([2, 2, 40]) {
        e.load.observe(Duration::from_millis(ms));
    }
    let c = counts(&s, &Balancer::new(Policy::P2cEwma, false), 3000);
    assert_eq!(c[2], 0, "the slow endpoint never wins a pair: {c:?}");
}

#[test]
fn p2c_skips_down_and_excluded_endpoints_in_large_sets() {
    // 70 replicas: the usable ones are judged once per pick, as bits for the first 64 and
    // one by one beyond; both halves must agree with each replica's own state.
    let s = set(70, None);
    let eps = s.endpoints();
    let now = clock::now_ns();
    let exclude: Vec<SocketAddr> = eps[..60].iter().map(|e| e.addr()).collect();
    for e in &eps[60..67] {
        e.health.failure(Failure::Connect, now);
    }
    let usable: BTreeSet<SocketAddr> = eps[67..].iter().map(|e| e.addr()).collect();
    for policy in [Policy::P2cEwma, Policy::LeastRequest] {
        let b = Balancer::new(policy, false);
        let seen: BTreeSet<SocketAddr> = (0..600)
            .map(|i| {
                b.pick(&s, i, &exclude, clock::now_ns())
                    .expect("a pick")
                    .addr()
            })
            .collect();
        assert_eq!(seen, usable, "{policy:?}");
    }
    // One usable replica, among the first 64: every pick takes it.
    let only = eps[5].addr();
    let exclude: Vec<SocketAddr> = eps
        .iter()
        .map(|e| e.addr())
        .filter(|&a| a != only)
        .collect();
    let b = Balancer::new(Policy::P2cEwma, false);
    for i in 0..50 {
        assert_eq!(
            b.pick(&s, i, &exclude, clock::now_ns()).unwrap().addr(),
            only
        );
    }
}

#[test]
fn least_request_follows_inflight() {
    let s = set(2, None);
    let _held = [
        s.endpoints()[0].start(datastream_resilience::clock::now_ns()),
        s.endpoints()[0].start(datastream_resilience::clock::now_ns()),
    ];
    let c = counts(&s, &Balancer::new(Policy::LeastRequest, false), 100);
    assert_eq!(c, vec![0, 100]);
}

#[test]
fn local_first_keeps_local_until_it_is_much_slower() {
    let s = set(3, Some(2));
    let b = Balancer::new(Policy::P2cEwma, true);
    assert_eq!(counts(&s, &b, 50)[1], 50);
    for (e, ms) in s.endpoints().iter().zip([5, 50, 5]) {
        e.load.observe(Duration::from_millis(ms));
    }
    assert_eq!(counts(&s, &b, 50)[1], 0);
}

#[test]
fn hashing_respects_bounded_load() {
    let s = set(3, None);
    let owner = pick_hashed(
        &s,
        HashAlgorithm::RingHash,
        7,
        HASH_BALANCE_FACTOR,
        &[],
        clock::now_ns(),
    )
    .unwrap();
    let _held: Vec<_> = (0..10)
        .map(|_| owner.start(datastream_resilience::clock::now_ns()))
        .collect();
    let other = pick_hashed(
        &s,
        HashAlgorithm::RingHash,
        7,
        HASH_BALANCE_FACTOR,
        &[],
        clock::now_ns(),
    )
    .unwrap();
    assert!(
        !Arc::ptr_eq(owner, other),
        "an overloaded owner passes the key on"
    );
}

#[test]
fn primary_fails_over_and_takes_back_after_hold_down() {
    let s = set(3, None);
    let eps = s.endpoints();
    let hold = Duration::from_millis(50);
    assert!(Arc::ptr_eq(
        pick_primary(&s, hold, &[], clock::now_ns()).unwrap(),
        &eps[0]
    ));
    eps[0].health.failure(Failure::Transport, 0);
    // Not down (one transport failure), but within hold-down: the next one serves.
    assert!(Arc::ptr_eq(
        pick_primary(&s, hold, &[], clock::now_ns()).unwrap(),
        &eps[1]
    ));
    std::thread::sleep(hold);
    assert!(Arc::ptr_eq(
        pick_primary(&s, hold, &[], clock::now_ns()).unwrap(),
        &eps[0]
    ));
}
