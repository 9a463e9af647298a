use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn config(path: Option<&str>) -> HealthCheckConfig {
    HealthCheckConfig {
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(300),
        unhealthy_threshold: 3,
        healthy_threshold: 2,
        path: path.map(str::to_owned),
    }
}

#[test]
fn thresholds_with_an_immediate_first_verdict() {
    let c = config(None);
    let s = HealthStatus::new();
    assert_eq!(s.verdict(), Verdict::Unknown);
    assert_eq!(s.record(Ok(()), &c), Some(Verdict::Healthy));
    assert_eq!(s.record(Err("x".into()), &c), None);
    assert_eq!(s.record(Err("x".into()), &c), None);
    assert_eq!(s.record(Err("x".into()), &c), Some(Verdict::Unhealthy));
    assert_eq!(s.detail().last_error.as_deref(), Some("x"));
    assert_eq!(
        s.record(Ok(()), &c),
        None,
        "one pass is not enough to return"
    );
    assert_eq!(s.record(Ok(()), &c), Some(Verdict::Healthy));
    let fresh = HealthStatus::new();
    assert_eq!(
        fresh.record(Err("down".into()), &c),
        Some(Verdict::Unhealthy)
    );
}

/// A tiny HTTP/1 server answering every request with `status` and closing.
async fn server(status: u16) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http_checks_judge_by_status() {
    let ok = server(200).await;
    let bad = server(503).await;
    assert_eq!(check(ok, &config(Some("/ready"))).await, Ok(()));
    let err = check(bad, &config(Some("/ready"))).await.unwrap_err();
    assert!(err.contains("503"), "{err}");
    assert_eq!(check(bad, &config(None)).await, Ok(()), "TCP-only check");
}

#[tokio::test]
async fn refused_and_silent_workloads_fail() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = l.local_addr().unwrap();
    // Bound but never listening (and without SO_REUSEADDR, so no parallel test can take
    // the port): every connect is refused for as long as `reserved` lives.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = reserved.local_addr().unwrap();
    let err = check(closed, &config(None)).await.unwrap_err();
    assert!(err.starts_with("connect"), "{err}");
    // Accepts (in the backlog) but never answers.
    let err = check(silent, &config(Some("/ready"))).await.unwrap_err();
    assert!(err.contains("no answer"), "{err}");
    drop(l);
}

#[tokio::test]
async fn the_loop_follows_the_workload_and_stops() {
    let ok = server(200).await;
    let status = Arc::new(HealthStatus::new());
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(run(
        Arc::clone(&status),
        move || Some((ok, config(Some("/ready")))),
        |_| {},
        rx,
    ));
    for _ in 0..200 {
        if status.is_healthy() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(status.is_healthy());
    tx.send(true).unwrap();
    task.await.unwrap();
}
