//! `persistentVolumeClaim` volumes: resolving a pod's claims to the host directories of their bound
//! PersistentVolumes, as the kubelet's volume manager does before the pod sandbox is created
//! (`getPVCExtractPV` and `getPVSpec` in k8s.io/kubernetes `pkg/kubelet/volumemanager/populator`).
//!
//! A claim must exist in the pod's namespace, be `Bound` with `spec.volumeName` set, and not be
//! deleted without the `kubernetes.io/pvc-protection` finalizer; its PersistentVolume must exist,
//! point back at the claim (`spec.claimRef.uid`) and have a `hostPath` source (what the control
//! plane's HostPath provisioner creates, under `/tmp/hostpath_pv`, a link to `e2e/.state/volumes`) or
//! a `local` source, whose path exists here (`hostPath` type `DirectoryOrCreate` creates it). Until
//! then the pod waits: the worker keeps its containers `ContainerCreating` with the reason, publishes
//! a `FailedMount` warning and looks again every second ([`ClaimError::retry_after`]).
//!
//! The mount source is the volume's directory itself, read-write unless the pod's volume source says
//! `readOnly: true`, so data outlives the pod: a StatefulSet pod that comes back with the same claim
//! sees what the previous one wrote.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::{Api, Client};

/// The finalizer that keeps a claim in use from being deleted.
const PVC_PROTECTION_FINALIZER: &str = "kubernetes.io/pvc-protection";

/// The host directory behind one `persistentVolumeClaim` volume of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMount {
    /// Claim name (in the pod's namespace).
    pub claim: String,
    /// Name of the bound PersistentVolume.
    pub volume: String,
    /// `spec.hostPath.path` or `spec.local.path` of that volume.
    pub path: PathBuf,
    /// The pod's volume source says `readOnly: true`.
    pub read_only: bool,
}

/// Why a pod's claim cannot be mounted yet. Every case is retried: claims bind, volumes appear.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The claim is missing or not bound yet (the common case: provisioning takes a moment, or a
    /// storage class that provisions nothing).
    #[error("waiting for PersistentVolumeClaim {claim:?} to be bound ({why})")]
    Unbound {
        /// Claim name.
        claim: String,
        /// What is missing.
        why: String,
    },
    /// The claim is bound but its volume cannot be used here (yet).
    #[error("PersistentVolumeClaim {claim:?} cannot be mounted: {why}")]
    Unusable {
        /// Claim name.
        claim: String,
        /// What is wrong.
        why: String,
    },
}

impl ClaimError {
    /// How long the pod waits before looking at its claims again.
    pub fn retry_after(&self) -> Duration {
        match self {
            ClaimError::Unbound { .. } => Duration::from_secs(1),
            // A volume of a kind the podlet cannot mount does not fix itself quickly.
            ClaimError::Unusable { .. } => Duration::from_secs(5),
        }
    }
}

/// Checks a claim as the kubelet does and returns the name of its PersistentVolume.
pub fn check_claim(claim: &str, pvc: Option<&PersistentVolumeClaim>) -> Result<String, ClaimError> {
    let unbound = |why: String| ClaimError::Unbound {
        claim: claim.to_owned(),
        why,
    };
    let Some(pvc) = pvc else {
        return Err(unbound("it does not exist".into()));
    };
    let protected = pvc
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == PVC_PROTECTION_FINALIZER);
    if pvc.metadata.deletion_timestamp.is_some() && !protected {
        return Err(ClaimError::Unusable {
            claim: claim.to_owned(),
            why: "it is being deleted".into(),
        });
    }
    let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase != Some("Bound") {
        return Err(unbound(format!("phase {}", phase.unwrap_or("Pending"))));
    }
    pvc.spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| unbound("spec.volumeName is empty".into()))
}

