//! rustls configurations for sidecar-to-sidecar mTLS: TLS 1.3 only, the ring provider, the
//! sidecar's own credentials on both sides and the identity verifiers of [`crate::verify`].

use std::sync::Arc;

use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, ServerConfig};

use crate::spiffe::WorkloadId;
use crate::verify::{AllowedPeers, PeerVerifier, TrustAnchors};

/// ALPN protocols offered between sidecars: HTTP/2 where both speak it, else HTTP/1.1.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The peer listener's configuration: a client certificate proving one of `allowed` is required.
pub fn server_config(
    own: Arc<CertifiedKey>,
    anchors: TrustAnchors,
    trust_domain: &str,
    allowed: Vec<WorkloadId>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(crate::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AllowedPeers::new(anchors, trust_domain, allowed)))
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(own)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The configuration for dialing a peer that must prove `expected`.
pub fn client_config(
    own: Arc<CertifiedKey>,
    anchors: TrustAnchors,
    expected: WorkloadId,
) -> Result<ClientConfig, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(crate::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier::new(anchors, expected)))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(own)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
