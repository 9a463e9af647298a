//! Real TLS handshakes over loopback TCP between a "peer listener" and a "dialer" built from this
//! crate: the sidecars of one stream accept each other, and every other certificate is refused
//! with its reason, on the side that checks it.

use std::sync::Arc;
use std::time::Duration;

use datastream_identity::authority::{Authority, CaPem, generate_issuer, generate_trust_anchor};
use datastream_identity::credentials::{Credentials, PendingKey};
use datastream_identity::tls::{client_config, server_config};
use datastream_identity::verify::{Refusal, TrustAnchors};
use datastream_identity::{WorkloadId, crypto_provider};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, ServerName};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const DAY: Duration = Duration::from_secs(86_400);

struct Pki {
    anchor: CaPem,
    issuer: CaPem,
    authority: Authority,
}

fn new_pki(trust_domain: &str) -> Pki {
    let now = OffsetDateTime::now_utc();
    let anchor = generate_trust_anchor(trust_domain, now - 30 * DAY, 3650 * DAY).unwrap();
    let issuer = generate_issuer(&anchor, trust_domain, now - 30 * DAY, 365 * DAY).unwrap();
    let authority = Authority::new(trust_domain, &issuer, &anchor.cert, now).unwrap();
    Pki {
        anchor,
        issuer,
        authority,
    }
}

fn id(trust_domain: &str, sa: &str) -> WorkloadId {
    WorkloadId::new(trust_domain, "shop", sa).unwrap()
}

/// Credentials for `who`, issued at `issued_at` for `lifetime`.
fn creds(
    pki: &Pki,
    who: &WorkloadId,
    issued_at: OffsetDateTime,
    lifetime: Duration,
) -> Credentials {
    let key = PendingKey::generate(who).unwrap();
    let issued = pki
        .authority
        .sign(&key.csr_der().unwrap(), who, lifetime, issued_at)
        .unwrap();
    key.complete(issued.chain, issued_at).unwrap()
}

fn anchors(pki: &Pki) -> TrustAnchors {
    TrustAnchors::new(
        &datastream_identity::authority::certificates_from_pem(&pki.anchor.cert).unwrap(),
    )
    .unwrap()
}

/// Runs one handshake and an echo; returns each side's result (the error's refusal, if any).
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> (
    Result<Option<String>, Option<Refusal>>,
    Result<(), Option<Refusal>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match TlsAcceptor::from(server).accept(tcp).await {
            Ok(mut tls) => {
                let alpn = tls
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned());
                let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf).await.unwrap();
                tls.write_all(&buf).await.unwrap();
                tls.shutdown().await.ok();
                let who = datastream_identity::verify::identity_of(&peer).unwrap();
                Ok(Some(format!("{who} {}", alpn.unwrap_or_default())))
            }
            Err(e) => Err(e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .and_then(Refusal::of)),
        }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let dialed = TlsConnector::from(client)
        .connect(ServerName::try_from("peer.invalid").unwrap(), tcp)
        .await;
    let client_result = match dialed {
        Ok(mut tls) => {
            tls.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            // TLS 1.3: the server's verdict on our certificate arrives after our handshake ends.
            match tls.read_exact(&mut buf).await {
                Ok(_) => {
                    assert_eq!(&buf, b"ping");
                    Ok(())
                }
                Err(_) => Err(None),
            }
        }
        Err(e) => Err(e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(Refusal::of)),
    };
    (accept.await.unwrap(), client_result)
}

fn configs(
    pki: &Pki,
    server_creds: &Credentials,
    client_creds: &Credentials,
    allowed: Vec<WorkloadId>,
    expected: WorkloadId,
) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let provider = crypto_provider();
    let server = server_config(
        server_creds.certified_key(&provider).unwrap(),
        anchors(pki),
        "cluster.local",
        allowed,
    )
    .unwrap();
    let client = client_config(
        client_creds.certified_key(&provider).unwrap(),
        anchors(pki),
        expected,
    )
    .unwrap();
    (Arc::new(server), Arc::new(client))
}

#[tokio::test]
async fn sidecars_of_one_stream_accept_each_other_over_h2() {
    let pki = new_pki("cluster.local");
    let me = id("cluster.local", "catalog-peers");
    let now = OffsetDateTime::now_utc();
    let a = creds(&pki, &me, now, DAY);
    let b = creds(&pki, &me, now, DAY);
    let (server, client) = configs(&pki, &a, &b, vec![me.clone()], me.clone());
    let (accepted, dialed) = handshake(server, client).await;
    assert_eq!(accepted, Ok(Some(format!("{me} h2"))));
    assert_eq!(dialed, Ok(()));
}

