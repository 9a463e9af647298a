//! Live changes and shutdown under traffic: endpoint-set and policy swaps, config-file reload,
//! and drain, each with no failed request.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use datastream_sidecar::config::reload::watch_file;
use datastream_sidecar::config::{FileConfig, Overrides, Resolved};
use datastream_sidecar::metrics::Metrics;
use support::*;
use tokio::time::Instant;

/// Steady traffic from `workers` clients until `stop`; returns (ok, failed) counters.
fn traffic(
    addr: std::net::SocketAddr,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = h1_client();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let user = format!("u{w}-{}", i % 7);
                match try_get(&client, addr, "/", &[("x-user", &user)]).await {
                    Ok(a) if a.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed request: {:?}", other.map(|a| (a.status, a.body)));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    (ok, failed, tasks)
}

#[tokio::test]
async fn endpoint_set_changes_under_traffic_fail_no_request() {
    let bs = backends(4).await;
    for b in &bs {
        b.set_latency(2);
    }
    let specs: Vec<_> = bs.iter().map(|b| b.spec()).collect();
    let sc = sidecar("{}", &specs[..3]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, tasks) = traffic(sc.traffic_addr(), 4, stop.clone());
    let shared = sc.shared().clone();
    let steps: [&[usize]; 5] = [&[0, 1, 2, 3], &[1, 2, 3], &[1, 3], &[0, 1, 2, 3], &[2]];
    for step in steps {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let set: Vec<_> = step.iter().map(|&i| specs[i].clone()).collect();
        shared.set_endpoints(&set);
    }
    // r0 left the set in the last step: it can now die without anyone noticing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    bs[0].kill();
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100);
    assert!(bs[3].count() > 0, "the added replica took traffic");
}

#[tokio::test]
async fn policy_swaps_under_traffic_fail_no_request() {
    let bs = backends(3).await;
    for b in &bs {
        b.set_latency(1);
    }
    let specs: Vec<_> = bs.iter().map(|b| b.spec()).collect();
    let sc = sidecar("{}", &specs).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, tasks) = traffic(sc.traffic_addr(), 4, stop.clone());
    let metrics = Metrics::new();
    let policies = [
        "loadBalancing: { policy: round-robin }",
        "routes: [{ name: users, mode: affinity, affinity: { key: { header: x-user } } }]",
        "loadBalancing: { policy: least-request, localFirst: true }",
        "routes: [{ name: all, mode: primary, primary: { holdDown: 1s } }]",
        "loadBalancing: { policy: maglev }",
    ];
    for (i, p) in policies.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(120)).await;
        let mut policy = policy(p, &metrics);
        policy.version = i as u64 + 2;
        sc.shared().set_policy(policy);
    }
    tokio::time::sleep(Duration::from_millis(120)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100);
    assert_eq!(sc.shared().config_status().version, 6);
}

#[tokio::test]
async fn config_file_changes_apply_live_and_bad_ones_are_rejected() {
    let bs = backends(2).await;
    let dir = std::env::temp_dir().join(format!("ds-sidecar-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sidecar.yaml");
    let write = |policy: &str, endpoints: &[&Arc<Backend>]| {
        let eps: Vec<String> = endpoints
            .iter()
            .map(|b| format!("  - {{ address: \"{}\", name: {} }}", b.addr, b.name))
            .collect();
        let text = format!(
            "endpoints:\n{}\ntraffic:\n  loadBalancing: {{ policy: {policy} }}\n",
            eps.join("\n")
        );
        std::fs::write(&path, text).unwrap();
    };
    write("p2c-ewma", &[&bs[0]]);
    let flags = Overrides {
        listen: Some("127.0.0.1:0".into()),
        admin: Some("127.0.0.1:0".into()),
        ..Overrides::default()
    };
    let resolved = Resolved::resolve(&FileConfig::read(&path).unwrap(), &flags).unwrap();
    let sc = sidecar("{}", &resolved.endpoints).await;
    let (close, closed) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(watch_file(
        path.clone(),
        flags,
        resolved,
        sc.shared().clone(),
        Duration::from_millis(50),
        closed,
    ));
    let client = h1_client();
    let admin = sc.admin_addr();
    let config = |client: H1Client| async move {
        let body = get(&client, admin, "/config", &[]).await.body;
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    // A valid change: new policy and a second endpoint.
    write("round-robin", &[&bs[0], &bs[1]]);
    let deadline = Instant::now() + Duration::from_secs(3);
    while config(client.clone()).await["version"] != 2 {
        assert!(Instant::now() < deadline, "change never applied");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let c = config(client.clone()).await;
    assert_eq!(c["traffic"]["loadBalancing"]["policy"], "round-robin");
    for _ in 0..10 {
        get(&client, sc.traffic_addr(), "/", &[]).await;
    }
    assert_eq!(bs[0].count(), 5);
    assert_eq!(bs[1].count(), 5);
    // An invalid change: rejected with its reason, the last good config stays.
    std::fs::write(&path, "traffic:\n  loadBalancing: { policy: fastest }\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let c = config(client.clone()).await;
        if c["lastError"].is_string() {
            assert_eq!(c["version"], 2);
            assert!(c["lastError"].as_str().unwrap().contains("fastest"), "{c}");
            break;
        }
        assert!(Instant::now() < deadline, "rejection never reported");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(get(&client, sc.traffic_addr(), "/", &[]).await.status, 200);
    let _ = close.send(true);
    watcher.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_fails_none() {
    let bs = backends(2).await;
    for b in &bs {
        b.set_latency(2);
    }
    let specs: Vec<_> = bs.iter().map(|b| b.spec()).collect();
    let sc = sidecar_with("{}", &specs, settings(Duration::from_millis(600))).await;
    let addr = sc.traffic_addr();
    let admin = sc.admin_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, tasks) = traffic(addr, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Requests that will still be running when the listeners close.
    let slow: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { try_get(&h1_client(), addr, "/slow/900", &[]).await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let shared = sc.shared().clone();
    let drain = tokio::spawn(sc.drain());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!shared.is_ready());
    assert_eq!(get(&h1_client(), admin, "/ready", &[]).await.status, 503);
    // Clients stop sending new requests once readiness has propagated, within the drain delay.
    tokio::time::sleep(Duration::from_millis(250)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    for s in slow {
        let a = s.await.unwrap().expect("in-flight request finished");
        assert_eq!(a.status, 200);
    }
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .expect("drain finishes")
        .unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 20);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}
