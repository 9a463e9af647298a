//! `spec.workload`: the data service container that each sidecar fronts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements, Toleration};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::pod::{
    ContainerSecurity, ImagePullSecret, PodPort, PodSecurity, PodVolume, PodVolumeMount,
    TopologySpread, WorkloadProbe,
};

/// The replica container. The sidecar forwards to it on `127.0.0.1:<port>` inside the pod, so the
/// workload need not listen on the pod IP at all.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!(self.port in [7080, 7081, 7082])")
    .message("workload.port must differ from the sidecar's ports 7080 (traffic), 7081 (peer) and 7082 (admin)")
    .field_path(".port"))]
#[x_kube(validation = Rule::new("!has(self.volumes) || !has(self.volumeClaims) || self.volumes.all(v, !self.volumeClaims.exists(c, c.name == v.name))")
    .message("workload.volumes[].name must differ from every workload.volumeClaims[].name: both become pod volumes")
    .field_path(".volumes"))]
#[x_kube(validation = Rule::new("!has(self.volumeMounts) || self.volumeMounts.all(m, (has(self.volumes) && self.volumes.exists(v, v.name == m.name)) || (has(self.volumeClaims) && self.volumeClaims.exists(c, c.name == m.name)))")
    .message("workload.volumeMounts[].name must name one of workload.volumes[] or workload.volumeClaims[]")
    .field_path(".volumeMounts"))]
#[x_kube(validation = Rule::new("!has(self.volumeMounts) || !has(self.volumeClaims) || self.volumeMounts.all(m, !self.volumeClaims.exists(c, c.mountPath == m.mountPath))")
    .message("workload.volumeMounts[].mountPath must differ from every workload.volumeClaims[].mountPath: a path holds one mount")
    .field_path(".volumeMounts"))]
#[x_kube(validation = Rule::new("!has(self.ports) || self.ports.all(p, !(p.containerPort in [7080, 7081, 7082, self.port]))")
    .message("workload.ports[].containerPort must differ from workload.port and from the sidecar's ports 7080, 7081 and 7082")
    .field_path(".ports"))]
