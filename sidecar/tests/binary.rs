//! The `datastream-sidecar` binary itself: the local-mode command line, the example config
//! file, and SIGTERM drain.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use support::*;
use tokio::time::Instant;

async fn wait_ready(client: &H1Client, admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(a) = try_get(client, admin, "/ready", &[]).await
            && a.status == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "sidecar never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn local_mode_command_line_proxies_and_drains_on_sigterm() {
    let bs = backends(2).await;
    let (listen, admin) = (free_addr(), free_addr());
    let endpoints = format!("{},{}", bs[0].addr, bs[1].addr);
    let mut proc = spawn_sidecar(&[
        "--listen",
        &listen.to_string(),
        "--admin",
        &admin.to_string(),
        "--endpoints",
        &endpoints,
        "--policy",
        "round-robin",
        "--drain-delay",
        "700ms",
        "--drain-timeout",
        "2s",
    ]);
    let client = h1_client();
    wait_ready(&client, admin).await;
    for _ in 0..6 {
        assert_eq!(get(&client, listen, "/", &[]).await.status, 200);
    }
    assert_eq!((bs[0].count(), bs[1].count()), (3, 3));
    let cfg = get(&client, admin, "/config", &[]).await.body;
    assert!(cfg.contains("round-robin"), "{cfg}");
    let slow = tokio::spawn(async move { try_get(&h1_client(), listen, "/slow/1000", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = Command::new("kill")
        .args(["-TERM", &proc.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Draining: not ready, but still serving.
    assert_eq!(get(&h1_client(), admin, "/ready", &[]).await.status, 503);
    assert_eq!(get(&h1_client(), listen, "/", &[]).await.status, 200);
    let a = slow.await.unwrap().expect("in-flight request finished");
    assert_eq!(a.status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let code = loop {
        if let Some(code) = proc.0.try_wait().unwrap() {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "sidecar did not exit after drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(code.success(), "{code:?}");
}

#[tokio::test]
async fn invalid_flags_are_all_reported_with_exit_code_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_datastream-sidecar"))
        .args([
            "--endpoints",
            "nowhere,127.0.0.1:1",
            "--policy",
            "fastest",
            "--drain-delay",
            "soon",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["nowhere", "fastest", "drain-delay"] {
        assert!(err.contains(needle), "{err}");
    }
}

/// Identity settings in Kubernetes mode are checked before anything starts: a trust domain needs
/// the anchors and the ServiceAccount, the anchors must be PEM certificates, and the lifetime must
/// be one the Kubernetes API and the signer accept; every problem is reported at once.
#[test]
fn bad_identity_settings_are_all_reported_with_exit_code_2() {
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_datastream-sidecar"));
        cmd.arg("kubernetes")
            .env_clear()
            .env("DATASTREAM_NAME", "orders")
            .env("POD_NAMESPACE", "shop")
            .env("POD_IP", "10.0.0.1")
            .env("WORKLOAD_PORT", "8080");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[("DATASTREAM_TRUST_DOMAIN", "cluster.local")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("DATASTREAM_TRUST_ANCHORS"), "{err}");
    assert!(err.contains("POD_SERVICE_ACCOUNT"), "{err}");

    let (code, err) = run(&[
        ("DATASTREAM_TRUST_DOMAIN", "cluster.local"),
        ("DATASTREAM_TRUST_ANCHORS", "not a certificate"),
        ("POD_SERVICE_ACCOUNT", "orders-sidecar"),
        ("DATASTREAM_CERTIFICATE_LIFETIME_SECONDS", "30"),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("trust anchor"), "{err}");
    assert!(err.contains("outside 600..=86400"), "{err}");
    // The anchors' PEM is never echoed back into the log.
    assert!(!err.contains("not a certificate"), "{err}");
}

#[tokio::test]
async fn example_config_file_runs() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/sidecar.yaml");
    let bs = backends(1).await;
    let (listen, admin, peer) = (free_addr(), free_addr(), free_addr());
    // The example's listeners and endpoints are overridden so the test needs no fixed ports.
    let _proc = spawn_sidecar(&[
        "--config",
        path,
        "--listen",
        &listen.to_string(),
        "--admin",
        &admin.to_string(),
        "--peer-listen",
        &peer.to_string(),
        "--endpoints",
        &bs[0].addr.to_string(),
        "--local-endpoint",
        &bs[0].addr.to_string(),
    ]);
    let client = h1_client();
    wait_ready(&client, admin).await;
    assert_eq!(get(&client, listen, "/kv/user1", &[]).await.backend(), "r0");
    assert_eq!(get(&client, peer, "/", &[]).await.backend(), "r0");
    let cfg: serde_json::Value =
        serde_json::from_str(&get(&client, admin, "/config", &[]).await.body).unwrap();
    assert_eq!(
        cfg["routes"],
        serde_json::json!(["kv", "leader", "default"])
    );
}
