//! The binary's workload identity from files (`--identity-dir`, local mode): two real sidecar
//! processes with certificates from a real authority speak mutual TLS over loopback, pick up a
//! renewed certificate without a restart, keep the last good one when the files go bad, and
//! refuse to start on files that cannot work.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use datastream_identity::WorkloadId;
use datastream_identity::authority::{Authority, CaPem, generate_issuer, generate_trust_anchor};
use datastream_identity::credentials::PendingKey;
use support::*;
use time::OffsetDateTime;
use tokio::time::Instant;

const DAY: Duration = Duration::from_secs(86_400);

struct Pki {
    anchor: CaPem,
    authority: Authority,
}

fn pki(trust_domain: &str) -> Pki {
    let now = OffsetDateTime::now_utc();
    let anchor = generate_trust_anchor(trust_domain, now - DAY, 3650 * DAY).unwrap();
    let issuer = generate_issuer(&anchor, trust_domain, now - DAY, 365 * DAY).unwrap();
    let authority = Authority::new(trust_domain, &issuer, &anchor.cert, now).unwrap();
    Pki { anchor, authority }
}

fn orders() -> WorkloadId {
    WorkloadId::new("cluster.local", "shop", "orders-peers").unwrap()
}

/// A certificate for `who` from `pki` (lifetime `lifetime`) and its key, as PEM.
fn issue(pki: &Pki, who: &WorkloadId, lifetime: Duration) -> (String, String) {
    let key_pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    let key = PendingKey::with_key_pem(who, &key_pem).unwrap();
    let issued = pki
        .authority
        .sign(
            &key.csr_der().unwrap(),
            who,
            lifetime,
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    (issued.chain_pem(), key_pem)
}

/// A fresh directory with `who`'s certificate and key from `pki` and `pki`'s anchor as `ca.crt`.
fn identity_dir(name: &str, pki: &Pki, who: &WorkloadId, lifetime: Duration) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ds-identity-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (chain, key) = issue(pki, who, lifetime);
    write_pair(&dir, &chain, &key);
    std::fs::write(dir.join("ca.crt"), &pki.anchor.cert).unwrap();
    dir
}

/// Replaces certificate and key the way a certificate manager does: each file written aside, then
/// renamed over the old one.
fn write_pair(dir: &Path, chain: &str, key: &str) {
    for (file, content) in [("tls.key", key), ("tls.crt", chain)] {
        let aside = dir.join(format!(".{file}.new"));
        std::fs::write(&aside, content).unwrap();
        std::fs::rename(&aside, dir.join(file)).unwrap();
    }
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn json(client: &H1Client, addr: SocketAddr, path: &str) -> serde_json::Value {
    serde_json::from_str(&get(client, addr, path, &[]).await.body).unwrap()
}

/// curl (OpenSSL) to `peer` over TLS, with `dir`'s certificate or none: the status code, or the
/// error.
fn curl_peer(dir: &Path, peer: SocketAddr, with_certificate: bool) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--insecure", "--max-time", "5", "-o", "/dev/null"])
        .args(["-w", "%{http_code}"]);
    if with_certificate {
        cmd.arg("--cert")
            .arg(dir.join("tls.crt"))
            .arg("--key")
            .arg(dir.join("tls.key"));
    }
    let out = cmd
        .arg(format!("https://{peer}/hello"))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test]
