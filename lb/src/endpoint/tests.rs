use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::metrics::LbMetrics;
use super::*;
use datastream_resilience::clock;

#[test]
fn statefulset_ordinals_sort_numerically() {
    let mut names = vec!["db-10", "db-2", "db-0", "db-1", "cache-3", "db-x", "db-"];
    names.sort_by(|a, b| by_ordinal(a, b));
    assert_eq!(
        names,
        ["cache-3", "db-0", "db-1", "db-2", "db-10", "db-", "db-x"]
    );
    // A mix that a per-pair rule would order in a cycle.
    let mut mixed = vec!["a-1x", "a-10", "a-9"];
    mixed.sort_by(|a, b| by_ordinal(a, b));
    assert_eq!(mixed, ["a-9", "a-10", "a-1x"]);
}

fn spec(port: u16) -> EndpointSpec {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    EndpointSpec {
        addr,
        name: addr.to_string(),
        local: false,
        serving: true,
    }
}

#[test]
fn statistics_survive_set_changes_and_newcomers_start_from_the_median() {
    let metrics = LbMetrics::default();
    let first = EndpointSet::build(
        &EndpointSet::default(),
        &[spec(1), spec(2), spec(3)],
        1,
        &metrics,
    );
    assert!(first.endpoints().iter().all(|e| !e.load.warming()));
    for (e, ms) in first.endpoints().iter().zip([10, 20, 300]) {
        e.load.observe(Duration::from_millis(ms));
    }
    let second = EndpointSet::build(&first, &[spec(2), spec(3), spec(4)], 2, &metrics);
    assert!(Arc::ptr_eq(&first.endpoints()[1], &second.endpoints()[0]));
    let newcomer = &second.endpoints()[2];
    assert_eq!(newcomer.addr().port(), 4);
    let ewma = newcomer.load.snapshot(clock::now_ns()).ewma_ms;
    assert!(
        (ewma - 20.0).abs() < 1.0,
        "seeded from the median, got {ewma}"
    );
    assert!(newcomer.load.warming());
    // Each keeps the hash of its name, which the retry budget identifies it by.
    for e in second.endpoints() {
        assert_eq!(
            e.name_hash(),
            crate::balance::hash::hash_bytes(e.name().as_bytes(), 0)
        );
    }
    assert_ne!(second.endpoints()[0].name_hash(), newcomer.name_hash());
}

#[test]
fn a_replica_returning_from_down_restarts_slow_start() {
    let metrics = LbMetrics::default();
    let set = EndpointSet::build(&EndpointSet::default(), &[spec(1)], 1, &metrics);
    let e = &set.endpoints()[0];
    assert!(!e.load.warming());
    e.health.failure(Failure::Connect, 0);
    assert!(matches!(
        e.eligibility(clock::now_ns()),
        Eligibility::Down { .. }
    ));
    e.start(datastream_resilience::clock::now_ns())
        .responded_at(datastream_resilience::clock::now_ns() + 5_000_000);
    assert!(e.load.warming(), "probation passed: ramp up again");
    assert_eq!(e.load.slow_start_cap(), Some(1));
}

#[test]
fn draining_endpoint_is_not_eligible() {
    let metrics = LbMetrics::default();
    let mut s = spec(1);
    s.serving = false;
    let set = EndpointSet::build(&EndpointSet::default(), &[s], 1, &metrics);
    assert_eq!(
        set.endpoints()[0].eligibility(clock::now_ns()),
        Eligibility::Draining
    );
}
