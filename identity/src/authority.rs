//! The trust anchor and the issuer that signs sidecar certificates.
//!
//! The trust anchor is a self-signed root; only its certificate is distributed (to every sidecar,
//! as the roots they verify peers against). The issuer is an intermediate CA signed by the anchor:
//! its key stays with the issuing service. A certificate signing request is trusted for its
//! public key only: the issuer decides the identity (from the caller's verified ServiceAccount),
//! the validity, the key usages and the basic constraints itself.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::WorkloadId;

/// How far back a certificate's validity starts, for peers whose clocks run behind (Linkerd's
/// default allowance is 20 s).
pub const CLOCK_SKEW: Duration = Duration::from_secs(20);

/// Why the authority cannot be built or a request cannot be signed.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// Generating or encoding a certificate failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A PEM input holds no certificate or key, or more than expected.
    #[error("{0}")]
    Pem(String),
    /// The issuer is not a CA, or is not signed by any trust anchor, or has expired.
    #[error("issuer refused: {0}")]
    Issuer(String),
    /// The signing request asks for something the issuer does not grant.
    #[error("certificate signing request refused: {0}")]
    Request(String),
}

/// A CA certificate and its private key, PEM-encoded (what a Secret holds).
#[derive(Clone)]
pub struct CaPem {
    /// The certificate (`tls.crt`).
    pub cert: String,
    /// The PKCS#8 private key (`tls.key`).
    pub key: String,
}

impl std::fmt::Debug for CaPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaPem")
            .field("cert", &self.cert)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn ca_params(
    common_name: &str,
    not_before: OffsetDateTime,
    validity: Duration,
    path_len: Option<u8>,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "DataStream");
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_before + validity;
    params.serial_number = Some(random_serial());
    params
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    let _ = crate::crypto_provider().secure_random.fill(&mut bytes);
    // A positive INTEGER: clear the top bit.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Generates a trust anchor (root CA, valid `validity` from `now`) for `trust_domain`.
pub fn generate_trust_anchor(
    trust_domain: &str,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<CaPem, AuthorityError> {
    let key = KeyPair::generate()?;
    let params = ca_params(
        &format!("DataStream trust anchor {trust_domain}"),
        now - CLOCK_SKEW,
        validity,
        None,
    );
    let cert = params.self_signed(&key)?;
    Ok(CaPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Generates an issuer (intermediate CA, valid `validity` from `now`) signed by `anchor`.
pub fn generate_issuer(
    anchor: &CaPem,
    trust_domain: &str,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<CaPem, AuthorityError> {
    let anchor_key = KeyPair::from_pem(&anchor.key)?;
    let anchor_issuer = Issuer::from_ca_cert_pem(&anchor.cert, anchor_key)?;
    let key = KeyPair::generate()?;
    let params = ca_params(
        &format!("DataStream issuer {trust_domain}"),
        now - CLOCK_SKEW,
        validity,
        Some(0),
    );
    let cert = params.signed_by(&key, &anchor_issuer)?;
    Ok(CaPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Parses every certificate of a PEM bundle.
pub fn certificates_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, AuthorityError> {
    use rustls_pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| AuthorityError::Pem(format!("certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(AuthorityError::Pem(
            "no certificate in the PEM input".into(),
        ));
    }
    Ok(certs)
}

/// Parses and checks a signing request for `identity`: well signed, an ECDSA P-256 key, and exactly
/// `identity` as its only subject alternative name. An approver calls this before approving; the
/// issuer calls it again before signing.
pub fn check_request(
    csr: &[u8],
    identity: &WorkloadId,
) -> Result<CertificateSigningRequestParams, AuthorityError> {
    let request =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))
            .map_err(|e| AuthorityError::Request(e.to_string()))?;
    // rcgen names the algorithm after the request's signature; the curve is in the key itself.
    let p256_key = x509_parser::certification_request::X509CertificationRequest::from_der(csr)
        .ok()
        .is_some_and(|(_, parsed)| {
            let spki = &parsed.certification_request_info.subject_pki;
            spki.algorithm.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
                && spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .is_some_and(|curve| curve == x509_parser::oid_registry::OID_EC_P256)
        });
    if request.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 || !p256_key {
        return Err(AuthorityError::Request(
            "only ECDSA P-256 keys are accepted".into(),
        ));
    }
    let wanted = identity.to_string();
    let names: Vec<String> = request
        .params
        .subject_alt_names
        .iter()
        .map(|san| match san {
            SanType::URI(uri) => uri.as_str().to_owned(),
            other => format!("{other:?}"),
        })
        .collect();
    if names != [wanted.clone()] {
        return Err(AuthorityError::Request(format!(
            "the request must name exactly {wanted}; it names {names:?}"
        )));
    }
    Ok(request)
}

/// Parses a PEM `CERTIFICATE REQUEST` (what `spec.request` of a Kubernetes CSR holds) to DER.
pub fn request_from_pem(pem: &[u8]) -> Result<Vec<u8>, AuthorityError> {
    use rustls_pki_types::pem::PemObject;
    CertificateSigningRequestDer::from_pem_slice(pem)
        .map(|der| der.as_ref().to_vec())
        .map_err(|e| {
            AuthorityError::Request(format!(
                "spec.request is not a PEM CERTIFICATE REQUEST: {e}"
            ))
        })
}

/// A certificate issued to a workload.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The leaf, then the issuer (the trust anchor is not sent: peers have it).
    pub chain: Vec<CertificateDer<'static>>,
    /// End of the leaf's validity.
    pub not_after: OffsetDateTime,
}

impl Issued {
    /// The chain as PEM (what a Kubernetes CSR's `status.certificate` holds).
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.as_ref().to_vec())))
            .collect()
    }
}

