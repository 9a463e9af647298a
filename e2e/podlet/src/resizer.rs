//! Volume expansion for the control plane's HostPath provisioner, the part of the work that a CSI
//! driver's `external-resizer` sidecar and the kubelet's node expansion do on a real cluster.
//!
//! The kube-controller-manager's expand controller accepts a larger request only for a claim whose
//! StorageClass has `allowVolumeExpansion: true` (the API server's admission refuses it
//! otherwise). The in-tree HostPath plugin cannot expand volumes itself, so the controller waits for
//! an external resizer. This loop is that resizer: for every HostPath-provisioned, bound claim
//! whose request exceeds its capacity, it grows the PersistentVolume's `spec.capacity` and then the
//! claim's `status.capacity` and `status.allocatedResources`, clearing the resize status, in
//! that order (so a crash in between is finished on the next pass). A host directory has no file
//! system to grow, so nothing happens on disk; capacity is what users and operators observe.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

/// Annotation by which the expand controller hands a claim to an external resizer.
const RESIZER_ANNOTATION: &str = "volume.kubernetes.io/storage-resizer";
/// Annotation naming the provisioner of a dynamically provisioned claim (the expand controller of
/// 1.36 logs "waiting for an external controller" without setting the resizer annotation, so the
/// provisioner is how a HostPath claim is recognised).
const PROVISIONER_ANNOTATION: &str = "volume.kubernetes.io/storage-provisioner";
/// The name of the HostPath provisioner, and of the resizer the expand controller waits for.
const HOST_PATH_RESIZER: &str = "kubernetes.io/host-path";

/// Bytes in a Kubernetes quantity of the forms storage requests use (`16Mi`, `1Gi`, `500M`,
/// `1073741824`); `None` for anything else, which the resizer then leaves alone.
pub fn storage_bytes(quantity: &str) -> Option<u128> {
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (digits, suffix) = quantity.split_at(split);
    let number: u128 = digits.parse().ok()?;
    let scale: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// What resizing `claim` takes: `(volume name, new size)`, or `None` when it is not ours or not
/// (or no longer) asking for more than it has.
pub fn resize_needed(claim: &PersistentVolumeClaim) -> Option<(String, String)> {
    let annotations = claim.metadata.annotations.as_ref()?;
    let ours = [RESIZER_ANNOTATION, PROVISIONER_ANNOTATION]
        .iter()
        .any(|key| annotations.get(*key).map(String::as_str) == Some(HOST_PATH_RESIZER));
    if !ours {
        return None;
    }
    let spec = claim.spec.as_ref()?;
    let volume = spec.volume_name.clone()?;
    let want = spec.resources.as_ref()?.requests.as_ref()?.get("storage")?;
    let status = claim.status.as_ref()?;
    if status.phase.as_deref() != Some("Bound") {
        return None;
    }
    let have = status.capacity.as_ref()?.get("storage")?;
    (storage_bytes(&want.0)? > storage_bytes(&have.0)?).then(|| (volume, want.0.clone()))
}

async fn resize(client: &Client, claim: &PersistentVolumeClaim) -> kube::Result<()> {
    let Some((volume, size)) = resize_needed(claim) else {
        return Ok(());
    };
    let name = claim.metadata.name.clone().unwrap_or_default();
    let ns = claim.metadata.namespace.clone().unwrap_or_default();
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    volumes
        .patch(
            &volume,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "capacity": { "storage": size } } })),
        )
        .await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    claims
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": {
                "capacity": { "storage": size },
                "allocatedResources": { "storage": size },
                "allocatedResourceStatuses": null,
                "conditions": null,
            } })),
        )
        .await?;
    tracing::info!(claim = %format!("{ns}/{name}"), %volume, %size, "volume expanded");
    Ok(())
}

/// Expands marked claims until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let api: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            Some(Ok(Event::Apply(claim) | Event::InitApply(claim))) => {
                if let Err(e) = resize(&client, &claim).await {
                    // The watch delivers the claim again on its next change; a failed patch is
                    // retried after a pause by re-reading it.
                    tracing::warn!(claim = ?claim.metadata.name, error = %e, "volume expansion failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let ns = claim.metadata.namespace.clone().unwrap_or_default();
                    let name = claim.metadata.name.clone().unwrap_or_default();
                    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
                    if let Ok(fresh) = claims.get(&name).await {
                        let _ = resize(&client, &fresh).await;
                    }
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "claim watch error; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    use super::*;

    fn storage(q: &str) -> BTreeMap<String, Quantity> {
        BTreeMap::from([("storage".to_owned(), Quantity(q.to_owned()))])
    }

    fn claim(resizer: Option<&str>, want: &str, have: &str, phase: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data-kv-0".into()),
                annotations: resizer
                    .map(|r| BTreeMap::from([(RESIZER_ANNOTATION.to_owned(), r.to_owned())])),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                volume_name: Some("pvc-1".into()),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(storage(want)),
                    limits: None,
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some(phase.into()),
                capacity: Some(storage(have)),
                ..PersistentVolumeClaimStatus::default()
            }),
        }
    }

    #[test]
    fn quantities_of_storage_requests() {
        assert_eq!(storage_bytes("16Mi"), Some(16 << 20));
        assert_eq!(storage_bytes("1Gi"), Some(1 << 30));
        assert_eq!(storage_bytes("500M"), Some(500_000_000));
        assert_eq!(storage_bytes("1024"), Some(1024));
        assert_eq!(storage_bytes("1.5Gi"), None);
        assert_eq!(storage_bytes("Gi"), None);
    }

    #[test]
    fn only_marked_bound_claims_asking_for_more_are_resized() {
        let host = Some(HOST_PATH_RESIZER);
        assert_eq!(
            resize_needed(&claim(host, "32Mi", "16Mi", "Bound")),
            Some(("pvc-1".into(), "32Mi".into()))
        );
        assert_eq!(resize_needed(&claim(host, "16Mi", "16Mi", "Bound")), None);
        assert_eq!(
            resize_needed(&claim(host, "16384Ki", "16Mi", "Bound")),
            None
        );
        assert_eq!(resize_needed(&claim(host, "32Mi", "16Mi", "Pending")), None);
        assert_eq!(resize_needed(&claim(None, "32Mi", "16Mi", "Bound")), None);
        let mut provisioned = claim(None, "32Mi", "16Mi", "Bound");
        provisioned.metadata.annotations = Some(BTreeMap::from([(
            PROVISIONER_ANNOTATION.to_owned(),
            HOST_PATH_RESIZER.to_owned(),
        )]));
        assert!(resize_needed(&provisioned).is_some());
        assert_eq!(
            resize_needed(&claim(Some("ebs.csi.aws.com"), "32Mi", "16Mi", "Bound")),
            None
        );
    }
}
