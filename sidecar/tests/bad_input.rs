//! Bad input on the wire, checked with raw TCP so the test sees exactly what a client would.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const LIMITS: &str = "limits: { maxRequestBodyBytes: 1024 }";
const WAIT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn malformed_request_gets_400() {
    let bs = backends(1).await;
    let sc = sidecar(LIMITS, &[bs[0].spec()]).await;
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
    ] {
        let out = raw(sc.traffic_addr(), bad, WAIT).await;
        assert_eq!(raw_status(&out), Some(400), "{out:?}");
    }
    assert_eq!(bs[0].count(), 0);
}

#[tokio::test]
async fn oversized_header_section_gets_431() {
    let bs = backends(1).await;
    let sc = sidecar(LIMITS, &[bs[0].spec()]).await;
    let big = "a".repeat(20 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
    let out = raw(sc.traffic_addr(), req.as_bytes(), WAIT).await;
    assert_eq!(raw_status(&out), Some(431), "{out:?}");
    assert_eq!(bs[0].count(), 0);
}

#[tokio::test]
async fn oversized_body_gets_413() {
    let bs = backends(1).await;
    let sc = sidecar(LIMITS, &[bs[0].spec()]).await;
    // Declared too large: refused before any replica is involved.
    let out = raw(
        sc.traffic_addr(),
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(raw_status(&out), Some(413), "{out:?}");
    assert!(
        out.contains("x-datastream-error: body-too-large"),
        "{out:?}"
    );
    assert_eq!(bs[0].count(), 0);
    // Streamed too large: cut off at the limit.
    let chunk = "a".repeat(900);
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n384\r\n{chunk}\r\n384\r\n{chunk}\r\n0\r\n\r\n"
    );
    let out = raw(sc.traffic_addr(), req.as_bytes(), WAIT).await;
    assert_eq!(raw_status(&out), Some(413), "{out:?}");
    // Within the limit: fine.
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n384\r\n{chunk}\r\n0\r\n\r\n"
    );
    let out = raw(sc.traffic_addr(), req.as_bytes(), WAIT).await;
    assert_eq!(raw_status(&out), Some(200), "{out:?}");
    assert!(out.ends_with("900"), "{out:?}");
}

#[tokio::test]
async fn smuggling_attempts_get_400_and_are_never_forwarded() {
    let bs = backends(1).await;
    let sc = sidecar(LIMITS, &[bs[0].spec()]).await;
    for req in [
        // CL then TE.
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        // TE then CL.
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        // Two different lengths.
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        // A smuggled request pipelined behind an innocent one.
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let before = bs[0].count();
        let out = raw(sc.traffic_addr(), req, WAIT).await;
        let statuses: Vec<&str> = out.matches("HTTP/1.1 ").map(|_| "").collect();
        assert!(out.contains("HTTP/1.1 400"), "{out:?}");
        let forwarded = bs[0].count() - before;
        // Only the innocent first request of the pipelined case reaches the replica.
        assert!(forwarded <= 1 && statuses.len() <= 2, "{forwarded} forwarded: {out:?}");
        if req.starts_with(b"GET") {
            assert_eq!(forwarded, 1);
            assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
        } else {
            assert_eq!(forwarded, 0);
        }
    }
}

#[tokio::test]
async fn slowloris_and_silent_clients_are_timed_out() {
    let bs = backends(1).await;
    let sc = sidecar(LIMITS, &[bs[0].spec()]).await;
    // A head that never completes.
    let mut s = TcpStream::connect(sc.traffic_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "a stalled head is cut off");
    assert!(started.elapsed() < Duration::from_secs(2));
    // A client that connects and says nothing.
    let mut s = TcpStream::connect(sc.traffic_addr()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "a silent connection is closed");
    assert_eq!(bs[0].count(), 0);
}

#[tokio::test]
async fn no_endpoints_gets_503_with_reason() {
    let sc = sidecar(LIMITS, &[]).await;
    let out = raw(
        sc.traffic_addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(raw_status(&out), Some(503), "{out:?}");
    assert!(
        out.contains("x-datastream-error: no-healthy-endpoints"),
        "{out:?}"
    );
    // Every endpoint refusing connections: 502 after trying each.
    let dead = backends(2).await;
    for d in &dead {
        d.kill();
    }
    sc.shared()
        .set_endpoints(&dead.iter().map(|d| d.spec()).collect::<Vec<_>>());
    let a = get(&h1_client(), sc.traffic_addr(), "/", &[]).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.headers["x-datastream-error"], "upstream-connect-failed");
    // Then both are down, and still tried (panic routing): the answer is what the replicas
    // do now, never a 503 from memory.
    let a = get(&h1_client(), sc.traffic_addr(), "/", &[]).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.headers["x-datastream-error"], "upstream-connect-failed");
}

#[tokio::test]
async fn connection_count_is_bounded() {
    let bs = backends(1).await;
    let mut settings = settings(Duration::from_millis(100));
    settings.limits.max_connections = 2;
    settings.limits.header_read_timeout = Duration::from_secs(5);
    let sc = sidecar_with(LIMITS, &[bs[0].spec()], settings).await;
    let addr = sc.traffic_addr();
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    // A third client waits in the backlog while two connections are open.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(req).await.unwrap();
    let mut buf = [0u8; 512];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond the connection cap");
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf))
        .await
        .expect("served once a slot frees")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let bs = backends(2).await;
    let specs: Vec<_> = bs.iter().map(|b| b.spec()).collect();
    let sc = sidecar(LIMITS, &specs).await;
    let out = raw(
        sc.traffic_addr(),
        b"GET /slow/30 HTTP/1.1\r\nHost: a\r\n\r\nGET /headers HTTP/1.1\r\nHost: a\r\nX-Seq: 2\r\n\r\nGET /slow/5 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
    let second = out.find("x-seq: 2").expect("second response in the middle");
    let first_end = out.find("HTTP/1.1 200").unwrap();
    let third = out.rfind("HTTP/1.1 200").unwrap();
    assert!(first_end < second && second < third, "{out}");
}

#[tokio::test]
async fn expect_continue_bodies_are_forwarded() {
    let bs = backends(1).await;
    let sc = sidecar(LIMITS, &[bs[0].spec()]).await;
    let mut s = TcpStream::connect(sc.traffic_addr()).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"hello").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("HTTP/1.1 200") && out.ends_with('5'), "{out}");
}

#[tokio::test]
async fn random_garbage_never_takes_the_sidecar_down() {
    let bs = backends(1).await;
    let sc = sidecar(LIMITS, &[bs[0].spec()]).await;
    // Deterministic pseudo-random inputs (xorshift), plus near-valid prefixes.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let prefixes: [&[u8]; 5] = [
        b"",
        b"GET / HTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
    ];
    for i in 0..60 {
        let mut input = prefixes[i % prefixes.len()].to_vec();
        let len = (next() % 300) as usize;
        input.extend((0..len).map(|_| next() as u8));
        let _ = raw(sc.traffic_addr(), &input, Duration::from_millis(200)).await;
    }
    let a = get(&h1_client(), sc.traffic_addr(), "/", &[]).await;
    assert_eq!(a.status, 200);
}
