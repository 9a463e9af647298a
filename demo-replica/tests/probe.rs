//! The `probe` client against real demo replicas on loopback (standing in for sidecars).

use std::sync::Arc;
use std::time::{Duration, Instant};

use datastream_demo_replica::fault::Fault;
use datastream_demo_replica::probe::probe_sidecars;
use datastream_demo_replica::server;
use datastream_demo_replica::service::App;
use datastream_demo_replica::store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

async fn replica(id: &str, fault: Fault) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let drain = CancellationToken::new();
    let app = Arc::new(App::new(
        id.into(),
        Store::in_memory().unwrap(),
        fault,
        1 << 20,
        drain.clone(),
    ));
    tokio::spawn(server::serve(
        listener,
        app,
        std::future::pending(),
        drain,
        Duration::from_secs(1),
    ));
    addr
}

#[tokio::test]
async fn every_sidecar_must_answer_with_a_replica_identity() {
    let a = replica("replica-a", Fault::default()).await;
    let b = replica("replica-b", Fault::default()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let answers = probe_sidecars(&[a, b], "/whoami", deadline).await.unwrap();
    let replicas: Vec<&str> = answers.iter().map(|x| x.replica.as_str()).collect();
    assert_eq!(replicas, ["replica-a", "replica-b"]);
}

#[tokio::test]
async fn a_failing_sidecar_fails_the_probe_at_the_deadline() {
    let ok = replica("replica-a", Fault::default()).await;
    let failing = replica(
        "replica-b",
        Fault {
            status: Some(503),
            ..Fault::default()
        },
    )
    .await;
    let started = Instant::now();
    let error = probe_sidecars(&[ok, failing], "/whoami", started + Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("503"), "{error:#}");
    assert!(started.elapsed() >= Duration::from_secs(2));
}
