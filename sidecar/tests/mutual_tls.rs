//! Mutual TLS between sidecars, end to end over loopback: real sidecars with certificates from a
//! real authority, real backends, and the bytes on the wire between the two sidecars recorded by
//! a relay in the middle (the equivalent of a packet capture on the pod network).
//!
//! Sidecar A (the client's) forwards to sidecar B's peer listener through the relay; B delivers to
//! its local backend over plaintext loopback. Both run as the same stream's identity.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use datastream_identity::WorkloadId;
use datastream_identity::authority::{Authority, CaPem, generate_issuer, generate_trust_anchor};
use datastream_identity::credentials::{Credentials, PendingKey};
use datastream_identity::rotation::IdentityState;
use datastream_identity::verify::TrustAnchors;
use datastream_lb::endpoint::EndpointSpec;
use datastream_sidecar::identity::IdentityHandle;
use datastream_sidecar::metrics::Metrics;
use datastream_sidecar::peer_tls::PeerTls;
use datastream_sidecar::{Shared, Sidecar};
use http_body_util::Full;
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

const DAY: Duration = Duration::from_secs(86_400);
const TRUST_DOMAIN: &str = "cluster.local";

struct Pki {
    anchor: CaPem,
    authority: Authority,
}

fn pki() -> Pki {
    let now = OffsetDateTime::now_utc();
    let anchor = generate_trust_anchor(TRUST_DOMAIN, now - DAY, 3650 * DAY).unwrap();
    let issuer = generate_issuer(&anchor, TRUST_DOMAIN, now - DAY, 365 * DAY).unwrap();
    let authority = Authority::new(TRUST_DOMAIN, &issuer, &anchor.cert, now).unwrap();
    Pki { anchor, authority }
}

fn id(service_account: &str) -> WorkloadId {
    WorkloadId::new(TRUST_DOMAIN, "shop", service_account).unwrap()
}

fn creds(pki: &Pki, who: &WorkloadId) -> Credentials {
    let now = OffsetDateTime::now_utc();
    let key = PendingKey::generate(who).unwrap();
    let issued = pki
        .authority
        .sign(&key.csr_der().unwrap(), who, DAY, now)
        .unwrap();
    key.complete(issued.chain, now).unwrap()
}

/// A sidecar with `who`'s certificate from `pki`, mutual TLS on, over `endpoints`.
async fn tls_sidecar(pki: &Pki, who: &WorkloadId, endpoints: &[EndpointSpec]) -> Sidecar {
    let metrics = Metrics::new();
    let shared = Arc::new(Shared::new(
        policy("loadBalancing: { policy: round-robin }", &metrics),
        metrics,
    ));
    let (_tx, rx) = tokio::sync::watch::channel(IdentityState::Ready(Arc::new(creds(pki, who))));
    // The sender lives as long as the test: a fixed certificate.
    std::mem::forget(_tx);
    let handle = IdentityHandle::new(who.clone(), 1, rx);
    shared.set_identity(handle.clone());
    let anchors = TrustAnchors::from_pem(&pki.anchor.cert).unwrap();
    shared.set_peer_tls(Arc::new(PeerTls::new(
        handle,
        anchors,
        Arc::clone(&shared.metrics.identity),
    )));
    shared.set_endpoints(endpoints);
    Sidecar::start(
        &settings(Duration::from_millis(100)),
        shared,
        serde_json::json!({}),
    )
    .await
    .unwrap()
}

fn local(backend: &Backend) -> EndpointSpec {
    EndpointSpec {
        local: true,
        ..backend.spec()
    }
}

fn remote(name: &str, addr: SocketAddr) -> EndpointSpec {
    EndpointSpec {
        addr,
        name: name.to_owned(),
        local: false,
        serving: true,
    }
}

/// A TCP relay that records every byte it forwards, both ways.
struct Recorder {
    addr: SocketAddr,
    to_server: Arc<Mutex<Vec<u8>>>,
    to_client: Arc<Mutex<Vec<u8>>>,
}

async fn recorder(target: SocketAddr) -> Recorder {
    recorder_delaying(target, Duration::ZERO).await
}