/// Checks that `pv` (named `volume`) is bound to the claim with `claim_uid` and returns its path.
pub fn check_volume(
    claim: &str,
    claim_uid: Option<&str>,
    volume: &str,
    pv: Option<&PersistentVolume>,
) -> Result<PathBuf, ClaimError> {
    let unusable = |why: String| ClaimError::Unusable {
        claim: claim.to_owned(),
        why,
    };
    let Some(pv) = pv else {
        return Err(unusable(format!(
            "PersistentVolume {volume:?} does not exist"
        )));
    };
    let spec = pv.spec.as_ref();
    let Some(claim_ref) = spec.and_then(|s| s.claim_ref.as_ref()) else {
        return Err(ClaimError::Unbound {
            claim: claim.to_owned(),
            why: format!("PersistentVolume {volume:?} has no claimRef yet"),
        });
    };
    if claim_ref.uid.as_deref() != claim_uid {
        return Err(unusable(format!(
            "PersistentVolume {volume:?} is bound to another claim (claimRef uid {})",
            claim_ref.uid.as_deref().unwrap_or("none")
        )));
    }
    let path = spec
        .and_then(|s| s.host_path.as_ref().map(|h| h.path.clone()))
        .or_else(|| spec.and_then(|s| s.local.as_ref().map(|l| l.path.clone())))
        .filter(|p| !p.is_empty());
    path.map(PathBuf::from).ok_or_else(|| {
        unusable(format!(
            "PersistentVolume {volume:?} has neither a hostPath nor a local source \
             (the only kinds the podlet mounts)"
        ))
    })
}

/// Resolves every `persistentVolumeClaim` volume of `pod` (in namespace `ns`), keyed by volume name.
pub async fn resolve(
    client: &Client,
    pod: &Pod,
    ns: &str,
) -> Result<HashMap<String, ClaimMount>, ClaimError> {
    let mut out = HashMap::new();
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
    let volumes = Api::<PersistentVolume>::all(client.clone());
    for vol in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(src) = &vol.persistent_volume_claim else {
            continue;
        };
        let name = src.claim_name.as_str();
        let read_failed = |what: &str, e: kube::Error| ClaimError::Unusable {
            claim: name.to_owned(),
            why: format!("reading {what} failed: {e}"),
        };
        let pvc = claims
            .get_opt(name)
            .await
            .map_err(|e| read_failed("the claim", e))?;
        let volume = check_claim(name, pvc.as_ref())?;
        let pv = volumes
            .get_opt(&volume)
            .await
            .map_err(|e| read_failed("its PersistentVolume", e))?;
        let uid = pvc.as_ref().and_then(|c| c.metadata.uid.as_deref());
        let path = check_volume(name, uid, &volume, pv.as_ref())?;
        let create = pv
            .as_ref()
            .and_then(|pv| pv.spec.as_ref()?.host_path.as_ref()?.type_.as_deref())
            == Some("DirectoryOrCreate");
        ensure_path(name, &volume, &path, create)?;
        out.insert(
            vol.name.clone(),
            ClaimMount {
                claim: name.to_owned(),
                volume,
                path,
                read_only: src.read_only == Some(true),
            },
        );
    }
    Ok(out)
}