/// The issuing side: the issuer's key and certificate, checked against the trust anchors.
pub struct Authority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    issuer_der: CertificateDer<'static>,
    issuer_not_after: OffsetDateTime,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("issuer_not_after", &self.issuer_not_after)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the issuer and checks it as Linkerd's identity service does: a CA, signed by one of
    /// `anchors_pem`'s certificates, valid at `now`.
    pub fn new(
        trust_domain: &str,
        issuer: &CaPem,
        anchors_pem: &str,
        now: OffsetDateTime,
    ) -> Result<Self, AuthorityError> {
        let issuer_der = certificates_from_pem(&issuer.cert)?.remove(0);
        let anchors = certificates_from_pem(anchors_pem)?;
        let (_, parsed) = X509Certificate::from_der(&issuer_der)
            .map_err(|e| AuthorityError::Issuer(format!("unparsable certificate: {e}")))?;
        if !parsed.is_ca() {
            return Err(AuthorityError::Issuer(
                "the issuer certificate is not a CA".into(),
            ));
        }
        let validity = parsed.validity();
        let not_after = validity.not_after.to_datetime();
        if !validity.is_valid_at(x509_parser::time::ASN1Time::from(now)) {
            return Err(AuthorityError::Issuer(format!(
                "the issuer certificate is not valid now (valid {} to {})",
                validity.not_before, validity.not_after
            )));
        }
        let signed_by_an_anchor = anchors.iter().any(|a| {
            X509Certificate::from_der(a)
                .ok()
                .is_some_and(|(_, anchor)| {
                    parsed.verify_signature(Some(anchor.public_key())).is_ok()
                })
        });
        if !signed_by_an_anchor {
            return Err(AuthorityError::Issuer(
                "the issuer certificate is not signed by any trust anchor".into(),
            ));
        }
        let key = KeyPair::from_pem(&issuer.key)?;
        if key.subject_public_key_info() != parsed.public_key().raw {
            return Err(AuthorityError::Issuer(
                "the issuer key does not match its certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&issuer_der, key)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer,
            issuer_der,
            issuer_not_after: not_after,
        })
    }

    /// The trust domain identities are issued under.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// End of the issuer's own validity (no leaf outlives it).
    pub fn issuer_not_after(&self) -> OffsetDateTime {
        self.issuer_not_after
    }

    /// Signs `csr` for `identity` (which the caller established, e.g. by a TokenReview of the
    /// requester's ServiceAccount token). The request must be well signed, use an ECDSA P-256 key
    /// and name exactly `identity` as its only subject alternative name; the certificate gets that
    /// name, no CA rights, digital-signature key usage, server and client authentication, and a
    /// validity from `now` minus [`CLOCK_SKEW`] to `now + lifetime`, clamped to the issuer's.
    pub fn sign(
        &self,
        csr: &[u8],
        identity: &WorkloadId,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, AuthorityError> {
        // Certificates carry whole seconds; so does what we report.
        let now = now.replace_nanosecond(0).unwrap_or(now);
        if identity.trust_domain() != self.trust_domain {
            return Err(AuthorityError::Request(format!(
                "identity {identity} is outside trust domain {}",
                self.trust_domain
            )));
        }
        let request = check_request(csr, identity)?;
        let not_after = (now + lifetime).min(self.issuer_not_after);
        if not_after <= now {
            return Err(AuthorityError::Issuer("the issuer has expired".into()));
        }
        let mut params = CertificateParams::default();
        // The identity is the URI SAN alone (an X.509-SVID); rcgen's default subject would name
        // every workload "rcgen self signed cert". With an empty subject the SAN is critical.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().as_str().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&request.public_key, &self.issuer)?;
        Ok(Issued {
            chain: vec![leaf.der().clone(), self.issuer_der.clone()],
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::PendingKey;

    const DAY: Duration = Duration::from_secs(86_400);

    pub(crate) fn authority(now: OffsetDateTime) -> (CaPem, Authority) {
        let anchor = generate_trust_anchor("cluster.local", now, 3650 * DAY).unwrap();
        let issuer = generate_issuer(&anchor, "cluster.local", now, 365 * DAY).unwrap();
        let authority = Authority::new("cluster.local", &issuer, &anchor.cert, now).unwrap();
        (anchor, authority)
    }

    #[test]
    fn signs_only_what_the_request_may_ask_for() {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let (_, authority) = authority(now);
        let id = WorkloadId::new("cluster.local", "shop", "catalog").unwrap();
        let key = PendingKey::generate(&id).unwrap();
        let issued = authority
            .sign(&key.csr_der().unwrap(), &id, DAY, now)
            .unwrap();
        assert_eq!(issued.chain.len(), 2);
        let (_, leaf) = X509Certificate::from_der(&issued.chain[0]).unwrap();
        assert!(!leaf.is_ca());
        assert_eq!(
            leaf.subject().iter_attributes().count(),
            0,
            "{}",
            leaf.subject()
        );
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert!(
            san.critical,
            "an empty subject needs a critical SAN (RFC 5280 4.2.1.6)"
        );
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert_eq!(leaf.validity().not_after.to_datetime(), now + DAY);

        // Another identity than the caller's, or a request naming another, is refused.
        let other = WorkloadId::new("cluster.local", "shop", "billing").unwrap();
        let e = authority
            .sign(&key.csr_der().unwrap(), &other, DAY, now)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("must name exactly spiffe://cluster.local/ns/shop/sa/billing"),
            "{e}"
        );
        let foreign = WorkloadId::new("evil.example", "shop", "catalog").unwrap();
        assert!(
            authority
                .sign(&key.csr_der().unwrap(), &foreign, DAY, now)
                .is_err()
        );
        // A P-384 key signed with SHA-256 claims the P-256 algorithm; the key's curve says no.
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.to_string().as_str().try_into().unwrap())];
        let csr384 = params.serialize_request(&p384).unwrap();
        let e = authority.sign(csr384.der(), &id, DAY, now).unwrap_err();
        assert!(e.to_string().contains("P-256"), "{e}");
        // A tampered request fails its signature check.
        let mut csr = key.csr_der().unwrap();
        let last = csr.len() - 1;
        csr[last] ^= 1;
        assert!(authority.sign(&csr, &id, DAY, now).is_err());
    }

    #[test]
    fn leaves_never_outlive_the_issuer() {
        let now = OffsetDateTime::now_utc();
        let anchor = generate_trust_anchor("cluster.local", now, 3650 * DAY).unwrap();
        let issuer = generate_issuer(&anchor, "cluster.local", now, DAY / 2).unwrap();
        let authority = Authority::new("cluster.local", &issuer, &anchor.cert, now).unwrap();
        let id = WorkloadId::new("cluster.local", "shop", "catalog").unwrap();
        let key = PendingKey::generate(&id).unwrap();
        let issued = authority
            .sign(&key.csr_der().unwrap(), &id, DAY, now)
            .unwrap();
        assert_eq!(issued.not_after, authority.issuer_not_after());
        assert!(issued.not_after < now + DAY);
    }

    #[test]
    fn an_issuer_must_be_a_ca_signed_by_an_anchor() {
        let now = OffsetDateTime::now_utc();
        let anchor = generate_trust_anchor("cluster.local", now, 3650 * DAY).unwrap();
        let other_anchor = generate_trust_anchor("cluster.local", now, 3650 * DAY).unwrap();
        let issuer = generate_issuer(&anchor, "cluster.local", now, 365 * DAY).unwrap();
        let e = Authority::new("cluster.local", &issuer, &other_anchor.cert, now).unwrap_err();
        assert!(
            e.to_string().contains("not signed by any trust anchor"),
            "{e}"
        );
        // During an anchor rotation both anchors are trusted: the bundle holds both.
        let bundle = format!("{}{}", other_anchor.cert, anchor.cert);
        Authority::new("cluster.local", &issuer, &bundle, now).unwrap();
        let later = now + 400 * DAY;
        let e = Authority::new("cluster.local", &issuer, &anchor.cert, later).unwrap_err();
        assert!(e.to_string().contains("not valid now"), "{e}");
        let mismatched = CaPem {
            cert: issuer.cert.clone(),
            key: other_anchor.key.clone(),
        };
        let e = Authority::new("cluster.local", &mismatched, &anchor.cert, now).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        assert!(!format!("{issuer:?}").contains("PRIVATE KEY"));
    }
}
