//! Mutual TLS between the sidecars of one DataStream (with a workload identity, see
//! [`crate::identity`]).
//!
//! Every sidecar of a stream runs as the stream's sidecar ServiceAccount, so "a sidecar of this
//! stream" is one identity: the peer listener accepts only TLS clients proving it, and the dialer
//! accepts only peers proving it. The rustls configurations are built from the current
//! certificate and rebuilt when a renewal publishes a new one; each new connection takes the
//! latest, and open connections keep the one they started with. The local workload hop
//! (127.0.0.1) stays plaintext: only remote endpoints get the [`PeerConnector`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use datastream_http::io::Duplex;
use datastream_http::pool::Connector;
use datastream_http::server::{Handshake, Handshaken};
use datastream_identity::WorkloadId;
use datastream_identity::accept::accept_peer;
use datastream_identity::rotation::IdentityState;
use datastream_identity::verify::{Refusal, TrustAnchors};
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::identity::IdentityHandle;
use crate::metrics::{IdentityMetrics, RefusalLabels};

/// Longest a peer's TLS handshake may take on the peer listener.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The rustls configurations of the current certificate.
struct Configs {
    /// The certificate they were built from (compared by pointer).
    source: Arc<datastream_identity::credentials::Credentials>,
    server: Arc<ServerConfig>,
    client_h1: Arc<ClientConfig>,
    client_h2: Arc<ClientConfig>,
}

/// The sidecar's mutual TLS: the configurations for its current certificate, and the refusal
/// counters.
pub struct PeerTls {
    identity: IdentityHandle,
    anchors: TrustAnchors,
    metrics: Arc<IdentityMetrics>,
    current: Mutex<Option<Arc<Configs>>>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("id", self.identity.id())
            .finish_non_exhaustive()
    }
}

/// Why a TLS configuration is not available.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// No valid certificate yet (or it expired).
    #[error("no workload certificate: {0}")]
    NoCertificate(String),
    /// The configuration could not be built from it.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

impl PeerTls {
    /// Mutual TLS for `identity`'s certificates, peers verified against `anchors`.
    pub fn new(
        identity: IdentityHandle,
        anchors: TrustAnchors,
        metrics: Arc<IdentityMetrics>,
    ) -> Self {
        Self {
            identity,
            anchors,
            metrics,
            current: Mutex::new(None),
        }
    }

    /// The identity every peer of this stream proves (the sidecar's own).
    pub fn peer_identity(&self) -> &WorkloadId {
        self.identity.id()
    }

    fn configs(&self) -> Result<Arc<Configs>, NotReady> {
        let creds = match self.identity.state() {
            IdentityState::Ready(creds) => creds,
            IdentityState::Pending { reason } => return Err(NotReady::NoCertificate(reason)),
        };
        let mut current = self.current.lock();
        if let Some(configs) = current.as_ref()
            && Arc::ptr_eq(&configs.source, &creds)
        {
            return Ok(Arc::clone(configs));
        }
        let provider = datastream_identity::crypto_provider();
        let key = creds.certified_key(&provider)?;
        let id = self.identity.id().clone();
        let server = datastream_identity::tls::server_config(
            Arc::clone(&key),
            self.anchors.clone(),
            id.trust_domain(),
            vec![id.clone()],
        )?;
        let client = |alpn: &[u8]| -> Result<Arc<ClientConfig>, rustls::Error> {
            let mut config = datastream_identity::tls::client_config(
                Arc::clone(&key),
                self.anchors.clone(),
                id.clone(),
            )?;
            // One protocol per connection: the pool knows which it will speak.
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(config))
        };
        let configs = Arc::new(Configs {
            server: Arc::new(server),
            client_h1: client(b"http/1.1")?,
            client_h2: client(b"h2")?,
            source: creds,
        });
        *current = Some(Arc::clone(&configs));
        Ok(configs)
    }

    fn refused(&self, side: &'static str, reason: &'static str) {
        self.metrics
            .refusals
            .get_or_create(&RefusalLabels { side, reason })
            .inc();
    }
}

/// The peer listener's handshake: TLS only, from a sidecar of the same stream.
#[derive(Debug, Clone)]
pub struct PeerAcceptor(pub Arc<PeerTls>);

impl Handshake for PeerAcceptor {
    fn handshake(
        &self,
        tcp: TcpStream,
        client: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = Option<Handshaken>> + Send>> {
        let tls = Arc::clone(&self.0);
        Box::pin(async move {
            let configs = match tls.configs() {
                Ok(c) => c,
                Err(error) => {
                    tls.refused("accept", "no_local_certificate");
                    tracing::debug!(%client, %error, "peer connection refused: no certificate of our own");
                    return None;
                }
            };
            let acceptor = TlsAcceptor::from(Arc::clone(&configs.server));
            let accepted =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_peer(&acceptor, tcp)).await;
            match accepted {
                Ok(Ok(peer)) => Some(Handshaken {
                    io: Box::new(peer.stream) as Box<dyn Duplex>,
                    peer_identity: Some(peer.identity.to_string().into()),
                }),
                Ok(Err(refusal)) => {
                    tls.refused("accept", refusal.as_str());
                    tracing::debug!(%client, %refusal, "peer connection refused");
                    None
                }
                Err(_) => {
                    tls.refused("accept", "handshake_timeout");
                    tracing::debug!(%client, "peer connection refused: handshake timed out");
                    None
                }
            }
        })
    }
}

/// Dials peer sidecars with TLS, accepting only a peer that proves the stream's identity.
#[derive(Debug, Clone)]
pub struct PeerConnector(pub Arc<PeerTls>);

impl Connector for PeerConnector {
    fn connect(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        h2: bool,
    ) -> datastream_http::pool::Connecting {
        let tls = Arc::clone(&self.0);
        Box::pin(async move {
            let configs = tls.configs().map_err(std::io::Error::other)?;
            let config = if h2 {
                &configs.client_h2
            } else {
                &configs.client_h1
            };
            // The verifier checks the SPIFFE identity, not a name; an IP as the server name
            // sends no SNI.
            let name = ServerName::IpAddress(addr.ip().into());
            match TlsConnector::from(Arc::clone(config))
                .connect(name, tcp)
                .await
            {
                Ok(stream) => Ok(Box::new(stream) as Box<dyn Duplex>),
                Err(error) => {
                    let refusal = error
                        .get_ref()
                        .and_then(|e| e.downcast_ref::<rustls::Error>())
                        .and_then(Refusal::of);
                    tls.refused("dial", refusal.map_or("handshake", Refusal::as_str));
                    tracing::debug!(%addr, %error, "peer TLS failed");
                    Err(error)
                }
            }
        })
    }
}
