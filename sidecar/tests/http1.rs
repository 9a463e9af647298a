//! The sidecar's own HTTP/1.1 server connection, seen from raw TCP: keep-alive across request
//! bodies of both framings, HTTP/1.0 clients, trailers, large bodies both ways, trickled heads.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// Reads from `s` until `done` says the text is complete, the peer closes, or `WAIT` passes.
async fn read_until(s: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if done(&String::from_utf8_lossy(&out)) {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn request_bodies_of_both_framings_keep_the_connection_usable() {
    let bs = backends(1).await;
    let sc = sidecar("", &[bs[0].spec()]).await;
    let out = raw(
        sc.traffic_addr(),
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
          POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n\
          GET /headers HTTP/1.1\r\nHost: a\r\nX-Seq: 3\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    let first = out.find("\r\n\r\n5HTTP/1.1").is_some();
    let second = out.find("\r\n\r\n9HTTP/1.1").is_some();
    assert!(first && second, "{out}");
    assert!(out.contains("x-seq: 3"), "{out}");
    assert_eq!(bs[0].count(), 3);
}

#[tokio::test]
async fn large_bodies_stream_both_ways_with_trailers_for_clients_that_accept_them() {
    let bs = backends(1).await;
    let sc = sidecar("", &[bs[0].spec()]).await;
    let payload = vec![b'x'; 300 * 1024];
    let mut s = TcpStream::connect(sc.traffic_addr()).await.unwrap();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: TE\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let writer = {
        let payload = payload.clone();
        let (mut r, mut w) = s.into_split();
        let write = tokio::spawn(async move {
            for chunk in payload.chunks(7000) {
                w.write_all(chunk).await.unwrap();
            }
            w
        });
        let out = {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let _ = tokio::time::timeout(WAIT, async {
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => out.extend_from_slice(&buf[..n]),
                    }
                    if out.ends_with(b"\r\n\r\n") && out.windows(11).any(|w| w == b"grpc-status") {
                        break;
                    }
                }
            })
            .await;
            out
        };
        drop(write.await.unwrap());
        out
    };
    let text = String::from_utf8_lossy(&writer);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n"),
        "{}",
        &text[..200.min(text.len())]
    );
    assert!(text.contains("transfer-encoding: chunked\r\n"));
    let body_start = text.find("\r\n\r\n").unwrap() + 4;
    let decoded = dechunk(&writer[body_start..]);
    assert_eq!(decoded.0.len(), payload.len());
    assert!(decoded.1.contains("grpc-status: 0"), "{}", decoded.1);
}

#[tokio::test]
async fn http10_clients_get_keep_alive_only_when_they_ask() {
    let bs = backends(1).await;
    let sc = sidecar("", &[bs[0].spec()]).await;
    let out = raw(sc.traffic_addr(), b"GET / HTTP/1.0\r\n\r\n", WAIT).await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("connection: close\r\n"), "{out}");
    let mut s = TcpStream::connect(sc.traffic_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let first = read_until(&mut s, |t| t.ends_with("r0")).await;
    assert!(first.contains("connection: keep-alive\r\n"), "{first}");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let second = read_until(&mut s, |_| false).await;
    assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{second}");
}

#[tokio::test]
async fn unsupported_transfer_codings_get_501_and_are_not_forwarded() {
    let bs = backends(1).await;
    let sc = sidecar("", &[bs[0].spec()]).await;
    let out = raw(
        sc.traffic_addr(),
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(raw_status(&out), Some(501), "{out}");
    assert!(
        out.contains("x-datastream-error: unsupported-transfer-coding"),
        "{out}"
    );
    assert_eq!(bs[0].count(), 0);
}

#[tokio::test]
async fn a_head_trickled_byte_by_byte_is_served() {
    let bs = backends(1).await;
    let sc = sidecar("", &[bs[0].spec()]).await;
    let mut s = TcpStream::connect(sc.traffic_addr()).await.unwrap();
    for b in b"GET /headers HTTP/1.1\r\nHost: a\r\nX-Slow: yes\r\nConnection: close\r\n\r\n" {
        s.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let out = read_until(&mut s, |_| false).await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("x-slow: yes"), "{out}");
}

#[tokio::test]
async fn an_abandoned_body_closes_the_connection_after_the_answer() {
    // The route refuses the body before reading it (413 on the declared length): the rest of
    // the body is still on the wire, so the connection must close, and the client must still
    // get the answer rather than a reset.
    let bs = backends(1).await;
    let sc = sidecar("limits: { maxRequestBodyBytes: 16 }", &[bs[0].spec()]).await;
    let mut s = TcpStream::connect(sc.traffic_addr()).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    let _ = s.write_all(&vec![b'y'; 50_000]).await;
    let out = read_until(&mut s, |_| false).await;
    assert_eq!(raw_status(&out), Some(413), "{out}");
    assert!(out.contains("connection: close\r\n"), "{out}");
    assert_eq!(bs[0].count(), 0);
}

/// Decodes a chunked body: the data and the trailer section's text.
fn dechunk(mut input: &[u8]) -> (Vec<u8>, String) {
    let mut data = Vec::new();
    loop {
        let line_end = input.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&input[..line_end]).unwrap(), 16).unwrap();
        input = &input[line_end + 2..];
        if size == 0 {
            return (data, String::from_utf8_lossy(input).into_owned());
        }
        data.extend_from_slice(&input[..size]);
        assert_eq!(&input[size..size + 2], b"\r\n");
        input = &input[size + 2..];
    }
}

#[tokio::test]
async fn pooled_upstream_connections_the_upstream_closed_are_never_used() {
    // No retries: a request sent on a dead pooled connection would surface as a 502.
    let b = Backend::start("r0").await;
    let addr = b.addr;
    let sc = sidecar("failover: { retries: { attempts: 0 } }", &[b.spec()]).await;
    let client = h1_client();
    for _ in 0..3 {
        assert_eq!(get(&client, sc.traffic_addr(), "/", &[]).await.status, 200);
    }
    b.kill();
    // Let the killed backend's tasks drop the listener and connections, and the kernel deliver
    // the connections' FINs to the sidecar.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let back = Backend::start_on("r0", addr).await;
    for _ in 0..3 {
        let answer = get(&client, sc.traffic_addr(), "/", &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    assert_eq!(back.count(), 3);
}
