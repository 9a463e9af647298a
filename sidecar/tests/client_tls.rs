//! TLS for clients on the traffic listener (`--client-tls-dir`), with the binary and a real
//! client (curl, OpenSSL): HTTP/1.1 and HTTP/2 over TLS, a plaintext request answered with a 400
//! that says why, a replaced certificate served without a restart, a bad one refused while the
//! last good one stays, and files that cannot work stopping the start.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, SanType,
};
use support::*;
use tokio::time::Instant;

/// A CA (its certificate PEM and issuer) and a leaf for 127.0.0.1 it signed (chain and key PEM).
struct Served {
    ca_pem: String,
    chain_pem: String,
    key_pem: String,
}

fn serve_cert() -> Served {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "client TLS test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    Served {
        ca_pem: ca_cert.pem(),
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ds-client-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the pair as the kubelet updates a Secret volume: each file aside, then renamed in.
fn install(dir: &Path, served: &Served) {
    for (file, content) in [("tls.key", &served.key_pem), ("tls.crt", &served.chain_pem)] {
        let aside = dir.join(format!(".{file}.new"));
        std::fs::write(&aside, content).unwrap();
        std::fs::rename(&aside, dir.join(file)).unwrap();
    }
}

/// curl to `addr` over TLS trusting `ca` only, with `extra` flags: status and protocol version
/// (`200 2`), or curl's error.
async fn curl(ca: &Path, addr: SocketAddr, extra: &[&str]) -> String {
    let (ca, extra) = (
        ca.to_owned(),
        extra.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    // curl blocks; the backend answers on this test's runtime.
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-o", "/dev/null"])
            .args(["-w", "%{http_code} %{http_version}", "--cacert"])
            .arg(ca)
            .args(extra)
            .arg(format!("https://{addr}/hello"))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    })
    .await
    .unwrap()
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn clients_speak_tls_to_the_traffic_listener_and_certificates_reload() {
    let backend = backends(1).await.remove(0);
    let tls = dir("serve");
    let first = serve_cert();
    install(&tls, &first);
    let cas = dir("cas");
    let (ca1, ca2) = (cas.join("ca1.crt"), cas.join("ca2.crt"));
    std::fs::write(&ca1, &first.ca_pem).unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let _sidecar = Proc(
        Command::new(env!("CARGO_BIN_EXE_datastream-sidecar"))
            .args([
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .args(["--endpoints", &backend.addr.to_string()])
            .arg("--client-tls-dir")
            .arg(&tls)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = h1_client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !try_get(&client, admin, "/ready", &[])
        .await
        .is_ok_and(|a| a.status == 200)
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(curl(&ca1, listen, &["--http1.1"]).await, "200 1.1");
    assert_eq!(curl(&ca1, listen, &["--http2"]).await, "200 2");
    assert_eq!(backend.count(), 2);

    // Plaintext on the TLS port: a 400 that says so, and nothing forwarded.
    let plaintext = raw(
        listen,
        b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(raw_status(&plaintext), Some(400), "{plaintext}");
    assert!(plaintext.contains("https://"), "{plaintext}");
    assert_eq!(backend.count(), 2);
    let metrics = get(&client, admin, "/metrics", &[]).await.body;
    assert_eq!(
        metric(
            &metrics,
            "datastream_sidecar_client_tls_refusals_total{reason=\"plaintext\"}"
        ),
        1,
        "{metrics}"
    );

    // A certificate from another CA, written in place, is served without a restart.
    let second = serve_cert();
    std::fs::write(&ca2, &second.ca_pem).unwrap();
    install(&tls, &second);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if curl(&ca2, listen, &[]).await == "200 2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = curl(&ca1, listen, &[]).await;
    assert!(refused.starts_with("000"), "{refused}");

    // A key that is not the certificate's is refused and counted; the last good pair stays.
    let third = serve_cert();
    std::fs::write(tls.join("tls.key"), &third.key_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get(&client, admin, "/metrics", &[]).await.body;
        if metric(
            &metrics,
            "datastream_sidecar_client_tls_reloads_total{reason=\"rejected\"}",
        ) == 1
        {
            assert_eq!(
                metric(
                    &metrics,
                    "datastream_sidecar_client_tls_reloads_total{reason=\"loaded\"}"
                ),
                1,
                "{metrics}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the bad key was never noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(curl(&ca2, listen, &["--http1.1"]).await, "200 1.1");
    for d in [tls, cas] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn client_tls_files_that_cannot_work_stop_the_start_with_the_reason() {
    let run = |dir: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_datastream-sidecar"))
            .args(["--endpoints", "127.0.0.1:1", "--client-tls-dir"])
            .arg(dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let missing = std::env::temp_dir().join("ds-client-tls-nowhere");
    let (code, err) = run(&missing);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("tls.crt") && err.contains("No such file"),
        "{err}"
    );

    let tls = dir("mismatch");
    let (one, other) = (serve_cert(), serve_cert());
    install(&tls, &one);
    std::fs::write(tls.join("tls.key"), &other.key_pem).unwrap();
    let (code, err) = run(&tls);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("client TLS"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");

    std::fs::write(tls.join("tls.crt"), "not a certificate").unwrap();
    let (code, err) = run(&tls);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no certificate"), "{err}");
    let _ = std::fs::remove_dir_all(tls);
}