/// The volume's path must exist on this machine (as for the kubelet's `local` plugin); a hostPath of
/// type `DirectoryOrCreate` is created.
fn ensure_path(
    claim: &str,
    volume: &str,
    path: &std::path::Path,
    create: bool,
) -> Result<(), ClaimError> {
    if create {
        let _ = std::fs::create_dir_all(path);
    }
    if path.exists() {
        return Ok(());
    }
    Err(ClaimError::Unusable {
        claim: claim.to_owned(),
        why: format!(
            "path {} of PersistentVolume {volume:?} does not exist on this machine",
            path.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        HostPathVolumeSource, LocalVolumeSource, ObjectReference, PersistentVolumeClaimSpec,
        PersistentVolumeClaimStatus, PersistentVolumeSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn claim(phase: Option<&str>, volume: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                uid: Some("uid-1".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                volume_name: volume.map(Into::into),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: phase.map(Into::into),
                ..PersistentVolumeClaimStatus::default()
            }),
        }
    }

    fn volume(uid: Option<&str>, spec: PersistentVolumeSpec) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some("pvc-1".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeSpec {
                claim_ref: uid.map(|u| ObjectReference {
                    uid: Some(u.into()),
                    ..ObjectReference::default()
                }),
                ..spec
            }),
            status: None,
        }
    }

    fn host_path(p: &str) -> PersistentVolumeSpec {
        PersistentVolumeSpec {
            host_path: Some(HostPathVolumeSource {
                path: p.into(),
                type_: None,
            }),
            ..PersistentVolumeSpec::default()
        }
    }

    #[test]
    fn a_claim_must_exist_and_be_bound() {
        let err = check_claim("data", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "waiting for PersistentVolumeClaim \"data\" to be bound (it does not exist)"
        );
        assert_eq!(err.retry_after(), Duration::from_secs(1));
        let pending = check_claim("data", Some(&claim(Some("Pending"), None))).unwrap_err();
        assert!(
            matches!(&pending, ClaimError::Unbound { why, .. } if why == "phase Pending"),
            "{pending}"
        );
        assert!(matches!(
            check_claim("data", Some(&claim(None, None))),
            Err(ClaimError::Unbound { why, .. }) if why == "phase Pending"
        ));
        assert!(matches!(
            check_claim("data", Some(&claim(Some("Bound"), Some("")))),
            Err(ClaimError::Unbound { why, .. }) if why == "spec.volumeName is empty"
        ));
        assert_eq!(
            check_claim("data", Some(&claim(Some("Bound"), Some("pvc-1")))).unwrap(),
            "pvc-1"
        );
    }

    #[test]
    fn a_deleted_claim_is_usable_only_while_protected() {
        let mut c = claim(Some("Bound"), Some("pvc-1"));
        c.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        assert!(matches!(
            check_claim("data", Some(&c)),
            Err(ClaimError::Unusable { why, .. }) if why == "it is being deleted"
        ));
        c.metadata.finalizers = Some(vec![PVC_PROTECTION_FINALIZER.into()]);
        assert_eq!(check_claim("data", Some(&c)).unwrap(), "pvc-1");
    }

    #[test]
    fn the_volume_must_point_back_at_the_claim_and_have_a_path() {
        let uid = Some("uid-1");
        let hp = volume(uid, host_path("/tmp/hostpath_pv/abc"));
        assert_eq!(
            check_volume("data", uid, "pvc-1", Some(&hp)).unwrap(),
            PathBuf::from("/tmp/hostpath_pv/abc")
        );
        let local = volume(
            uid,
            PersistentVolumeSpec {
                local: Some(LocalVolumeSource {
                    path: "/mnt/disks/a".into(),
                    fs_type: None,
                }),
                ..PersistentVolumeSpec::default()
            },
        );
        assert_eq!(
            check_volume("data", uid, "pvc-1", Some(&local)).unwrap(),
            PathBuf::from("/mnt/disks/a")
        );
        assert!(matches!(
            check_volume("data", uid, "pvc-1", None),
            Err(ClaimError::Unusable { .. })
        ));
        assert!(matches!(
            check_volume("data", uid, "pvc-1", Some(&volume(None, host_path("/x")))),
            Err(ClaimError::Unbound { .. })
        ));
        let other = volume(Some("uid-2"), host_path("/x"));
        let err = check_volume("data", uid, "pvc-1", Some(&other)).unwrap_err();
        assert!(err.to_string().contains("bound to another claim"), "{err}");
        assert_eq!(err.retry_after(), Duration::from_secs(5));
        let nfs = volume(uid, PersistentVolumeSpec::default());
        let err = check_volume("data", uid, "pvc-1", Some(&nfs)).unwrap_err();
        assert!(
            err.to_string().contains("neither a hostPath nor a local"),
            "{err}"
        );
    }

    #[test]
    fn missing_paths_wait_unless_they_may_be_created() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vol");
        assert!(matches!(
            ensure_path("data", "pvc-1", &p, false),
            Err(ClaimError::Unusable { why, .. }) if why.contains("does not exist on this machine")
        ));
        ensure_path("data", "pvc-1", &p, true).unwrap();
        assert!(p.is_dir());
        ensure_path("data", "pvc-1", &p, false).unwrap();
    }
}