/// The listener refuses each kind of client certificate it must, with its reason.
#[tokio::test]
async fn the_listener_refuses_every_foreign_client_with_its_reason() {
    let pki = new_pki("cluster.local");
    let me = id("cluster.local", "catalog-peers");
    let now = OffsetDateTime::now_utc();
    let server_creds = creds(&pki, &me, now, DAY);

    let other_stream = id("cluster.local", "billing-peers");
    let expired = creds(&pki, &me, now - 3 * DAY, DAY);
    let not_yet_valid = creds(&pki, &me, now + 2 * DAY, DAY);
    let wrong_identity = creds(&pki, &other_stream, now, DAY);
    let foreign_pki = same_anchor_other_domain(&pki);
    let cases: Vec<(&str, Credentials, Refusal)> = vec![
        ("expired", expired, Refusal::Expired),
        ("not yet valid", not_yet_valid, Refusal::NotYetValid),
        (
            "another stream's identity",
            wrong_identity,
            Refusal::WrongIdentity,
        ),
        (
            "our name from another CA",
            creds(&new_pki("cluster.local"), &me, now, DAY),
            Refusal::UnknownIssuer,
        ),
        (
            "another trust domain under our anchor",
            creds(
                &foreign_pki,
                &id("other.example", "catalog-peers"),
                now,
                DAY,
            ),
            Refusal::WrongTrustDomain,
        ),
        (
            "self-signed with our name",
            self_signed(&me),
            Refusal::UnknownIssuer,
        ),
    ];
    for (what, client_creds, want) in cases {
        let (server, client) = configs(
            &pki,
            &server_creds,
            &client_creds,
            vec![me.clone()],
            me.clone(),
        );
        let (accepted, dialed) = handshake(server, client).await;
        assert_eq!(accepted, Err(Some(want)), "{what}");
        assert!(dialed.is_err(), "{what}: the client got an answer");
    }
}

/// The dialer refuses each kind of server certificate it must, with its reason.
#[tokio::test]
async fn the_dialer_refuses_a_peer_that_is_not_the_expected_identity() {
    let pki = new_pki("cluster.local");
    let me = id("cluster.local", "catalog-peers");
    let now = OffsetDateTime::now_utc();
    let client_creds = creds(&pki, &me, now, DAY);
    let cases: Vec<(&str, Credentials, Refusal)> = vec![
        (
            "expired",
            creds(&pki, &me, now - 3 * DAY, DAY),
            Refusal::Expired,
        ),
        (
            "not yet valid",
            creds(&pki, &me, now + 2 * DAY, DAY),
            Refusal::NotYetValid,
        ),
        (
            "another identity",
            creds(&pki, &id("cluster.local", "billing-peers"), now, DAY),
            Refusal::WrongIdentity,
        ),
        ("self-signed", self_signed(&me), Refusal::UnknownIssuer),
    ];
    for (what, server_creds, want) in cases {
        let (server, client) = configs(
            &pki,
            &server_creds,
            &client_creds,
            vec![me.clone()],
            me.clone(),
        );
        let (_, dialed) = handshake(server, client).await;
        assert_eq!(dialed, Err(Some(want)), "{what}");
    }
}

/// During a trust-anchor rotation sidecars trust both anchors: a peer issued under the new anchor
/// is accepted by one that also still trusts the old.
#[tokio::test]
async fn both_anchors_are_trusted_during_a_rotation() {
    let old = new_pki("cluster.local");
    let new = new_pki("cluster.local");
    let me = id("cluster.local", "catalog-peers");
    let now = OffsetDateTime::now_utc();
    let bundle = format!("{}{}", old.anchor.cert, new.anchor.cert);
    let both =
        TrustAnchors::new(&datastream_identity::authority::certificates_from_pem(&bundle).unwrap())
            .unwrap();
    let provider = crypto_provider();
    let server_creds = creds(&old, &me, now, DAY);
    let client_creds = creds(&new, &me, now, DAY);
    let server = server_config(
        server_creds.certified_key(&provider).unwrap(),
        both.clone(),
        "cluster.local",
        vec![me.clone()],
    )
    .unwrap();
    let client = client_config(
        client_creds.certified_key(&provider).unwrap(),
        both,
        me.clone(),
    )
    .unwrap();
    let (accepted, dialed) = handshake(Arc::new(server), Arc::new(client)).await;
    assert!(accepted.is_ok(), "{accepted:?}");
    assert_eq!(dialed, Ok(()));
    // Without the new anchor, the same peer is refused.
    let (server, client) = configs(
        &old,
        &server_creds,
        &client_creds,
        vec![me.clone()],
        me.clone(),
    );
    assert_eq!(
        handshake(server, client).await.0,
        Err(Some(Refusal::UnknownIssuer))
    );
}

/// The same issuer, under the same anchor, issuing for another trust domain (a misconfigured
/// issuer): its certificates chain fine and must still be refused for their trust domain.
fn same_anchor_other_domain(pki: &Pki) -> Pki {
    let now = OffsetDateTime::now_utc();
    Pki {
        anchor: pki.anchor.clone(),
        issuer: pki.issuer.clone(),
        authority: Authority::new("other.example", &pki.issuer, &pki.anchor.cert, now).unwrap(),
    }
}

