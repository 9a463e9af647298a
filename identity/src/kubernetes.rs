//! Requesting a workload certificate through the Kubernetes CertificateSigningRequest API (the
//! sidecar's side of `operator/src/signer.rs`): the request is made with the pod's own
//! ServiceAccount credentials, so the apiserver records who asked, and the certificate arrives in
//! the object's status once the signer approved and signed it.

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{ObjectMeta, PostParams};
use rustls_pki_types::CertificateDer;

use crate::authority::certificates_from_pem;
use crate::credentials::{CredentialsError, PendingKey};

/// Why no certificate came back.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The key or the request could not be made.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The API refused a call.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The signer denied the request (or it failed), with the condition's reason and message.
    #[error("certificate request {name} {kind}: {reason}: {message}")]
    Refused {
        /// The CSR's name.
        name: String,
        /// `Denied` or `Failed`.
        kind: String,
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// No answer in time (the signer is down or slow); the request is withdrawn.
    #[error("certificate request {name} not signed within {waited:?}")]
    Timeout {
        /// The CSR's name.
        name: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The status carries something that is not a certificate chain.
    #[error("certificate request {name}: unusable certificate: {why}")]
    Unusable {
        /// The CSR's name.
        name: String,
        /// What is wrong.
        why: String,
    },
}

/// Creates a CSR for `key` (named after `name_prefix`) asking for `lifetime`, and waits up to
/// `wait` for the signed chain.
pub async fn request_certificate(
    client: kube::Client,
    key: &PendingKey,
    name_prefix: &str,
    lifetime: Duration,
    wait: Duration,
) -> Result<Vec<CertificateDer<'static>>, RequestError> {
    let api: kube::Api<CertificateSigningRequest> = kube::Api::all(client);
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name_prefix}-")),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            signer_name: crate::WORKLOAD_SIGNER.to_owned(),
            request: ByteString(key.csr_pem()?.into_bytes()),
            usages: Some(vec![
                "digital signature".into(),
                "server auth".into(),
                "client auth".into(),
            ]),
            // The API's minimum is 10 minutes.
            expiration_seconds: Some(
                i32::try_from(lifetime.as_secs().max(600)).unwrap_or(i32::MAX),
            ),
            ..Default::default()
        },
        status: None,
    };
    let created = api.create(&PostParams::default(), &csr).await?;
    let name = created.metadata.name.clone().unwrap_or_default();
    // Polled with `get`: a watch would need `list` and `watch` on every CSR of the cluster, and
    // the sidecars' RBAC grants only `create` and `get`.
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(100);
    loop {
        match api.get(&name).await {
            Ok(csr) => {
                if let Some(result) = outcome_of(&name, &csr) {
                    return result;
                }
            }
            Err(e) => {
                tracing::debug!(csr = %name, error = %e, "reading the request failed; retrying")
            }
        }
        if tokio::time::Instant::now() + pause > deadline {
            // Each retry makes a new request: do not leave this one behind (best effort; the
            // controller-manager's cleaner removes pending requests after a day anyway).
            let _ = api.delete(&name, &Default::default()).await;
            return Err(RequestError::Timeout { name, waited: wait });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// The result a CSR's status gives, if it gives one yet.
fn outcome_of(
    name: &str,
    csr: &CertificateSigningRequest,
) -> Option<Result<Vec<CertificateDer<'static>>, RequestError>> {
    let status = csr.status.as_ref()?;
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
    {
        return Some(Err(RequestError::Refused {
            name: name.to_owned(),
            kind: c.type_.clone(),
            reason: c.reason.clone().unwrap_or_default(),
            message: c.message.clone().unwrap_or_default(),
        }));
    }
    let pem = status.certificate.as_ref()?;
    Some(
        certificates_from_pem(&String::from_utf8_lossy(&pem.0)).map_err(|e| {
            RequestError::Unusable {
                name: name.to_owned(),
                why: e.to_string(),
            }
        }),
    )
}

/// The [`crate::rotation::Certifier`] of a sidecar: each key is certified through a CSR made with
/// the sidecar's own client.
#[derive(Clone)]
pub struct CsrCertifier {
    /// The sidecar's client (its ServiceAccount).
    pub client: kube::Client,
    /// CSR name prefix (the pod's name, so that an operator sees whose request it is).
    pub name_prefix: String,
    /// Lifetime asked for.
    pub lifetime: Duration,
    /// How long one request may wait for the signer.
    pub wait: Duration,
}

impl crate::rotation::Certifier for CsrCertifier {
    async fn certify(&self, key: &PendingKey) -> Result<Vec<CertificateDer<'static>>, String> {
        request_certificate(
            self.client.clone(),
            key,
            &self.name_prefix,
            self.lifetime,
            self.wait,
        )
        .await
        .map_err(|e| e.to_string())
    }
}
