//! A workload identity read from files (local mode): the layout of a `kubernetes.io/tls` Secret
//! with its CA, as cert-manager, csi-driver-spiffe or a SPIFFE helper write it.
//!
//! | file      | content                                                        |
//! | --------- | -------------------------------------------------------------- |
//! | `tls.crt` | the certificate (a SPIFFE ID as its URI SAN), then intermediates |
//! | `tls.key` | its private key, PKCS#8 PEM (`BEGIN PRIVATE KEY`)               |
//! | `ca.crt`  | the trust anchors peers chain to                              |
//!
//! The identity is the certificate's SPIFFE ID. The files are checked as a sidecar checks a
//! certificate from the operator's signer: the key must match the certificate, and the chain must
//! prove the identity to peers trusting `ca.crt`, now. Certificate and key are re-read when they
//! change (a certificate manager renews them in place): a valid pair for the same identity swaps
//! in for new connections, anything else is logged and the last good pair stays. Once that pair
//! expires without a valid replacement, the sidecar turns not ready with the reason. A changed
//! `ca.crt` needs a restart (peers are verified against the anchors read at start).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datastream_identity::WorkloadId;
use datastream_identity::credentials::{Credentials, PendingKey};
use datastream_identity::rotation::IdentityState;
use datastream_identity::verify::{TrustAnchors, identity_of};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::IdentityHandle;

/// The certificate chain file.
pub const CERTIFICATE_FILE: &str = "tls.crt";
/// The private key file.
pub const KEY_FILE: &str = "tls.key";
/// The trust anchors file.
pub const ANCHORS_FILE: &str = "ca.crt";

/// A checked identity from a directory: credentials and the anchors peers are verified against.
#[derive(Debug)]
pub struct IdentityFiles {
    /// The directory read.
    pub dir: PathBuf,
    /// The identity the certificate proves.
    pub id: WorkloadId,
    /// The certificate and key.
    pub credentials: Arc<Credentials>,
    /// The anchors from `ca.crt`.
    pub anchors: TrustAnchors,
}

impl IdentityFiles {
    /// Reads and checks `dir` at `now`; the error names the file and what is wrong with it.
    pub fn load(dir: &Path, now: OffsetDateTime) -> Result<Self, String> {
        let anchors_pem = read(dir, ANCHORS_FILE)?;
        let anchors = TrustAnchors::from_pem(&anchors_pem)
            .map_err(|e| format!("{}: {e}", dir.join(ANCHORS_FILE).display()))?;
        let credentials = load_credentials(dir, &anchors, None, now)?;
        Ok(Self {
            dir: dir.to_owned(),
            id: credentials.id().clone(),
            credentials: Arc::new(credentials),
            anchors,
        })
    }
}

fn read(dir: &Path, file: &str) -> Result<String, String> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads `tls.crt` and `tls.key` from `dir` and checks them against `anchors` at `now` (and, when
/// given, that they prove `expected`).
fn load_credentials(
    dir: &Path,
    anchors: &TrustAnchors,
    expected: Option<&WorkloadId>,
    now: OffsetDateTime,
) -> Result<Credentials, String> {
    let cert_path = dir.join(CERTIFICATE_FILE);
    let chain_pem = read(dir, CERTIFICATE_FILE)?;
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain ({e})", cert_path.display()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{}: no certificate in it", cert_path.display()))?;
    let id = identity_of(leaf).map_err(|refusal| {
        format!(
            "{}: the certificate names no workload identity (a spiffe:// URI SAN): {refusal}",
            cert_path.display()
        )
    })?;
    if let Some(expected) = expected.filter(|e| **e != id) {
        return Err(format!(
            "{}: the certificate names {id}, but this sidecar proves {expected} (an identity changes only with a restart)",
            cert_path.display()
        ));
    }
    let key_pem = read(dir, KEY_FILE)?;
    let key = PendingKey::with_key_pem(&id, &key_pem).map_err(|e| {
        format!(
            "{}: not a PKCS#8 PEM private key ({e})",
            dir.join(KEY_FILE).display()
        )
    })?;
    let unix_now = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(now.unix_timestamp()).unwrap_or(0),
    ));
    anchors
        .check_own(&chain, &id, unix_now)
        .map_err(|refusal| {
            format!(
                "{}: the certificate does not prove {id} to peers trusting {}: {refusal}",
                cert_path.display(),
                dir.join(ANCHORS_FILE).display()
            )
        })?;
    key.complete(chain, now)
        .map_err(|e| format!("{} and {KEY_FILE}: {e}", cert_path.display()))
}

/// The contents that decide whether to reload: certificate and key, byte for byte (a certificate
/// manager may rewrite them within the same second, so modification times are not enough).
fn fingerprint(dir: &Path) -> Option<(Vec<u8>, Vec<u8>)> {
    Some((
        std::fs::read(dir.join(CERTIFICATE_FILE)).ok()?,
        std::fs::read(dir.join(KEY_FILE)).ok()?,
    ))
}

/// Publishes `files`' credentials and keeps them current: re-reads the certificate and key every
/// `interval` when their bytes change, and turns not ready once the current pair expires without a
/// valid replacement. Ends when `close` turns true.
pub fn start(
    files: IdentityFiles,
    interval: Duration,
    metrics: &crate::metrics::Metrics,
    mut close: watch::Receiver<bool>,
) -> IdentityHandle {
    let (tx, rx) = watch::channel(IdentityState::Ready(Arc::clone(&files.credentials)));
    let handle = IdentityHandle::new(files.id.clone(), files.anchors.len(), rx);
    tokio::spawn(super::export_metrics(
        handle.clone(),
        metrics.identity.clone(),
    ));
    tokio::spawn(async move {
        let mut seen = fingerprint(&files.dir);
        let mut current = Arc::clone(&files.credentials);
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = close.wait_for(|c| *c) => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let now = OffsetDateTime::now_utc();
            let latest = fingerprint(&files.dir);
            if latest != seen {
                seen = latest;
                match load_credentials(&files.dir, &files.anchors, Some(&files.id), now) {
                    Ok(next) => {
                        tracing::info!(id = %files.id, not_after = %next.not_after(), "workload certificate reloaded from {}", files.dir.display());
                        current = Arc::new(next);
                        last_error = None;
                        tx.send_replace(IdentityState::Ready(Arc::clone(&current)));
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "workload certificate files refused; the last good certificate stays");
                        last_error = Some(error);
                    }
                }
            }
            if now >= current.not_after() && tx.borrow().credentials().is_some() {
                let reason = format!(
                    "the workload certificate from {} expired at {}{}",
                    files.dir.display(),
                    current.not_after(),
                    last_error
                        .as_deref()
                        .map(|e| format!("; its replacement was refused: {e}"))
                        .unwrap_or_default()
                );
                tracing::error!(%reason, "no valid workload certificate");
                tx.send_replace(IdentityState::Pending { reason });
            }
        }
    });
    handle
}