#[x_kube(validation = Rule::new("!((has(self.securityContext) && has(self.securityContext.runAsNonRoot) ? self.securityContext.runAsNonRoot : (has(self.pod) && has(self.pod.securityContext) && has(self.pod.securityContext.runAsNonRoot) ? self.pod.securityContext.runAsNonRoot : true)) && (has(self.securityContext) && has(self.securityContext.runAsUser) ? self.securityContext.runAsUser : (has(self.pod) && has(self.pod.securityContext) && has(self.pod.securityContext.runAsUser) ? self.pod.securityContext.runAsUser : 65532)) == 0)")
    .message("workload.securityContext.runAsUser (or pod.securityContext.runAsUser) is 0 while runAsNonRoot is true, so the kubelet would refuse to start it: set runAsNonRoot: false to run as root, or choose another UID")
    .field_path(".securityContext"))]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// Container image of the data service, e.g. `registry.example.com/shop/catalog:1.4.2`.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Image pull policy: Always, IfNotPresent or Never. Kubernetes' default applies when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Entrypoint override (the image's ENTRYPOINT when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub command: Vec<String>,

    /// Arguments to the entrypoint (the image's CMD when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub args: Vec<String>,

    /// Environment variables of the workload container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub env: Vec<EnvVar>,

    /// Compute resources of the workload container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<ResourceRequirements>>,

    /// Port the workload listens on inside the pod. The sidecar reaches it on 127.0.0.1.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// HTTP path on the workload port that answers 2xx when the replica can serve. The sidecar
    /// checks it and reports the result through its own readiness, so an unready workload leaves
    /// the stream's endpoints.
    #[serde(default = "default_readiness_path")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/[^\s]*$"))]
    pub readiness_path: String,

    /// Persistent volumes of every replica. Each entry gives every replica a claim of its own,
    /// named `<name>-<stream>-<ordinal>` and mounted at `mountPath` in the workload container; a
    /// replica keeps its claims across restarts, rollouts, pod deletion and rescheduling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(
        merge_strategy = ListMerge::Map(vec!["name".into()]),
        validation = Rule::new("self.all(a, self.exists_one(b, b.mountPath == a.mountPath))")
            .message("workload.volumeClaims[].mountPath must be unique: two claims cannot share a mount path")
    )]
    pub volume_claims: Vec<VolumeClaim>,

    /// What happens to the replicas' claims (and so their data) when the stream scales down or
    /// is deleted. Both default to `Retain`: data is never deleted unless this says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim_retention: Option<VolumeClaimRetention>,

    /// Pod volumes besides the persistent claims: ConfigMaps, Secrets, `emptyDir` scratch
    /// space and projected volumes, mounted through `volumeMounts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(
        merge_strategy = ListMerge::Map(vec!["name".into()]),
        validation = Rule::new("self.all(v, !v.name.startsWith('datastream-'))")
            .message("workload.volumes[].name must not start with datastream-: the operator names its volumes so")
    )]
    pub volumes: Vec<PodVolume>,

    /// Mounts of `volumes` (or second mounts of `volumeClaims`) in the workload container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["mountPath".into()]))]
    pub volume_mounts: Vec<PodVolumeMount>,

    /// Ports the workload listens on besides `port`, e.g. for metrics or replication. The
    /// names `workload`, `traffic`, `peer` and `admin` are the operator's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(
        merge_strategy = ListMerge::Map(vec!["name".into()]),
        validation = Rule::new("self.all(p, !(p.name in ['workload', 'traffic', 'peer', 'admin']))")
            .message("workload.ports[].name must not be workload, traffic, peer or admin: the operator names its ports so"),
        validation = Rule::new("self.all(a, self.exists_one(b, b.containerPort == a.containerPort && (has(b.protocol) ? b.protocol : 'TCP') == (has(a.protocol) ? a.protocol : 'TCP')))")
            .message("workload.ports[].containerPort must not repeat a port with the same protocol")
    )]
    pub ports: Vec<PodPort>,

    /// Restarts the workload container when it fails (a deadlock the process cannot notice).
    /// Readiness needs no probe: the sidecar checks `readinessPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Box<WorkloadProbe>>,

    /// Holds the liveness probe off until the workload has started once (a store replaying a
    /// long log, say), so a slow start is not taken for a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Box<WorkloadProbe>>,

    /// Overrides of the workload container's restricted security settings, for an image that
    /// needs another UID, a writable root filesystem or a capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<Box<ContainerSecurity>>,

    /// Extra pod settings: labels, annotations, scheduling constraints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Box<PodOverrides>>,
}

/// One persistent volume per replica (a StatefulSet volume claim template).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("isQuantity(self.size) && quantity(self.size).isGreaterThan(quantity('0'))")
    .message("workload.volumeClaims[].size must be a positive quantity such as 10Gi")
    .field_path(".size"))]
#[x_kube(validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)")
    .message("workload.volumeClaims[].storageClassName is immutable: existing volumes cannot move to another StorageClass; add a claim with a new name instead")
    .field_path(".storageClassName"))]
#[x_kube(validation = Rule::new("self.accessModes == oldSelf.accessModes")
    .message("workload.volumeClaims[].accessModes is immutable: add a claim with a new name instead")
    .field_path(".accessModes"))]