async fn sidecars_with_identity_files_speak_mutual_tls_and_follow_renewals() {
    let pki = pki("cluster.local");
    let backend = backends(1).await.remove(0);
    let dir_a = identity_dir("a", &pki, &orders(), DAY);
    let dir_b = identity_dir("b", &pki, &orders(), DAY);
    let (a_listen, a_admin) = (free_addr(), free_addr());
    let (b_listen, b_admin, b_peer) = (free_addr(), free_addr(), free_addr());
    let local = backend.addr.to_string();
    let _b = spawn_sidecar(&[
        "--listen",
        &b_listen.to_string(),
        "--admin",
        &b_admin.to_string(),
        "--peer-listen",
        &b_peer.to_string(),
        "--endpoints",
        &local,
        "--local-endpoint",
        &local,
        "--identity-dir",
        dir_b.to_str().unwrap(),
    ]);
    // A knows B only as a remote replica: every request crosses the mutual TLS hop.
    let _a = spawn_sidecar(&[
        "--listen",
        &a_listen.to_string(),
        "--admin",
        &a_admin.to_string(),
        "--endpoints",
        &b_peer.to_string(),
        "--identity-dir",
        dir_a.to_str().unwrap(),
    ]);
    let client = h1_client();
    for admin in [a_admin, b_admin] {
        wait_until("the sidecars to be ready", || async {
            try_get(&client, admin, "/ready", &[])
                .await
                .is_ok_and(|a| a.status == 200)
        })
        .await;
    }

    let answer = get(&client, a_listen, "/hello", &[]).await;
    assert_eq!((answer.status.as_u16(), answer.backend()), (200, "r0"));
    let endpoints = json(&client, a_admin, "/endpoints").await;
    assert_eq!(endpoints["mutualTls"], true, "{endpoints}");
    assert_eq!(
        endpoints["endpoints"][0]["peerIdentity"],
        orders().to_string(),
        "{endpoints}"
    );
    // B's peer port answers no plaintext client.
    let plaintext = raw(
        b_peer,
        b"GET /hello HTTP/1.1\r\nhost: b\r\n\r\n",
        Duration::from_secs(1),
    )
    .await;
    assert!(!plaintext.contains("HTTP/1.1"), "{plaintext:?}");
    assert_eq!(backend.count(), 1);
    // An OpenSSL client (curl) with the stream's certificate gets through B's peer port; without
    // one it is refused. (OpenSSL parses the certificate request's list of acceptable authorities,
    // which rustls clients do not: a malformed list once failed every OpenSSL handshake.)
    // curl blocks; the backend answers on this test's runtime, so curl runs on another thread.
    let curl = |with_certificate: bool| {
        let dir_b = dir_b.clone();
        tokio::task::spawn_blocking(move || curl_peer(&dir_b, b_peer, with_certificate))
    };
    let (with, without) = (curl(true).await.unwrap(), curl(false).await.unwrap());
    assert_eq!(with, "200", "{with}");
    assert!(!without.starts_with("200"), "{without}");
    assert_eq!(backend.count(), 2);

    // A renewal written in place swaps in without a restart.
    let first = json(&client, a_admin, "/identity").await;
    assert_eq!(first["state"], "ready", "{first}");
    assert_eq!(first["id"], orders().to_string(), "{first}");
    let (chain, key) = issue(&pki, &orders(), 2 * DAY);
    write_pair(&dir_a, &chain, &key);
    let deadline = Instant::now() + Duration::from_secs(10);
    let renewed = loop {
        let now = json(&client, a_admin, "/identity").await;
        if now["notAfter"] != first["notAfter"] {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the renewal was never loaded: {now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(renewed["state"], "ready", "{renewed}");
    assert_eq!(
        get(&client, a_listen, "/hello", &[]).await.status.as_u16(),
        200
    );

    // Files that cannot work are refused and the last good certificate stays: an unreadable
    // certificate, then a valid one for another identity.
    std::fs::write(dir_a.join("tls.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let other = WorkloadId::new("cluster.local", "shop", "billing-peers").unwrap();
    let (chain, key) = issue(&pki, &other, DAY);
    write_pair(&dir_a, &chain, &key);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let kept = json(&client, a_admin, "/identity").await;
    assert_eq!(
        (&kept["state"], &kept["id"], &kept["notAfter"]),
        (&renewed["state"], &renewed["id"], &renewed["notAfter"]),
        "{kept}"
    );
    assert_eq!(
        get(&client, a_listen, "/hello", &[]).await.status.as_u16(),
        200
    );
    assert_eq!(backend.count(), 4);
    for dir in [dir_a, dir_b] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Every way the files can be wrong stops the start with exit code 2 and a message naming the
/// file and the problem (and no key material).
#[test]
fn identity_files_that_cannot_work_stop_the_start_with_the_reason() {
    let run = |dir: &Path, extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_datastream-sidecar"))
            .args(extra)
            .args([
                "--endpoints",
                "127.0.0.1:1",
                "--identity-dir",
                dir.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let pki = pki("cluster.local");

    let missing = std::env::temp_dir().join("ds-identity-files-nowhere");
    let (code, err) = run(&missing, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("ca.crt") && err.contains("No such file"),
        "{err}"
    );

    // A key that is not the certificate's.
    let dir = identity_dir("wrong-key", &pki, &orders(), DAY);
    let (_, other_key) = issue(&pki, &orders(), DAY);
    std::fs::write(dir.join("tls.key"), &other_key).unwrap();
    let (code, err) = run(&dir, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("another key"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");

    // A certificate from an authority `ca.crt` does not hold.
    let dir = identity_dir("foreign", &pki, &orders(), DAY);
    std::fs::write(dir.join("ca.crt"), &self::pki("cluster.local").anchor.cert).unwrap();
    let (code, err) = run(&dir, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("does not prove"), "{err}");

    // Kubernetes mode certifies through the operator's signer, not files.
    let (code, err) = run(&dir, &["kubernetes"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("local mode"), "{err}");
    for name in ["wrong-key", "foreign"] {
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("ds-identity-files-{name}-{}", std::process::id())),
        );
    }
}
