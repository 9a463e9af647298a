//! Peer verification by identity.
//!
//! rustls's built-in verifiers match DNS names only, and a workload certificate names a SPIFFE URI,
//! so both sides check in two steps, as Linkerd's proxy does: the chain against the trust anchors
//! (webpki, for the right usage: server authentication when dialing, client authentication when
//! accepting), then the SPIFFE ID of the leaf against the identities allowed. Every refusal has a
//! [`Refusal`] reason, which the listener counts.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::WorkloadId;

/// Why a peer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The peer spoke plaintext (no TLS handshake) to a TLS-only listener.
    Plaintext,
    /// The TLS handshake failed for a reason other than the peer's certificate.
    Handshake,
    /// The peer sent no certificate.
    NoCertificate,
    /// Its certificate has expired.
    Expired,
    /// Its certificate is not valid yet.
    NotYetValid,
    /// Its chain leads to no trust anchor of ours (another CA, or a self-signed certificate).
    UnknownIssuer,
    /// Its chain is signed wrongly or is malformed.
    BadCertificate,
    /// Its certificate names no SPIFFE workload ID.
    NoIdentity,
    /// Its SPIFFE ID is in another trust domain.
    WrongTrustDomain,
    /// Its SPIFFE ID is not one allowed here.
    WrongIdentity,
}

impl Refusal {
    /// Label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Plaintext => "plaintext",
            Refusal::Handshake => "handshake",
            Refusal::NoCertificate => "no_certificate",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::UnknownIssuer => "unknown_issuer",
            Refusal::BadCertificate => "bad_certificate",
            Refusal::NoIdentity => "no_identity",
            Refusal::WrongTrustDomain => "wrong_trust_domain",
            Refusal::WrongIdentity => "wrong_identity",
        }
    }

    /// The reason behind a rustls error raised by our verifiers, if it is one.
    pub fn of(error: &rustls::Error) -> Option<Refusal> {
        match error {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                other.0.downcast_ref::<RefusalError>().map(|r| r.0)
            }
            rustls::Error::NoCertificatesPresented => Some(Refusal::NoCertificate),
            _ => None,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A [`Refusal`] carried through rustls as a certificate error.
#[derive(Debug)]
struct RefusalError(Refusal);

impl std::fmt::Display for RefusalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer refused: {}", self.0)
    }
}

impl std::error::Error for RefusalError {}

fn refuse(r: Refusal) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(RefusalError(
        r,
    )))))
}

/// The SPIFFE workload ID a certificate names (its first URI subject alternative name).
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<WorkloadId, Refusal> {
    let (_, parsed) = X509Certificate::from_der(cert).map_err(|_| Refusal::BadCertificate)?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|_| Refusal::BadCertificate)?
        .ok_or(Refusal::NoIdentity)?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        })
        .ok_or(Refusal::NoIdentity)?
        .parse()
        .map_err(|_| Refusal::NoIdentity)
}

/// The trust anchors peers are verified against (during a rotation, old and new).
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    anchors: Arc<Vec<rustls::pki_types::TrustAnchor<'static>>>,
    subjects: Arc<Vec<DistinguishedName>>,
}

impl TrustAnchors {
    /// Anchors from DER certificates.
    pub fn new(certs: &[CertificateDer<'_>]) -> Result<Self, rustls::Error> {
        let mut anchors = Vec::new();
        let mut subjects = Vec::new();
        for cert in certs {
            let anchor = webpki::anchor_from_trusted_cert(cert)
                .map_err(|e| rustls::Error::General(format!("trust anchor: {e}")))?
                .to_owned();
            // TLS carries each acceptable CA as a whole DER `Name`; webpki keeps only the
            // SEQUENCE's contents. Without the outer tag, OpenSSL clients (nginx, HAProxy, curl)
            // abort the handshake on the certificate request ("asn1 encoding routines::wrong
            // tag"); rustls clients do not parse the list.
            subjects.push(DistinguishedName::in_sequence(anchor.subject.as_ref()));
            anchors.push(anchor);
        }
        if anchors.is_empty() {
            return Err(rustls::Error::General("no trust anchor".into()));
        }
        Ok(Self {
            anchors: Arc::new(anchors),
            subjects: Arc::new(subjects),
        })
    }

    /// Anchors from a PEM bundle (one or more `CERTIFICATE` blocks, as in a `ca.crt`).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        use rustls_pki_types::pem::PemObject;
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("trust anchors: not a PEM certificate bundle ({e})"))?;
        Self::new(&certs).map_err(|e| e.to_string())
    }

    /// How many anchors there are (two during a rotation).
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// Whether there is no anchor (never true for a constructed value).
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Checks that `chain` (leaf first) proves `id` to peers that trust these anchors, for both
    /// the dialing and the accepting side, at `now`: what a sidecar checks of its own certificate
    /// before calling itself ready, so that a chain from a foreign issuer shows at once and not as
    /// refused connections.
    pub fn check_own(
        &self,
        chain: &[CertificateDer<'_>],
        id: &WorkloadId,
        now: UnixTime,
    ) -> Result<(), Refusal> {
        let (leaf, intermediates) = chain.split_first().ok_or(Refusal::NoCertificate)?;
        let policy = Policy::new(self.clone(), id.trust_domain(), vec![id.clone()]);
        for usage in [
            webpki::KeyUsage::server_auth(),
            webpki::KeyUsage::client_auth(),
        ] {
            policy
                .check(leaf, intermediates, now, usage)
                .map_err(|e| Refusal::of(&e).unwrap_or(Refusal::BadCertificate))?;
        }
        Ok(())
    }
}

