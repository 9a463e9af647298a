//! A sidecar's credentials: a private key generated in memory (it never leaves the process), the
//! signing request for its identity, and the issued chain with the time to renew it.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair, PublicKeyData, SanType};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::WorkloadId;
use crate::verify::identity_of;

/// Renewal never waits less than this after an issuance (Linkerd's `min_refresh`).
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// Renewal never waits more than this (Linkerd's `max_refresh`).
pub const MAX_REFRESH: Duration = Duration::from_secs(86_400);

/// Why credentials cannot be made or accepted.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Key generation or CSR encoding failed.
    #[error("key or request: {0}")]
    Generate(#[from] rcgen::Error),
    /// The issued chain is not for this key or identity, or is unusable.
    #[error("issued certificate refused: {0}")]
    Issued(String),
}

/// A fresh key waiting for its certificate.
pub struct PendingKey {
    id: WorkloadId,
    key: KeyPair,
}

impl std::fmt::Debug for PendingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PendingKey {
    /// Generates an ECDSA P-256 key for `id`.
    pub fn generate(id: &WorkloadId) -> Result<Self, CredentialsError> {
        Ok(Self {
            id: id.clone(),
            key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        })
    }

    /// The identity the key is for.
    pub fn id(&self) -> &WorkloadId {
        &self.id
    }

    /// A key generated elsewhere (PKCS#8 PEM), for tools and tests; sidecars use [`Self::generate`].
    pub fn with_key_pem(id: &WorkloadId, pem: &str) -> Result<Self, CredentialsError> {
        Ok(Self {
            id: id.clone(),
            key: KeyPair::from_pem(pem)?,
        })
    }

    /// The DER signing request naming the identity as its only (URI) subject alternative name.
    pub fn csr_der(&self) -> Result<Vec<u8>, CredentialsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(self.id.to_string().as_str().try_into()?)];
        Ok(params.serialize_request(&self.key)?.der().to_vec())
    }

    /// The signing request as PEM (`CERTIFICATE REQUEST`), as a Kubernetes
    /// CertificateSigningRequest's `spec.request` carries it.
    pub fn csr_pem(&self) -> Result<String, CredentialsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(self.id.to_string().as_str().try_into()?)];
        Ok(params.serialize_request(&self.key)?.pem()?)
    }

    /// Accepts the issued `chain` (leaf first) if its leaf certifies this key for this identity
    /// and is valid at `now`.
    pub fn complete(
        self,
        chain: Vec<CertificateDer<'static>>,
        now: OffsetDateTime,
    ) -> Result<Credentials, CredentialsError> {
        let refused = |why: String| CredentialsError::Issued(why);
        let leaf = chain
            .first()
            .ok_or_else(|| refused("an empty chain".into()))?;
        let (_, parsed) = X509Certificate::from_der(leaf)
            .map_err(|e| refused(format!("unparsable leaf: {e}")))?;
        if parsed.public_key().raw != self.key.subject_public_key_info().as_slice() {
            return Err(refused("the certificate is for another key".into()));
        }
        let id = identity_of(leaf).map_err(|r| refused(format!("no identity: {r}")))?;
        if id != self.id {
            return Err(refused(format!("it names {id}, not {}", self.id)));
        }
        let validity = parsed.validity();
        let (not_before, not_after) = (
            validity.not_before.to_datetime(),
            validity.not_after.to_datetime(),
        );
        if now >= not_after {
            return Err(refused(format!("it expired at {not_after}")));
        }
        Ok(Credentials {
            id,
            chain,
            key: PrivatePkcs8KeyDer::from(self.key.serialize_der()),
            not_before,
            not_after,
        })
    }
}

/// An identity's certificate chain and private key.
pub struct Credentials {
    id: WorkloadId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &self.id)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The identity they prove.
    pub fn id(&self) -> &WorkloadId {
        &self.id
    }

    /// End of the leaf's validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The chain (leaf first).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// When to ask for the next certificate: after 70 % of the time left at `now` (so failed
    /// renewals retry ever sooner), between [`MIN_REFRESH`] and [`MAX_REFRESH`] from now.
    pub fn refresh_in(&self, now: OffsetDateTime) -> Duration {
        let left = (self.not_after - now).max(time::Duration::ZERO);
        let left = Duration::try_from(left).unwrap_or_default();
        left.mul_f64(0.7).clamp(MIN_REFRESH, MAX_REFRESH)
    }

    /// The chain and a signing key for rustls, built with `provider`.
    pub fn certified_key(
        &self,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<Arc<CertifiedKey>, rustls::Error> {
        let key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(self.key.clone_key()))?;
        Ok(Arc::new(CertifiedKey::new(self.chain.clone(), key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::{Authority, generate_issuer, generate_trust_anchor};

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_chain_is_accepted_only_for_its_own_key_and_identity() {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let anchor = generate_trust_anchor("cluster.local", now, 3650 * DAY).unwrap();
        let issuer = generate_issuer(&anchor, "cluster.local", now, 365 * DAY).unwrap();
        let authority = Authority::new("cluster.local", &issuer, &anchor.cert, now).unwrap();
        let id = WorkloadId::new("cluster.local", "shop", "catalog").unwrap();

        let key = PendingKey::generate(&id).unwrap();
        let other = PendingKey::generate(&id).unwrap();
        let issued = authority
            .sign(&other.csr_der().unwrap(), &id, DAY, now)
            .unwrap();
        let e = key.complete(issued.chain, now).unwrap_err();
        assert!(e.to_string().contains("another key"), "{e}");

        let key = PendingKey::generate(&id).unwrap();
        let issued = authority
            .sign(&key.csr_der().unwrap(), &id, DAY, now)
            .unwrap();
        let creds = key.complete(issued.chain, now).unwrap();
        assert_eq!(creds.id(), &id);
        // 70 % of a day, then 70 % of what is left.
        assert_eq!(creds.refresh_in(now).as_secs(), 60_480);
        assert_eq!(
            creds
                .refresh_in(now + 20 * 3600 * time::Duration::SECOND)
                .as_secs(),
            10_080
        );
        assert_eq!(creds.refresh_in(now + 2 * DAY), MIN_REFRESH);
        assert!(creds.certified_key(&crate::crypto_provider()).is_ok());
        assert!(!format!("{creds:?}").contains("key:"), "{creds:?}");
    }
}
