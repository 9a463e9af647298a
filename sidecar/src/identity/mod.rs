//! The sidecar's workload identity. In Kubernetes mode, when the operator signs certificates: a
//! key generated in this process, certified through a CertificateSigningRequest made with the
//! pod's own ServiceAccount, checked against the trust anchors the operator put in the pod spec,
//! and renewed before it expires (see `datastream_identity::rotation`). `/ready` stays false, with
//! the reason, until the first certificate arrives; the certificate's expiry is a metric. In local
//! mode, from files a certificate manager keeps current ([`files`]).

pub mod files;

use std::sync::Arc;
use std::time::Duration;

use datastream_identity::kubernetes::CsrCertifier;
use datastream_identity::rotation::{self, Certifier, IdentityState, SystemClock};
use datastream_identity::verify::TrustAnchors;
use datastream_identity::{WorkloadId, credentials::PendingKey};
use rustls::pki_types::{CertificateDer, UnixTime};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Default certificate lifetime (Linkerd's and Istio's: 24 hours).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(86_400);
/// How long one request waits for the signer before it is withdrawn and retried.
pub const REQUEST_WAIT: Duration = Duration::from_secs(30);

/// What the sidecar needs to get and check its certificate.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// The identity to prove: the pod's ServiceAccount's SPIFFE ID.
    pub id: WorkloadId,
    /// The anchors peers verify against (from the pod spec).
    pub anchors: TrustAnchors,
    /// Lifetime to ask for.
    pub lifetime: Duration,
}

/// The sidecar's view of its identity: what `/ready`, `/identity` and the metrics read.
#[derive(Debug, Clone)]
pub struct IdentityHandle {
    id: WorkloadId,
    anchors: usize,
    states: watch::Receiver<IdentityState>,
}

impl IdentityHandle {
    /// A handle on `states`, published by a rotation loop (or fixed, when embedding the sidecar
    /// with certificates from elsewhere); `anchors` is how many trust anchors peers are verified
    /// against.
    pub fn new(id: WorkloadId, anchors: usize, states: watch::Receiver<IdentityState>) -> Self {
        Self {
            id,
            anchors,
            states,
        }
    }

    /// The identity this sidecar proves.
    pub fn id(&self) -> &WorkloadId {
        &self.id
    }

    /// The current state.
    pub fn state(&self) -> IdentityState {
        self.states.borrow().clone()
    }

    /// Why the sidecar cannot prove its identity now, or `None` when it can.
    pub fn not_ready_reason(&self) -> Option<String> {
        match &*self.states.borrow() {
            IdentityState::Ready(_) => None,
            IdentityState::Pending { reason } => Some(reason.clone()),
        }
    }

    /// The `/identity` document.
    pub fn to_json(&self) -> Value {
        let state = self.states.borrow();
        match &*state {
            IdentityState::Ready(creds) => json!({
                "id": self.id.to_string(),
                "state": "ready",
                "notAfter": creds.not_after().unix_timestamp(),
                "chainLength": creds.chain().len(),
                "trustAnchors": self.anchors,
            }),
            IdentityState::Pending { reason } => json!({
                "id": self.id.to_string(),
                "state": "pending",
                "reason": reason,
                "trustAnchors": self.anchors,
            }),
        }
    }

    /// Resolves when the state next changes (`false` once the rotation loop has ended).
    pub async fn changed(&mut self) -> bool {
        self.states.changed().await.is_ok()
    }
}

/// A certifier whose chains must also pass the sidecar's own check against the anchors: a
/// certificate from an issuer the peers do not trust is treated as no certificate, so the pod
/// stays not ready with that reason instead of failing every handshake.
struct Anchored<C> {
    inner: C,
    anchors: TrustAnchors,
}

impl<C: Certifier> Certifier for Anchored<C> {
    async fn certify(&self, key: &PendingKey) -> Result<Vec<CertificateDer<'static>>, String> {
        let chain = self.inner.certify(key).await?;
        self.anchors
            .check_own(&chain, key.id(), UnixTime::now())
            .map_err(|refusal| {
                format!(
                    "the issued certificate does not prove {} to peers trusting the pod's {} trust anchor(s): {refusal}",
                    key.id(),
                    self.anchors.len()
                )
            })?;
        Ok(chain)
    }
}

/// Starts the rotation loop with the sidecar's own client; it ends when `close` turns true.
/// Every state change updates `metrics`' identity gauges.
pub fn start(
    settings: IdentitySettings,
    client: kube::Client,
    pod_name: &str,
    metrics: &crate::metrics::Metrics,
    mut close: watch::Receiver<bool>,
) -> IdentityHandle {
    let (tx, rx) = watch::channel(IdentityState::Pending {
        reason: format!("requesting a certificate for {}", settings.id),
    });
    let certifier = Anchored {
        inner: CsrCertifier {
            client,
            name_prefix: pod_name.to_owned(),
            lifetime: settings.lifetime,
            wait: REQUEST_WAIT,
        },
        anchors: settings.anchors.clone(),
    };
    let id = settings.id.clone();
    tokio::spawn(rotation::run(
        id.clone(),
        certifier,
        SystemClock,
        tx,
        async move {
            let _ = close.wait_for(|c| *c).await;
        },
    ));
    let handle = IdentityHandle::new(id, settings.anchors.len(), rx);
    tokio::spawn(export_metrics(handle.clone(), metrics.identity.clone()));
    handle
}

/// Keeps the identity gauges in step with the state.
async fn export_metrics(mut handle: IdentityHandle, gauges: Arc<crate::metrics::IdentityMetrics>) {
    let mut last: Option<Arc<datastream_identity::credentials::Credentials>> = None;
    loop {
        match handle.state() {
            IdentityState::Ready(creds) => {
                if !last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &creds)) {
                    gauges.certificates.inc();
                    last = Some(Arc::clone(&creds));
                }
                gauges.ready.set(1);
                gauges
                    .certificate_expiry
                    .set(creds.not_after().unix_timestamp());
            }
            IdentityState::Pending { .. } => {
                gauges.ready.set(0);
            }
        }
        if !handle.changed().await {
            return;
        }
    }
}
