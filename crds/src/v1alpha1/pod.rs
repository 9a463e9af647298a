//! The pod surface of `spec.workload` that data services need beyond image and storage: extra
//! volumes and mounts, probes, security settings, ports, pull secrets and topology spread.
//!
//! These are deliberately narrower than the Kubernetes types they become. Each type exposes the
//! fields a data service needs, bounded so that CEL cost estimates stay small, and checked at
//! admission with the rules the API server would otherwise apply later to the StatefulSet's pod
//! template (where a mistake would surface only as a failed reconcile). Volume sources that
//! reach the node (`hostPath`) or grant privileges (`privileged`) are not offered at all.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A pod volume the workload container can mount, besides its persistent claims. Exactly one
/// source is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.configMap), has(self.secret), has(self.emptyDir), has(self.projected)].filter(x, x).size() == 1")
    .message("workload.volumes[] must set exactly one of configMap, secret, emptyDir or projected"))]
#[serde(rename_all = "camelCase")]
pub struct PodVolume {
    /// Name of the volume, unique among `volumes` and `volumeClaims` (a DNS label), referred to
    /// by `volumeMounts[].name`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    #[x_kube(validation = Rule::new("!self.startsWith('kube-api-access-')")
        .message("workload.volumes[].name must not start with kube-api-access-: Kubernetes names the service-account token volume so"))]
    pub name: String,

    /// The keys of a ConfigMap, as files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolume>,

    /// The keys of a Secret, as files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolume>,

    /// A directory that lives as long as the pod (scratch space, or a writable `/tmp` under a
    /// read-only root filesystem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolume>,

    /// Several ConfigMaps, Secrets and service-account tokens in one directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected: Option<ProjectedVolume>,
}

/// A ConfigMap as a volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapVolume {
    /// Name of the ConfigMap, in the stream's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Keys to project and where; every key, each as a file of its name, when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub items: Vec<KeyToPath>,
    /// Permission bits of the files, 0 to 0777 (octal; YAML `0440` or decimal `288`). Defaults
    /// to 0644.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 511))]
    pub default_mode: Option<i32>,
    /// Start the pod even when the ConfigMap (or a listed key) does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// A Secret as a volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretVolume {
    /// Name of the Secret, in the stream's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: String,
    /// Keys to project and where; every key, each as a file of its name, when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub items: Vec<KeyToPath>,
    /// Permission bits of the files, 0 to 0777 (octal; YAML `0400` or decimal `256`). Defaults
    /// to 0644.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 511))]
    pub default_mode: Option<i32>,
    /// Start the pod even when the Secret (or a listed key) does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// One key of a ConfigMap or Secret, as a file.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyToPath {
    /// The key.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
    /// Relative path of the file inside the volume, e.g. `conf/server.toml`: no `..`
    /// segment, no empty segment.
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = r"^(\.?[^./][^/]*|\.|\.\.[^/]+)(/(\.?[^./][^/]*|\.|\.\.[^/]+))*$")
    )]
    pub path: String,
    /// Permission bits of this file, 0 to 0777; the volume's `defaultMode` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 511))]
    pub mode: Option<i32>,
}

/// A pod-lifetime directory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.sizeLimit) || (isQuantity(self.sizeLimit) && quantity(self.sizeLimit).isGreaterThan(quantity('0')))")
    .message("workload.volumes[].emptyDir.sizeLimit must be a positive quantity such as 256Mi")
    .field_path(".sizeLimit"))]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirVolume {
    /// `Memory` for a tmpfs (counted against the container's memory limit); the node's disk when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<EmptyDirMedium>,
    /// Most the directory may hold, e.g. `256Mi`; the pod is evicted beyond it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub size_limit: Option<String>,
}

/// Storage medium of an `emptyDir`.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmptyDirMedium {
    /// RAM-backed (tmpfs).
    Memory,
}

/// Several sources in one directory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProjectedVolume {
    /// The sources, each contributing files.
    #[schemars(length(min = 1, max = 16))]
    pub sources: Vec<Projection>,
    /// Permission bits of the files, 0 to 0777. Defaults to 0644.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 511))]
    pub default_mode: Option<i32>,
}