/// A [`recorder`] that holds each connection's first bytes from the server for `delay`: with TLS,
/// the server's handshake reply, so setting up every connection takes at least `delay`.
async fn recorder_delaying(target: SocketAddr, delay: Duration) -> Recorder {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let to_server = Arc::new(Mutex::new(Vec::new()));
    let to_client = Arc::new(Mutex::new(Vec::new()));
    let (up, down) = (Arc::clone(&to_server), Arc::clone(&to_client));
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = TcpStream::connect(target).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let (up, down) = (Arc::clone(&up), Arc::clone(&down));
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    up.lock().extend_from_slice(&buf[..n]);
                }
                let _ = sw.shutdown().await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut first = true;
                while let Ok(n) = sr.read(&mut buf).await {
                    if std::mem::take(&mut first) {
                        tokio::time::sleep(delay).await;
                    }
                    if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    down.lock().extend_from_slice(&buf[..n]);
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    Recorder {
        addr,
        to_server,
        to_client,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn metric(sidecar: &Sidecar, line_start: &str) -> u64 {
    let shared = sidecar.shared();
    let text = shared.metrics.encode(&shared.endpoints());
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Requests cross the peer hop over TLS, HTTP/1 (own client and hyper's, with a body) and
/// HTTP/2, and nothing of them is readable on the wire: the client's first byte is a TLS
/// handshake record, and neither the request line, a header, the body nor the answer appear.
#[tokio::test]
async fn peer_traffic_is_tls_and_nothing_of_it_is_readable_on_the_wire() {
    let pki = pki();
    let me = id("orders-sidecar");
    let b_backend = Backend::start("replica-b").await;
    let b = tls_sidecar(&pki, &me, &[local(&b_backend)]).await;
    let wire = recorder(b.peer_addr().unwrap()).await;
    let a = tls_sidecar(&pki, &me, &[remote("replica-b", wire.addr)]).await;

    let h1 = h1_client();
    for i in 0..5 {
        let answer = get(
            &h1,
            a.traffic_addr(),
            &format!("/secret-path/{i}"),
            &[("x-card-number", "4111111111111111")],
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.backend(), "replica-b");
    }
    // A body in memory (the sidecar's own HTTP/1 client) and a streamed one (hyper's).
    let posted = h1
        .request(
            http::Request::post(format!("http://{}/secret-post", a.traffic_addr()))
                .body(Full::new(Bytes::from_static(b"secret-body-bytes")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let h2 = h2_client();
    let answer = get(&h2, a.traffic_addr(), "/secret-h2", &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.backend(), "replica-b");
    assert!(b_backend.count() >= 7, "{}", b_backend.count());

    let up = wire.to_server.lock().clone();
    let down = wire.to_client.lock().clone();
    assert!(!up.is_empty() && !down.is_empty());
    assert_eq!(up[0], 22, "the first byte is a TLS handshake record");
    for needle in [
        &b"secret-path"[..],
        b"secret-post",
        b"secret-h2",
        b"secret-body-bytes",
        b"4111111111111111",
        b"HTTP/1.1",
        b"PRI * HTTP/2.0",
    ] {
        assert!(
            !contains(&up, needle),
            "{:?} readable on the wire",
            String::from_utf8_lossy(needle)
        );
    }
    assert!(
        !contains(&down, b"replica-b"),
        "the answer is readable on the wire"
    );
    assert!(
        !contains(&down, b"HTTP/1.1 200"),
        "the answer is readable on the wire"
    );
    // No refusal on either side.
    assert_eq!(metric(&a, "datastream_sidecar_peer_tls_refusals_total"), 0);
    assert_eq!(metric(&b, "datastream_sidecar_peer_tls_refusals_total"), 0);
    // /endpoints says which identity the remote endpoint must prove.
    let view = datastream_sidecar::admin::endpoints_json(a.shared());
    assert_eq!(view["mutualTls"], true);
    assert_eq!(
        view["endpoints"][0]["peerIdentity"],
        "spiffe://cluster.local/ns/shop/sa/orders-sidecar"
    );
}

/// A TLS client with `creds` (or none) against `addr`; the result of a request over it.
async fn tls_request(
    addr: SocketAddr,
    client_creds: Option<&Credentials>,
    anchors: &TrustAnchors,
    server_id: &WorkloadId,
) -> Result<String, String> {
    let provider = datastream_identity::crypto_provider();
    let config = match client_creds {
        Some(c) => datastream_identity::tls::client_config(
            c.certified_key(&provider).unwrap(),
            anchors.clone(),
            server_id.clone(),
        )
        .unwrap(),
        None => rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(
                datastream_identity::verify::PeerVerifier::new(anchors.clone(), server_id.clone()),
            ))
            .with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /x HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await {
        Ok(Ok(_)) if !out.is_empty() => Ok(String::from_utf8_lossy(&out).into_owned()),
        Ok(Ok(_)) => Err("closed without an answer".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

/// The peer listener answers only sidecars of its own stream: plaintext, no certificate, another
/// stream's identity and another authority's certificate are each refused before any request is
/// read, and counted with their reason; the stream's own identity gets its answer.
#[tokio::test]
async fn the_peer_listener_refuses_everyone_but_its_stream_and_says_why() {
    let pki = pki();
    let me = id("orders-sidecar");
    let backend = Backend::start("replica-b").await;
    let b = tls_sidecar(&pki, &me, &[local(&backend)]).await;
    let peer = b.peer_addr().unwrap();
    let anchors = TrustAnchors::from_pem(&pki.anchor.cert).unwrap();

    // Plaintext HTTP: closed without an answer.
    let text = raw(
        peer,
        b"GET /x HTTP/1.1\r\nhost: b\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(text, "", "plaintext got an answer");
    let refused = |reason: &str| {
        metric(
            &b,
            &format!(
                "datastream_sidecar_peer_tls_refusals_total{{side=\"accept\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(refused("plaintext"), 1);

    // TLS without a client certificate.
    assert!(tls_request(peer, None, &anchors, &me).await.is_err());
    assert_eq!(refused("no_certificate"), 1);

    // Another stream's sidecar, same authority.
    let other = creds(&pki, &id("payments-sidecar"));
    assert!(
        tls_request(peer, Some(&other), &anchors, &me)
            .await
            .is_err()
    );
    assert_eq!(refused("wrong_identity"), 1);

    // Our identity, but signed by another authority (another cluster, or a self-made CA).
    let foreign = pki_with_same_names();
    let forged = creds(&foreign, &me);
    assert!(
        tls_request(peer, Some(&forged), &anchors, &me)
            .await
            .is_err()
    );
    assert_eq!(refused("unknown_issuer"), 1);

    // A sidecar of the stream: answered by the local replica.
    let ours = creds(&pki, &me);
    let answer = tls_request(peer, Some(&ours), &anchors, &me)
        .await
        .expect("the stream's own identity is answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("replica-b"), "{answer}");
    assert_eq!(
        backend.count(),
        1,
        "only the authorized request reached the workload"
    );
}

/// Another installation's authority: the same trust domain and the same certificate names, other
/// keys.
fn pki_with_same_names() -> Pki {
    pki()
}

/// The dialing side verifies the peer too: a "replica" that proves another identity is refused
/// (and counted) before the request leaves, and the client gets an error, not that replica's
/// answer.
#[tokio::test]
async fn a_peer_with_another_identity_never_gets_the_request() {
    let pki = pki();
    let impostor_backend = Backend::start("impostor").await;
    let impostor = tls_sidecar(&pki, &id("payments-sidecar"), &[local(&impostor_backend)]).await;
    let a = tls_sidecar(
        &pki,
        &id("orders-sidecar"),
        &[remote("replica-x", impostor.peer_addr().unwrap())],
    )
    .await;
    let result = try_get(&h1_client(), a.traffic_addr(), "/secret", &[]).await;
    match result {
        Ok(answer) => assert!(answer.status.is_server_error(), "{}", answer.status),
        Err(e) => panic!("the sidecar should answer with an error status: {e}"),
    }
    assert_eq!(impostor_backend.count(), 0, "the impostor got the request");
    assert!(
        metric(
            &a,
            "datastream_sidecar_peer_tls_refusals_total{side=\"dial\",reason=\"wrong_identity\"}"
        ) >= 1
    );
}

/// Setting up a connection is the connection's cost, not the replica's response time: a
/// handshake that takes 300 ms (a peer's CPU throttled by its limit, say) does not make the replica
/// look 300 ms slow to peak-EWMA, which would keep requests away from it for seconds after its
/// first one. Over the own HTTP/1 client and over hyper's HTTP/2 client.
#[tokio::test]
async fn a_slow_handshake_is_not_taken_for_the_replicas_latency() {
    let pki = pki();
    let me = id("orders-sidecar");
    let b_backend = Backend::start("replica-b").await;
    let b = tls_sidecar(&pki, &me, &[local(&b_backend)]).await;
    let handshake = Duration::from_millis(300);
    for client in [h1_client(), h2_client()] {
        let slow = recorder_delaying(b.peer_addr().unwrap(), handshake).await;
        let a = tls_sidecar(&pki, &me, &[remote("replica-b", slow.addr)]).await;
        let started = std::time::Instant::now();
        let answer = get(&client, a.traffic_addr(), "/", &[]).await;
        assert_eq!(answer.backend(), "replica-b");
        assert!(
            started.elapsed() >= handshake,
            "the handshake was not delayed"
        );
        let set = a.shared().endpoints();
        let endpoint = &set.endpoints()[0];
        let load = endpoint
            .load
            .snapshot(datastream_resilience::clock::now_ns());
        assert_eq!(load.samples, 1);
        // The request itself takes about a millisecond; the handshake 300.
        assert!(
            load.ewma_ms < 100.0,
            "the handshake counted as latency: {load:?}"
        );
    }
}