#[serde(rename_all = "camelCase")]
pub struct VolumeClaim {
    /// Name of the claim, unique in the list (a DNS label). Replica `i` of stream `s` gets the
    /// PersistentVolumeClaim `<name>-<s>-<i>`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Absolute path in the workload container where the volume is mounted, e.g. `/var/lib/data`.
    #[schemars(length(min = 2, max = 1024), regex(pattern = r"^/[^:]*[^:/]$"))]
    #[x_kube(validation = Rule::new("!self.split('/').exists(s, s == '..')")
        .message("workload.volumeClaims[].mountPath must not contain '..'"))]
    pub mount_path: String,

    /// Requested size, e.g. `10Gi`. It may grow later, where the StorageClass allows volume
    /// expansion (the operator resizes every replica's claim); it never goes below what the
    /// claims already have (`status.volumeClaims[].size`), so a growth the StorageClass refused
    /// can be taken back.
    #[schemars(length(min = 1, max = 64))]
    pub size: String,

    /// StorageClass of the claims. The cluster's default class when unset. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub storage_class_name: Option<String>,

    /// Access modes of the claims. Defaults to `[ReadWriteOnce]`. Immutable.
    #[serde(default = "default_access_modes")]
    #[schemars(length(min = 1, max = 4))]
    #[x_kube(validation = Rule::new("self.all(m, self.exists_one(n, n == m))")
        .message("workload.volumeClaims[].accessModes must not repeat a mode"))]
    pub access_modes: Vec<AccessMode>,
}

fn default_access_modes() -> Vec<AccessMode> {
    vec![AccessMode::ReadWriteOnce]
}

/// How a volume may be mounted.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessMode {
    /// Read-write by one node.
    ReadWriteOnce,
    /// Read-write by one pod.
    ReadWriteOncePod,
    /// Read-only by many nodes.
    ReadOnlyMany,
    /// Read-write by many nodes.
    ReadWriteMany,
}

impl AccessMode {
    /// The mode as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
            AccessMode::ReadOnlyMany => "ReadOnlyMany",
            AccessMode::ReadWriteMany => "ReadWriteMany",
        }
    }
}

/// What happens to the replicas' claims when replicas go away.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeClaimRetention {
    /// Claims of replicas removed by scaling down: `Retain` (the default; a later scale-up
    /// finds the data again) or `Delete`.
    #[serde(default)]
    pub when_scaled: RetentionPolicy,
    /// Claims of every replica when the DataStream is deleted: `Retain` (the default) or
    /// `Delete`.
    #[serde(default)]
    pub when_deleted: RetentionPolicy,
}

/// Keep or delete claims.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum RetentionPolicy {
    /// Keep the claim and its data.
    #[default]
    Retain,
    /// Delete the claim; its volume then follows the StorageClass's reclaim policy.
    Delete,
}

impl RetentionPolicy {
    /// The policy as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionPolicy::Retain => "Retain",
            RetentionPolicy::Delete => "Delete",
        }
    }
}

fn default_port() -> i32 {
    8080
}

fn default_readiness_path() -> String {
    "/ready".to_owned()
}

/// When the kubelet pulls the workload image.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePullPolicy {
    /// Pull on every start.
    Always,
    /// Pull only when the image is not on the node.
    IfNotPresent,
    /// Never pull; the image must be on the node.
    Never,
}

impl ImagePullPolicy {
    /// The policy as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// Escape hatch for pod settings the operator does not otherwise manage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Extra labels on every pod. Labels starting with `app.kubernetes.io/` are reserved for the
    /// operator and rejected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('app.kubernetes.io/'))")
        .message("pod.labels must not set app.kubernetes.io/* labels: the operator owns them"))]
    #[schemars(extend("maxProperties" = 64))]
    pub labels: BTreeMap<String, String>,

    /// Extra annotations on every pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: BTreeMap<String, String>,

    /// Node selector of every pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of every pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,

    /// Affinity rules of every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// PriorityClass of every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,

    /// Registry credentials for pulling the workload (and sidecar) images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub image_pull_secrets: Vec<ImagePullSecret>,

    /// Overrides of the pod's security settings (the workload's UID, GID and fsGroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurity>,

    /// How the replicas spread over zones or nodes. A constraint without `labelSelector` counts
    /// the stream's own replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b.topologyKey == a.topologyKey && b.whenUnsatisfiable == a.whenUnsatisfiable))")
        .message("pod.topologySpreadConstraints must not repeat a topologyKey with the same whenUnsatisfiable"))]
    pub topology_spread_constraints: Vec<TopologySpread>,

    /// Seconds a pod may take to stop gracefully (sidecar drain included). Defaults to 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub termination_grace_period_seconds: Option<i64>,
}