/// One source of a projected volume. Exactly one is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.configMap), has(self.secret), has(self.serviceAccountToken)].filter(x, x).size() == 1")
    .message("workload.volumes[].projected.sources[] must set exactly one of configMap, secret or serviceAccountToken"))]
#[serde(rename_all = "camelCase")]
pub struct Projection {
    /// Keys of a ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ProjectedObject>,
    /// Keys of a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ProjectedObject>,
    /// A token of the pod's service account, bound to the pod and renewed by the kubelet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_token: Option<ServiceAccountTokenProjection>,
}

/// A ConfigMap or Secret in a projected volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProjectedObject {
    /// Name of the object, in the stream's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Keys to project and where; every key when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub items: Vec<KeyToPath>,
    /// Start the pod even when the object (or a listed key) does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// A projected service-account token.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountTokenProjection {
    /// Who the token is for; the API server's own audience when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub audience: Option<String>,
    /// Requested lifetime in seconds, at least 600. Defaults to 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 600, max = 4294967296_i64))]
    pub expiration_seconds: Option<i64>,
    /// Relative path of the token file inside the volume: no `..` segment, no empty segment.
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = r"^(\.?[^./][^/]*|\.|\.\.[^/]+)(/(\.?[^./][^/]*|\.|\.\.[^/]+))*$")
    )]
    pub path: String,
}

/// A mount of one of `volumes` or `volumeClaims` in the workload container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeMount {
    /// Name of the volume: one of `volumes[].name`, or of `volumeClaims[].name` to mount a
    /// claim a second time (with `subPath`, say).
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Absolute path in the workload container, unique among the container's mounts.
    #[schemars(length(min = 2, max = 1024), regex(pattern = r"^/[^:]*[^:/]$"))]
    #[x_kube(validation = Rule::new("!self.split('/').exists(s, s == '..')")
        .message("workload.volumeMounts[].mountPath must not contain '..'"))]
    pub mount_path: String,
    /// Path inside the volume to mount instead of its root (relative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^[^/]"))]
    #[x_kube(validation = Rule::new("!self.split('/').exists(s, s == '..')")
        .message("workload.volumeMounts[].subPath must not contain '..'"))]
    pub sub_path: Option<String>,
    /// Mount read-only. ConfigMap, Secret and projected volumes are read-only whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// A port the workload listens on besides `workload.port` (a metrics or replication port), for
/// probes, NetworkPolicies and monitoring to name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodPort {
    /// Name of the port (an IANA service name: at most 15 lowercase letters, digits and single
    /// dashes, with at least one letter).
    #[schemars(
        length(min = 1, max = 15),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    #[x_kube(validation = Rule::new("self.matches('[a-z]') && !self.contains('--')")
        .message("workload.ports[].name must contain a letter and no '--' (an IANA service name)"))]
    pub name: String,
    /// The port number.
    #[schemars(range(min = 1, max = 65535))]
    pub container_port: i32,
    /// `TCP` (the default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<PortProtocol>,
}

/// Transport protocol of a port.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortProtocol {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

impl PortProtocol {
    /// The protocol as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "TCP",
            PortProtocol::Udp => "UDP",
            PortProtocol::Sctp => "SCTP",
        }
    }
}

/// A liveness or startup probe of the workload container, run by the kubelet. Exactly one
/// action is set. `httpGet`, `tcpSocket` and `grpc` reach the pod IP, so the workload must
/// listen there (not only on 127.0.0.1) for them; `exec` runs inside the container.
/// Readiness needs no probe here: the sidecar checks `readinessPath` and reports it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.httpGet), has(self.tcpSocket), has(self.grpc), has(self.exec)].filter(x, x).size() == 1")
    .message("workload probes (livenessProbe, startupProbe) must set exactly one of httpGet, tcpSocket, grpc or exec"))]
