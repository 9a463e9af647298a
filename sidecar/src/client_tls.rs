//! Optional TLS for clients on the traffic listener (`--client-tls-dir`): a server certificate
//! and key from a directory in the layout of a `kubernetes.io/tls` Secret (`tls.crt`, the chain;
//! `tls.key`, the key in PKCS#8, SEC1 or PKCS#1 PEM), as the operator mounts the Secret a
//! DataStream names in `spec.sidecar.clientTls`.
//!
//! The files are checked at start (the process exits with the reason) and re-read every second
//! when their bytes change (the kubelet swaps a Secret volume's files atomically): a valid pair
//! serves new connections, a bad one is logged and counted, and the last good pair stays. Open
//! connections keep the configuration they started with. A plaintext request on the TLS port
//! gets a 400 that says so (nginx does the same) instead of a reset. TLS 1.2 and 1.3, ALPN `h2`
//! then `http/1.1`; clients are not asked for certificates.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use datastream_http::io::Duplex;
use datastream_http::server::{Handshake, Handshaken};
use datastream_identity::accept::TLS_HANDSHAKE_RECORD;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The certificate chain file.
pub const CERTIFICATE_FILE: &str = "tls.crt";
/// The private key file.
pub const KEY_FILE: &str = "tls.key";
/// Longest a client's TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The answer to a plaintext request on the TLS port.
const PLAINTEXT_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 51\r\nconnection: close\r\nx-datastream-error: tls-required\r\n\r\nthis port speaks TLS: send the request to https://\n";

/// Labels of the client TLS counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `plaintext`, `handshake` or `handshake_timeout` for refusals; `loaded` or `rejected` for
    /// reloads.
    pub reason: &'static str,
}

/// The traffic listener's TLS metrics (zero without client TLS).
#[derive(Debug, Default)]
pub struct ClientTlsMetrics {
    /// Client connections that did not complete a TLS handshake, by reason.
    pub refusals: Family<ReasonLabels, Counter>,
    /// Certificate reloads, by outcome.
    pub reloads: Family<ReasonLabels, Counter>,
    /// The serving certificate's `notAfter`, in Unix seconds.
    pub certificate_expiry: Gauge,
}

/// A checked certificate and key: the rustls configuration serving them and the leaf's expiry.
struct Loaded {
    config: Arc<ServerConfig>,
    not_after: i64,
}

/// The traffic listener's TLS: the current configuration and where it comes from.
pub struct ClientTls {
    dir: PathBuf,
    current: Mutex<Arc<ServerConfig>>,
    metrics: Arc<ClientTlsMetrics>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads and checks `dir`; the error names the file and the problem (never key material).
    pub fn load(dir: &Path, metrics: Arc<ClientTlsMetrics>) -> Result<Self, String> {
        let loaded = load(dir)?;
        metrics.certificate_expiry.set(loaded.not_after);
        Ok(Self {
            dir: dir.to_owned(),
            current: Mutex::new(loaded.config),
            metrics,
        })
    }

    /// The directory the certificate is read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.lock())
    }

    fn refused(&self, reason: &'static str) {
        self.metrics
            .refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Re-reads the files every `interval` when their bytes change, until `close` turns true.
    pub async fn watch(self: Arc<Self>, interval: Duration, mut close: watch::Receiver<bool>) {
        let mut seen = fingerprint(&self.dir);
        loop {
            tokio::select! {
                _ = close.wait_for(|c| *c) => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let latest = fingerprint(&self.dir);
            if latest == seen {
                continue;
            }
            seen = latest;
            match load(&self.dir) {
                Ok(loaded) => {
                    *self.current.lock() = loaded.config;
                    self.metrics.certificate_expiry.set(loaded.not_after);
                    self.metrics
                        .reloads
                        .get_or_create(&ReasonLabels { reason: "loaded" })
                        .inc();
                    tracing::info!(dir = %self.dir.display(), not_after = loaded.not_after, "client TLS certificate reloaded");
                }
                Err(error) => {
                    self.metrics
                        .reloads
                        .get_or_create(&ReasonLabels { reason: "rejected" })
                        .inc();
                    tracing::warn!(%error, "client TLS certificate refused; the last good one stays");
                }
            }
        }
    }
}

fn load(dir: &Path) -> Result<Loaded, String> {
    let cert_path = dir.join(CERTIFICATE_FILE);
    let key_path = dir.join(KEY_FILE);
    let chain_pem =
        std::fs::read(&cert_path).map_err(|e| format!("{}: {e}", cert_path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain ({e})", cert_path.display()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{}: no certificate in it", cert_path.display()))?;
    let (_, parsed) = X509Certificate::from_der(leaf)
        .map_err(|e| format!("{}: unparsable certificate ({e})", cert_path.display()))?;
    let not_after = parsed.validity().not_after.timestamp();
    let key_pem = std::fs::read(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
    // The parser's error says what it found, never the key's bytes.
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: not a PEM private key ({e})", key_path.display()))?;
    let mut config = ServerConfig::builder_with_provider(datastream_identity::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} and {KEY_FILE}: {e}", cert_path.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        not_after,
    })
}

/// The bytes that decide whether to reload (a Secret update may keep modification times).
fn fingerprint(dir: &Path) -> Option<(Vec<u8>, Vec<u8>)> {
    Some((
        std::fs::read(dir.join(CERTIFICATE_FILE)).ok()?,
        std::fs::read(dir.join(KEY_FILE)).ok()?,
    ))
}

/// The traffic listener's handshake: TLS with the current certificate; a plaintext request gets
/// a 400 saying the port speaks TLS.
#[derive(Debug, Clone)]
pub struct ClientTlsAcceptor(pub Arc<ClientTls>);

impl Handshake for ClientTlsAcceptor {
    fn handshake(
        &self,
        tcp: TcpStream,
        client: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = Option<Handshaken>> + Send>> {
        let tls = Arc::clone(&self.0);
        Box::pin(async move {
            let handshake = async {
                let mut first = [0u8; 1];
                match tcp.peek(&mut first).await {
                    Ok(1) if first[0] == TLS_HANDSHAKE_RECORD => {}
                    Ok(1) => return Err(("plaintext", Some(tcp))),
                    _ => return Err(("handshake", None)),
                }
                TlsAcceptor::from(tls.config())
                    .accept(tcp)
                    .await
                    .map_err(|e| {
                        tracing::debug!(%client, error = %e, "client TLS handshake failed");
                        ("handshake", None)
                    })
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(stream)) => Some(Handshaken {
                    io: Box::new(stream) as Box<dyn Duplex>,
                    peer_identity: None,
                }),
                Ok(Err((reason, plaintext))) => {
                    tls.refused(reason);
                    if let Some(mut tcp) = plaintext {
                        // Best effort: the client may already be gone.
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            let _ = tcp.write_all(PLAINTEXT_ANSWER).await;
                            let _ = tcp.shutdown().await;
                        })
                        .await;
                    }
                    None
                }
                Err(_) => {
                    tls.refused("handshake_timeout");
                    None
                }
            }
        })
    }
}