/// A self-signed certificate naming `who` (no CA behind it).
fn self_signed(who: &WorkloadId) -> Credentials {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(who.to_string().as_str().try_into().unwrap())];
    let cert = params.self_signed(&key).unwrap();
    let pending = PendingKey::with_key_pem(who, &key.serialize_pem()).unwrap();
    pending
        .complete(
            vec![CertificateDer::from(cert.der().to_vec())],
            OffsetDateTime::now_utc(),
        )
        .unwrap()
}

/// The peer listener's accept path: plaintext HTTP and a TLS client without a certificate are
/// refused with their own reasons; a sidecar of the stream is accepted with its identity and ALPN.
#[tokio::test]
async fn accepting_refuses_plaintext_and_anonymous_clients() {
    use datastream_identity::accept::accept_peer;
    use datastream_identity::verify::PeerVerifier;

    let pki = new_pki("cluster.local");
    let me = id("cluster.local", "catalog-peers");
    let now = OffsetDateTime::now_utc();
    let server_creds = creds(&pki, &me, now, DAY);
    let provider = crypto_provider();
    let server = server_config(
        server_creds.certified_key(&provider).unwrap(),
        anchors(&pki),
        "cluster.local",
        vec![me.clone()],
    )
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    // Plaintext HTTP.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    assert_eq!(
        accept_peer(&acceptor, tcp).await.unwrap_err(),
        Refusal::Plaintext
    );

    // TLS, verifying the server, but presenting no certificate.
    let anonymous = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier::new(anchors(&pki), me.clone())))
        .with_no_client_auth();
    let dial = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = TlsConnector::from(Arc::new(anonymous))
            .connect(ServerName::try_from("peer.invalid").unwrap(), tcp)
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        tls.read(&mut buf).await
    });
    let (tcp, _) = listener.accept().await.unwrap();
    assert_eq!(
        accept_peer(&acceptor, tcp).await.unwrap_err(),
        Refusal::NoCertificate
    );
    assert!(
        !matches!(dial.await.unwrap(), Ok(n) if n > 0),
        "the anonymous client got data"
    );

    // A sidecar of the stream.
    let client_creds = creds(&pki, &me, now, DAY);
    let client = client_config(
        client_creds.certified_key(&provider).unwrap(),
        anchors(&pki),
        me.clone(),
    )
    .unwrap();
    let dial = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from("peer.invalid").unwrap(), tcp)
            .await
            .unwrap();
        tls.write_all(b"ping").await.unwrap();
        tls.flush().await.unwrap();
        tls
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let mut peer = accept_peer(&acceptor, tcp).await.unwrap();
    assert_eq!(peer.identity, me);
    assert_eq!(peer.alpn.as_deref(), Some(&b"h2"[..]));
    let mut buf = [0u8; 4];
    peer.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    drop(dial.await.unwrap());
}

/// A sidecar's check of its own certificate before it calls itself ready: its chain must prove its
/// identity to peers that trust the published anchors, or it would only show as refused
/// connections on the other side.
#[test]
fn a_sidecar_checks_its_own_chain_against_the_published_anchors() {
    let pki = new_pki("cluster.local");
    let me = id("cluster.local", "orders-sidecar");
    let now = OffsetDateTime::now_utc();
    let mine = creds(&pki, &me, now, DAY);
    let published = TrustAnchors::from_pem(&pki.anchor.cert).unwrap();
    assert_eq!(published.len(), 1);
    let unix_now = rustls::pki_types::UnixTime::now();
    assert_eq!(published.check_own(mine.chain(), &me, unix_now), Ok(()));

    // Another installation's anchors (an issuer the pods were not told about).
    let foreign = new_pki("cluster.local");
    let foreign_anchors = TrustAnchors::from_pem(&foreign.anchor.cert).unwrap();
    assert_eq!(
        foreign_anchors.check_own(mine.chain(), &me, unix_now),
        Err(Refusal::UnknownIssuer)
    );
    // A bundle of both (an anchor rotation) accepts it.
    let both =
        TrustAnchors::from_pem(&format!("{}{}", foreign.anchor.cert, pki.anchor.cert)).unwrap();
    assert_eq!(both.len(), 2);
    assert_eq!(both.check_own(mine.chain(), &me, unix_now), Ok(()));
    // A certificate for someone else is not ours.
    assert_eq!(
        published.check_own(mine.chain(), &id("cluster.local", "other"), unix_now),
        Err(Refusal::WrongIdentity)
    );
    // Expired by the time it is checked.
    let later = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from((now + 2 * DAY).unix_timestamp()).unwrap(),
    ));
    assert_eq!(
        published.check_own(mine.chain(), &me, later),
        Err(Refusal::Expired)
    );
    assert_eq!(
        published.check_own(&[], &me, unix_now),
        Err(Refusal::NoCertificate)
    );
    assert!(TrustAnchors::from_pem("not a certificate").is_err());
}