#[serde(rename_all = "camelCase")]
pub struct WorkloadProbe {
    /// An HTTP GET that must answer 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetProbe>,
    /// A TCP connect that must succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<PortProbe>,
    /// A gRPC health check (`grpc.health.v1.Health/Check`) that must answer SERVING.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcProbe>,
    /// A command run in the container that must exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    /// Seconds after the container starts before the first probe. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds between probes. Defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: Option<i32>,
    /// Seconds a probe may take. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,
    /// Consecutive failures that count as failed (restart for liveness, and for startup once it
    /// has never passed). Defaults to 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub failure_threshold: Option<i32>,
    /// Seconds the container gets to stop after the probe failed, instead of the pod's
    /// termination grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub termination_grace_period_seconds: Option<i64>,
}

/// An HTTP probe.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetProbe {
    /// Request path, e.g. `/healthz`.
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/[^\s]*$"))]
    pub path: String,
    /// Port to probe; `workload.port` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// `HTTP` (the default) or `HTTPS` (certificate not verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<ProbeScheme>,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub http_headers: Vec<ProbeHeader>,
}

/// Scheme of an HTTP probe.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeScheme {
    /// Plain HTTP.
    #[serde(rename = "HTTP")]
    Http,
    /// HTTP over TLS.
    #[serde(rename = "HTTPS")]
    Https,
}

impl ProbeScheme {
    /// The scheme as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeScheme::Http => "HTTP",
            ProbeScheme::Https => "HTTPS",
        }
    }
}

/// A header of an HTTP probe.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeHeader {
    /// Header name (an HTTP token).
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$")
    )]
    pub name: String,
    /// Header value.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A TCP probe.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortProbe {
    /// Port to probe; `workload.port` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// A gRPC health probe.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrpcProbe {
    /// Port to probe; `workload.port` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Service name sent in the health check request; the server's overall health when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub service: Option<String>,
}

/// A command probe.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExecProbe {
    /// The command and its arguments (not run in a shell).
    #[schemars(length(min = 1, max = 64))]
    pub command: Vec<String>,
}

/// Overrides of the workload container's security settings. Unset fields keep the restricted
/// defaults: non-root (UID and GID 65532), read-only root filesystem, no privilege escalation,
/// every capability dropped, the runtime's default seccomp profile.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSecurity {
    /// UID the workload runs as (the pod's `runAsUser` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub run_as_user: Option<i64>,
    /// GID the workload runs as (the pod's `runAsGroup` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub run_as_group: Option<i64>,
    /// Refuse to start as root. Defaults to true; set false (and `runAsUser: 0`) only for an
    /// image that must run as root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_non_root: Option<bool>,
    /// Mount the image's root filesystem read-only. Defaults to true; set false for an image
    /// that writes outside its volumes (or mount an `emptyDir` where it writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_root_filesystem: Option<bool>,
    /// Let a process gain more privileges than its parent (setuid binaries). Defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_privilege_escalation: Option<bool>,
    /// Capabilities to add back (all are dropped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(d, d == c))")
        .message("workload.securityContext.capabilitiesAdd must not repeat a capability"))]
    pub capabilities_add: Vec<Capability>,
}

/// A Linux capability a data service may need back. Broader ones (`SYS_ADMIN`, `NET_ADMIN`,
/// `ALL`) are not offered.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum Capability {
    /// Lock memory (mlock), e.g. for a store that keeps keys out of swap.
    IPC_LOCK,
    /// Bind ports below 1024.
    NET_BIND_SERVICE,
    /// Raise process priority and set CPU affinity.
    SYS_NICE,
    /// Exceed resource limits (e.g. open-file limits).
    SYS_RESOURCE,
    /// Change file ownership.
    CHOWN,
    /// Bypass file ownership checks.
    FOWNER,
    /// Bypass file permission checks.
    DAC_OVERRIDE,
    /// Change the process UID.
    SETUID,
    /// Change the process GID.
    SETGID,
}

impl Capability {
    /// The capability as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::IPC_LOCK => "IPC_LOCK",
            Capability::NET_BIND_SERVICE => "NET_BIND_SERVICE",
            Capability::SYS_NICE => "SYS_NICE",
            Capability::SYS_RESOURCE => "SYS_RESOURCE",
            Capability::CHOWN => "CHOWN",
            Capability::FOWNER => "FOWNER",
            Capability::DAC_OVERRIDE => "DAC_OVERRIDE",
            Capability::SETUID => "SETUID",
            Capability::SETGID => "SETGID",
        }
    }
}

