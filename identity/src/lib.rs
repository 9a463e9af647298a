//! Workload identity for DataStream sidecars.
//!
//! Every sidecar proves who it is with an X.509 certificate naming a SPIFFE ID derived from its
//! Kubernetes ServiceAccount ([`WorkloadId`]). This crate holds the pieces that do not depend on how a
//! certificate travels:
//!
//! - [`authority`]: the trust anchor (a root CA) and the issuer (an intermediate CA signed by it),
//!   generated or loaded from PEM, and the signing of a sidecar's certificate signing request with
//!   every field the CSR could carry overwritten by the issuer's policy.
//! - [`credentials`]: the sidecar's side: a private key generated in memory, its CSR, and the
//!   issued chain with the time to renew it.
//! - [`verify`]: the rustls verifiers that check a peer's chain against the trust anchors and
//!   then its identity against the one expected, with a typed [`verify::Refusal`] reason for each
//!   way a peer can fail (for the refusal metric).
//! - [`tls`]: the rustls client and server configurations built from those.
//! - `kubernetes` (feature `kubernetes`): requesting a certificate through the Kubernetes
//!   CertificateSigningRequest API with the pod's own ServiceAccount.
//! - [`rotation`]: keeping the certificate fresh (70 % renewal, retries with backoff, the current
//!   certificate kept until it expires), published on a watch channel.
//! - [`accept`]: accepting a peer connection: TLS only, refusing plaintext and foreign peers with
//!   the reason.
//!
//! One crypto provider for the whole workspace: `ring`, as kube's TLS client uses it.

pub mod accept;
pub mod authority;
pub mod credentials;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod rotation;
pub mod spiffe;
pub mod tls;
pub mod verify;

pub use spiffe::WorkloadId;

/// The Kubernetes signer name of workload certificates (`spec.signerName` of their requests).
pub const WORKLOAD_SIGNER: &str = "datastream.dev/workload";

/// The crypto provider every TLS configuration of ours is built with.
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
