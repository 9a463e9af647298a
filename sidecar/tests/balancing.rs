//! Balancing through a running sidecar, against real backends on loopback.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::time::Instant;

#[tokio::test]
async fn round_robin_spreads_evenly_within_one_request() {
    let bs = backends(3).await;
    let specs: Vec<_> = bs.iter().map(|b| b.spec()).collect();
    let sc = sidecar("loadBalancing: { policy: round-robin }", &specs).await;
    let client = h1_client();
    for _ in 0..301 {
        assert_eq!(get(&client, sc.traffic_addr(), "/", &[]).await.status, 200);
    }
    let counts: Vec<u64> = bs.iter().map(|b| b.count()).collect();
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(max - min <= 1, "uneven round robin: {counts:?}");
}

#[tokio::test]
async fn p2c_ewma_sends_little_to_a_replica_twenty_times_slower() {
    let bs = backends(3).await;
    bs[0].set_latency(2);
    bs[1].set_latency(2);
    bs[2].set_latency(40);
    let specs: Vec<_> = bs.iter().map(|b| b.spec()).collect();
    let sc = sidecar("loadBalancing: { policy: p2c-ewma }", &specs).await;
    let addr = sc.traffic_addr();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let client = h1_client();
            for _ in 0..75 {
                assert_eq!(get(&client, addr, "/", &[]).await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total: u64 = bs.iter().map(|b| b.count()).sum();
    let slow = bs[2].count();
    assert_eq!(total, 600);
    assert!(
        slow * 100 <= total * 15,
        "slow replica got {slow} of {total} requests"
    );
}

/// Drives `workers` concurrent keep-alive clients for `per_worker` requests each.
async fn drive(addr: std::net::SocketAddr, workers: usize, per_worker: usize) {
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            tokio::spawn(async move {
                let client = h1_client();
                for _ in 0..per_worker {
                    assert_eq!(get(&client, addr, "/", &[]).await.status, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// The benchmark's scenario 2 in small: 32 concurrent clients, two replicas answering in 2 ms
/// and one in 40 ms. The fast replicas carry ~15 requests each, so an in-flight penalty of
/// `(inflight + 1)` on an inflated fast estimate made the idle slow replica look as cheap as a
/// busy fast one, and it kept ~3 of the 32 requests (about 1% of them, enough to set the p99).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_keeps_a_twenty_times_slower_replica_under_one_percent_at_high_concurrency() {
    let bs = backends(3).await;
    bs[0].set_latency(2);
    bs[1].set_latency(2);
    bs[2].set_latency(40);
    let specs: Vec<_> = bs.iter().map(|b| b.spec()).collect();
    let sc = sidecar("loadBalancing: { policy: p2c-ewma }", &specs).await;
    let addr = sc.traffic_addr();
    // Warm-up: every replica gets measured.
    drive(addr, 32, 10).await;
    let before: Vec<u64> = bs.iter().map(|b| b.count()).collect();
    drive(addr, 32, 250).await;
    let counts: Vec<u64> = bs.iter().zip(&before).map(|(b, n)| b.count() - n).collect();
    let total: u64 = counts.iter().sum();
    assert_eq!(total, 32 * 250);
    // Under 1 %, so a 40 ms request among ~2 ms ones stays out of the p99. About 0.1-0.4 % on
    // an idle machine; 0.4-0.8 % with both cores busy (scheduling stalls inflate the fast
    // replicas' estimates now and then), which is why the bound is not tighter.
    assert!(
        counts[2] * 100 < total,
        "the 20x slower replica got {} of {total} requests: {counts:?}",
        counts[2]
    );
}

/// Not starved: a replica twice as slow as its peers still gets a share of concurrent load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_gives_a_moderately_slower_replica_a_share() {
    let bs = backends(3).await;
    bs[0].set_latency(4);
    bs[1].set_latency(4);
    bs[2].set_latency(8);
    let specs: Vec<_> = bs.iter().map(|b| b.spec()).collect();
    let sc = sidecar("loadBalancing: { policy: p2c-ewma }", &specs).await;
    let addr = sc.traffic_addr();
    drive(addr, 16, 10).await;
    // Three windows, judged by the median: one scheduling stall on a busy machine can inflate the
    // slow replica's peak estimate and keep it out of a whole 0.6 s window (until the 1 s forced
    // probe), which is the estimator working as designed; starving it is a share that stays near
    // zero window after window. About 12 % per window on an idle machine.
    let mut shares = Vec::new();
    for _ in 0..3 {
        let before = bs[2].count();
        drive(addr, 16, 100).await;
        shares.push(bs[2].count() - before);
    }
    eprintln!("moderately slower replica got {shares:?} of 1600 per window");
    shares.sort_unstable();
    assert!(
        shares[1] * 100 >= 1600 * 2,
        "the 2x slower replica got {shares:?} of 1600 per window"
    );
}

/// A replica that recovers gets traffic back within seconds: p2c probes an avoided replica
/// once a second, and a probe's sample moves the estimate at least half way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_sends_traffic_back_to_a_replica_that_recovered() {
    let bs = backends(3).await;
    bs[0].set_latency(2);
    bs[1].set_latency(2);
    bs[2].set_latency(40);
    let specs: Vec<_> = bs.iter().map(|b| b.spec()).collect();
    let sc = sidecar("loadBalancing: { policy: p2c-ewma }", &specs).await;
    let addr = sc.traffic_addr();
    drive(addr, 16, 100).await;
    bs[2].set_latency(2);
    let recovered = Instant::now();
    let deadline = recovered + Duration::from_secs(8);
    loop {
        let before: Vec<u64> = bs.iter().map(|b| b.count()).collect();
        drive(addr, 16, 20).await;
        let got = bs[2].count() - before[2];
        // A fair share of the round's 320 requests is ~107; a fifth of that means it is back.
        if got >= 20 {
            eprintln!("back after {:?}: {got} of 320", recovered.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the recovered replica stayed avoided: {got} of 320"
        );
    }
}

#[tokio::test]
async fn least_request_follows_inflight_counts() {
    let bs = backends(2).await;
    let specs: Vec<_> = bs.iter().map(|b| b.spec()).collect();
    let sc = sidecar("loadBalancing: { policy: least-request }", &specs).await;
    let addr = sc.traffic_addr();
    let long = tokio::spawn(async move { get(&h1_client(), addr, "/slow/1500", &[]).await });
    // Wait until the long request sits on one replica.
    let deadline = Instant::now() + Duration::from_secs(2);
    let busy = loop {
        if let Some(b) = bs
            .iter()
            .find(|b| b.inflight.load(std::sync::atomic::Ordering::Relaxed) == 1)
        {
            break Arc::clone(b);
        }
        assert!(Instant::now() < deadline, "long request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let client = h1_client();
    for _ in 0..20 {
        let a = get(&client, addr, "/", &[]).await;
        assert_ne!(a.backend(), busy.name, "a request joined the busy replica");
    }
    assert_eq!(long.await.unwrap().backend(), busy.name);
}

const AFFINITY: &str = r#"
routes:
  - name: by-user
    match: { path: { prefix: /users } }
    mode: affinity
    affinity: { key: { header: x-user } }
  - name: by-segment
    match: { path: { prefix: /kv } }
    mode: affinity
    affinity: { key: { pathSegment: 1 }, hashing: maglev }
"#;

async fn owners(
    client: &H1Client,
    addr: std::net::SocketAddr,
    keys: &[String],
    maglev: bool,
) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for k in keys {
        let a = if maglev {
            get(client, addr, &format!("/kv/{k}"), &[]).await
        } else {
            get(client, addr, "/users", &[("x-user", k)]).await
        };
        assert_eq!(a.status, 200);
        out.insert(k.clone(), a.backend().to_owned());
    }
    out
}

#[tokio::test]
async fn affinity_is_stable_and_only_a_departed_replicas_keys_move() {
    let bs = backends(4).await;
    let specs: Vec<_> = bs.iter().map(|b| b.spec()).collect();
    let sc = sidecar(AFFINITY, &specs).await;
    let addr = sc.traffic_addr();
    let client = h1_client();
    let keys: Vec<String> = (0..120).map(|i| format!("user-{i}")).collect();
    for maglev in [false, true] {
        sc.shared().set_endpoints(&specs);
        let first = owners(&client, addr, &keys, maglev).await;
        let again = owners(&client, addr, &keys, maglev).await;
        assert_eq!(first, again, "same key, same replica (maglev: {maglev})");
        let spread: std::collections::HashSet<_> = first.values().collect();
        assert_eq!(spread.len(), 4, "keys spread over every replica");
        // r1 leaves.
        let remaining: Vec<_> = specs.iter().filter(|s| s.name != "r1").cloned().collect();
        sc.shared().set_endpoints(&remaining);
        let after = owners(&client, addr, &keys, maglev).await;
        let moved = keys
            .iter()
            .filter(|k| first[*k] != "r1" && first[*k] != after[*k])
            .count();
        let allowed = if maglev { keys.len() / 20 } else { 0 };
        assert!(
            moved <= allowed,
            "{moved} keys of remaining replicas moved (maglev: {maglev})"
        );
        assert!(after.values().all(|o| o != "r1"));
    }
}

#[tokio::test]
async fn primary_fails_over_and_takes_back_after_hold_down() {
    let bs = backends(3).await;
    let specs: Vec<_> = bs.iter().map(|b| b.spec()).collect();
    let sc = sidecar(
        r#"
routes:
  - name: leader
    mode: primary
    primary: { holdDown: 1500ms }
"#,
        &specs,
    )
    .await;
    let addr = sc.traffic_addr();
    let client = h1_client();
    for _ in 0..10 {
        assert_eq!(get(&client, addr, "/", &[]).await.backend(), "r0");
    }
    bs[0].kill();
    let failed_at = Instant::now();
    // Takeover: the connect failure is retried on the next replica, so no request fails.
    for _ in 0..10 {
        let a = get(&client, addr, "/", &[]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.backend(), "r1");
    }
    let back = Backend::start_on("r0", bs[0].addr).await;
    // Within the hold-down the recovered primary gets nothing back.
    while failed_at.elapsed() < Duration::from_millis(1200) {
        assert_eq!(get(&client, addr, "/", &[]).await.backend(), "r1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // After it, the primary takes back.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if get(&client, addr, "/", &[]).await.backend() == "r0" {
            break;
        }
        assert!(Instant::now() < deadline, "primary never took back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        assert_eq!(get(&client, addr, "/", &[]).await.backend(), "r0");
    }
    assert!(back.count() >= 6);
}

#[tokio::test]
async fn a_joining_replica_starts_from_the_median_in_slow_start_until_its_latency_converges() {
    let bs = backends(3).await;
    for b in &bs {
        b.set_latency(3);
    }
    let specs: Vec<_> = bs.iter().map(|b| b.spec()).collect();
    let sc = sidecar("{}", &specs[..2]).await;
    let addr = sc.traffic_addr();
    let load = |n: usize| async move {
        let client = h1_client();
        for _ in 0..n {
            assert_eq!(get(&client, addr, "/", &[]).await.status, 200);
        }
    };
    let run = |per_worker: usize| async move {
        let tasks: Vec<_> = (0..6).map(|_| tokio::spawn(load(per_worker))).collect();
        for t in tasks {
            t.await.unwrap();
        }
    };
    run(20).await;
    // Join while idle, so the others' estimates stand still while we compare.
    sc.shared().set_endpoints(&specs);
    let view = |v: &serde_json::Value, name: &str| {
        v["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()
            .clone()
    };
    let eps = datastream_sidecar::admin::endpoints_json(sc.shared());
    let ms = |name: &str| view(&eps, name)["ewmaMs"].as_f64().unwrap();
    let median = (ms("r0") + ms("r1")) / 2.0;
    assert_eq!(view(&eps, "r2")["slowStart"], true);
    assert_eq!(view(&eps, "r2")["samples"], 0);
    assert!(
        (ms("r2") - median).abs() <= median * 0.01,
        "seeded from the median {median} ms, got {} ms",
        ms("r2")
    );
    // It takes load, and leaves slow start once its latency settled.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        run(5).await;
        let eps = datastream_sidecar::admin::endpoints_json(sc.shared());
        if view(&eps, "r2")["slowStart"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "slow start never ended: {eps}");
    }
    assert!(bs[2].count() >= 5);
}