/// Overrides of the pod's security settings, which apply to the workload container and to the
/// volumes (the sidecar always runs as UID 65532). Unset fields keep the defaults: non-root,
/// UID, GID and fsGroup 65532.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurity {
    /// UID of the workload's processes. Defaults to 65532.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub run_as_user: Option<i64>,
    /// GID of the workload's processes. Defaults to 65532.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub run_as_group: Option<i64>,
    /// Refuse to start containers as root. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_non_root: Option<bool>,
    /// Group that owns the volumes (and is added to every process). Defaults to 65532.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub fs_group: Option<i64>,
    /// `OnRootMismatch` (change ownership only when the volume root differs, fast on large
    /// volumes) or `Always`. Kubernetes' default (`Always`) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_group_change_policy: Option<FsGroupChangePolicy>,
    /// Further groups of every process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub supplemental_groups: Vec<i64>,
}

/// When the kubelet changes the ownership of a volume to `fsGroup`.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsGroupChangePolicy {
    /// Only when the volume's root does not have the expected owner and mode.
    OnRootMismatch,
    /// On every mount.
    Always,
}

impl FsGroupChangePolicy {
    /// The policy as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            FsGroupChangePolicy::OnRootMismatch => "OnRootMismatch",
            FsGroupChangePolicy::Always => "Always",
        }
    }
}

/// A Secret holding registry credentials for pulling the images.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImagePullSecret {
    /// Name of the Secret (type `kubernetes.io/dockerconfigjson`), in the stream's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// How the replicas spread over a topology domain (zones, nodes). Spreading data replicas keeps
/// one zone or node failure from taking several at once.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.minDomains) || self.whenUnsatisfiable == 'DoNotSchedule'")
    .message("pod.topologySpreadConstraints[].minDomains needs whenUnsatisfiable: DoNotSchedule")
    .field_path(".minDomains"))]
#[serde(rename_all = "camelCase")]
pub struct TopologySpread {
    /// Most the replica count may differ between two domains.
    #[schemars(range(min = 1, max = 1000))]
    pub max_skew: i32,
    /// Node label naming the domain, e.g. `topology.kubernetes.io/zone` or
    /// `kubernetes.io/hostname`.
    #[schemars(
        length(min = 1, max = 316),
        regex(
            pattern = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
        )
    )]
    pub topology_key: String,
    /// `DoNotSchedule` (a replica waits rather than break the skew) or `ScheduleAnyway`.
    pub when_unsatisfiable: UnsatisfiableSpread,
    /// Least number of domains to spread over (with `DoNotSchedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_domains: Option<i32>,
    /// Pods counted; the stream's own replicas when unset (what spreading a stream means).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    /// Whether the pods' node affinity and selector limit the domains: `Honor` (the default)
    /// or `Ignore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity_policy: Option<SpreadNodePolicy>,
    /// Whether node taints limit the domains: `Honor` or `Ignore` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_taints_policy: Option<SpreadNodePolicy>,
}

/// What the scheduler does when a spread cannot be kept.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnsatisfiableSpread {
    /// Leave the replica pending.
    DoNotSchedule,
    /// Schedule it anyway, preferring the least-skewed domains.
    ScheduleAnyway,
}

impl UnsatisfiableSpread {
    /// The value as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            UnsatisfiableSpread::DoNotSchedule => "DoNotSchedule",
            UnsatisfiableSpread::ScheduleAnyway => "ScheduleAnyway",
        }
    }
}

/// Whether a node property limits the domains of a spread.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpreadNodePolicy {
    /// Take it into account.
    Honor,
    /// Disregard it.
    Ignore,
}

impl SpreadNodePolicy {
    /// The value as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SpreadNodePolicy::Honor => "Honor",
            SpreadNodePolicy::Ignore => "Ignore",
        }
    }
}