/// What a peer must prove: a chain to the anchors, and one of the allowed identities in the trust
/// domain.
#[derive(Debug)]
struct Policy {
    anchors: TrustAnchors,
    trust_domain: String,
    allowed: Vec<WorkloadId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Policy {
    fn new(anchors: TrustAnchors, trust_domain: &str, allowed: Vec<WorkloadId>) -> Self {
        Self {
            anchors,
            trust_domain: trust_domain.to_owned(),
            allowed,
            algorithms: crate::crypto_provider().signature_verification_algorithms,
        }
    }

    /// Checks `end_entity`'s chain for `usage` at `now`, then its identity.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<WorkloadId, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| refuse(Refusal::BadCertificate))?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.anchors.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| {
            refuse(match e {
                webpki::Error::CertExpired { .. } => Refusal::Expired,
                webpki::Error::CertNotValidYet { .. } => Refusal::NotYetValid,
                // A chain whose issuer has our issuer's name but another key (another CA that
                // chose the same names) fails on the signature: it was not issued by us either.
                webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                    Refusal::UnknownIssuer
                }
                _ => Refusal::BadCertificate,
            })
        })?;
        let id = identity_of(end_entity).map_err(refuse)?;
        if id.trust_domain() != self.trust_domain {
            return Err(refuse(Refusal::WrongTrustDomain));
        }
        if !self.allowed.contains(&id) {
            return Err(refuse(Refusal::WrongIdentity));
        }
        Ok(id)
    }
}

/// The dialing side's verifier: the peer must prove `expected`.
#[derive(Debug)]
pub struct PeerVerifier(Policy);

impl PeerVerifier {
    /// A verifier accepting only `expected` (the identity the endpoint was discovered with).
    pub fn new(anchors: TrustAnchors, expected: WorkloadId) -> Self {
        let trust_domain = expected.trust_domain().to_owned();
        Self(Policy::new(anchors, &trust_domain, vec![expected]))
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .check(
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
            )
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}

/// The accepting side's verifier: a client certificate is required and must prove one of the
/// allowed identities (the sidecars of the same DataStream).
#[derive(Debug)]
pub struct AllowedPeers(Policy);

impl AllowedPeers {
    /// Accepts clients proving one of `allowed` (all in `trust_domain`).
    pub fn new(anchors: TrustAnchors, trust_domain: &str, allowed: Vec<WorkloadId>) -> Self {
        Self(Policy::new(anchors, trust_domain, allowed))
    }
}

impl ClientCertVerifier for AllowedPeers {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.0.anchors.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .check(
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::client_auth(),
            )
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::{certificates_from_pem, generate_trust_anchor};

    /// The certificate request names each anchor as its subject, byte for byte a DER `Name`.
    #[test]
    fn acceptable_authorities_are_whole_der_names() {
        let now = time::OffsetDateTime::now_utc();
        let anchor =
            generate_trust_anchor("cluster.local", now, std::time::Duration::from_secs(86_400))
                .unwrap();
        let der = certificates_from_pem(&anchor.cert).unwrap().remove(0);
        let anchors = TrustAnchors::new(std::slice::from_ref(&der)).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(anchors.subjects[0].as_ref(), cert.subject().as_raw());
    }
}
